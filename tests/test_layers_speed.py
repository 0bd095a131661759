"""resjax's fast layers: BatchNorm as one multiply-add, the XLA:CPU conv, XLA flag defaults.

Each must change speed only: the same parameters, the same numbers as the layers they replace.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from resjax import xla_flags
from resjax.models import get_model
from resjax.models.batchnorm import BatchNorm
from resjax.models.conv import Conv, conv_init, cpu_conv, use_cpu_convs
from resjax.models.fusion_barrier import fusion_barrier


def _input(shape=(16, 6, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray((rng.normal(size=shape) * 3 + 1.5).astype(np.float32))


def _flax_bn(train, **kw):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kw)


def _ours(train, **kw):
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kw)


def test_batchnorm_has_flax_parameters_and_statistics():
    x = _input()
    ours = _ours(True).init(jax.random.PRNGKey(0), x)
    theirs = _flax_bn(True).init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_matches_flax_outputs_updates_and_gradients(train):
    x = _input()
    variables = _flax_bn(True).init(jax.random.PRNGKey(0), x)
    # Non-trivial parameters and running statistics, so every term is exercised.
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype("f4"), variables)

    def run(module, params, x):
        y, upd = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        return jnp.sum(y * jnp.cos(y)), (y, upd)

    grad = jax.grad(run, argnums=(1, 2), has_aux=True)
    (g_p, g_x), (y, upd) = grad(_ours(train), variables["params"], x)
    (t_p, t_x), (ty, tupd) = grad(_flax_bn(train), variables["params"], x)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), upd, tupd)
    # Gradients are sums over the batch, so compare against each array's own scale.
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())  # noqa: E731
    close(g_x, t_x)
    jax.tree.map(close, g_p, t_p)


def test_batchnorm_cross_device_statistics_match_flax():
    x = _input((4, 8, 5, 5, 6))  # [devices, per-device batch, H, W, C]

    def apply(module):
        variables = module.init(jax.random.PRNGKey(0), x[0])
        fn = lambda xs: module.apply(variables, xs, mutable=["batch_stats"])  # noqa: E731
        return jax.vmap(fn, axis_name="batch")(x)

    y, upd = apply(_ours(True, axis_name="batch"))
    ty, tupd = apply(_flax_bn(True, axis_name="batch"))
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), upd, tupd)
    # Statistics are global: every device holds the same running mean.
    np.testing.assert_allclose(upd["batch_stats"]["mean"][0], upd["batch_stats"]["mean"][3])


def test_batchnorm_bfloat16_output_keeps_float32_statistics():
    x = _input().astype(jnp.bfloat16)
    module = _ours(True, dtype=jnp.bfloat16)
    variables = module.init(jax.random.PRNGKey(0), x)
    y, upd = module.apply(variables, x, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert upd["batch_stats"]["var"].dtype == jnp.float32


SPECIAL = [0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 6e4, 1.2e-38, 1e-45]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_fusion_barrier_is_bit_exact(dtype):
    x = jnp.asarray(SPECIAL, dtype)
    y = jax.jit(fusion_barrier)(x)
    uint = {2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    expected = jax.jit(lambda v: v * 1)(x)  # what any other XLA op yields (denormal policy)
    np.testing.assert_array_equal(np.asarray(y).view(uint), np.asarray(expected).view(uint))
    assert jax.jit(fusion_barrier)(jnp.arange(3)).dtype == jnp.arange(3).dtype  # ints untouched


def _lax_conv(x, k, s, p):
    dn = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(x, k, (s, s), ((p, p), (p, p)), dimension_numbers=dn)


# (H, C_in, C_out, kernel, stride): CIFAR 3x3 convs, strided and odd-sized inputs, 1x1
# projections, the ImageNet 7x7/2 stem.
CONV_CASES = [(8, 3, 4, 3, 1), (8, 3, 4, 3, 2), (9, 3, 4, 3, 2), (8, 4, 6, 1, 2), (7, 2, 3, 1, 1)]
CONV_CASES += [(16, 3, 5, 7, 2), (11, 3, 5, 7, 2)]


@pytest.mark.parametrize("h,c,o,k,s", CONV_CASES)
def test_cpu_conv_gradients_equal_jax(h, c, o, k, s):
    rng = np.random.default_rng(h * k + s)
    x = jnp.asarray(rng.normal(size=(2, h, h, c)).astype("f4"))
    kernel = jnp.asarray(rng.normal(size=(k, k, c, o)).astype("f4"))

    def loss(conv):
        return jax.jit(
            jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, s, k // 2))), (0, 1))
        )

    (v1, (dx1, dk1)), (v2, (dx2, dk2)) = loss(cpu_conv)(x, kernel), loss(_lax_conv)(x, kernel)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk1, dk2, rtol=1e-5, atol=1e-5)


def test_cpu_conv_gradients_inside_scan_equal_jax():
    # The case it exists for: inside a loop XLA:CPU does not canonicalise JAX's own form.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 6)).astype("f4"))
    kernels = jnp.asarray(0.2 * rng.normal(size=(3, 3, 3, 6, 6)).astype("f4"))

    def loss(conv):
        def body(h, k):
            return jnp.tanh(conv(h, k, 1, 1)), None

        return jax.jit(jax.grad(lambda ks: jnp.sum(lax.scan(body, x, ks)[0] ** 2)))(kernels)

    np.testing.assert_allclose(loss(cpu_conv), loss(_lax_conv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cpu", [True, False])
def test_conv_module_is_flax_conv_with_symmetric_padding(cpu):
    x = _input((2, 9, 9, 3))
    ours = Conv(8, 3, 2, use_bias=True, cpu=cpu)
    theirs = nn.Conv(8, (3, 3), (2, 2), padding=((1, 1), (1, 1)), kernel_init=conv_init)
    variables = ours.init(jax.random.PRNGKey(3), x)
    reference = theirs.init(jax.random.PRNGKey(3), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, reference)
    np.testing.assert_array_equal(variables["params"]["kernel"], reference["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5)


def test_cpu_convs_default_to_the_cpu_backend():
    assert use_cpu_convs(None) == (jax.default_backend() == "cpu")
    assert use_cpu_convs(True) and not use_cpu_convs(False)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("resnet8", {}),
        ("plain8", {}),
        ("resnet8", {"ordering": "pre", "shortcut": "B"}),
        ("resnet8", {"ordering": "relu_bn_conv", "shortcut": "C"}),
    ],
)
def test_cpu_convs_change_nothing_but_speed(name, overrides):
    x = _input((8, 16, 16, 3))
    labels = jnp.arange(8) % 10
    results = []
    for cpu in (True, False):
        model = get_model(name, cpu_convs=cpu, **overrides)
        variables = model.init(jax.random.PRNGKey(0), x)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                mutable=["batch_stats"],
            )
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    (l1, g1), (l2, g2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max()), g1, g2)


def test_bottleneck_network_with_cpu_convs_matches_without():
    x = _input((2, 64, 64, 3))
    outs = []
    for cpu in (True, False):
        model = get_model("resnet50", num_classes=5, cpu_convs=cpu)
        variables = model.init(jax.random.PRNGKey(0), x)
        outs.append(model.apply(variables, x, train=False))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


FLAG = xla_flags.CPU_DEFAULTS[0]


def test_xla_defaults_are_added_kept_or_skipped(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_release", lambda: xla_flags.JAXLIB_TESTED[0])
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply_defaults(env).startswith("added")
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"

    name = FLAG.split("=")[0]
    env = {"XLA_FLAGS": f"{name}=+eltwise"}  # the user's own value wins
    assert "set by the user" in xla_flags.apply_defaults(env)
    assert env["XLA_FLAGS"] == f"{name}=+eltwise"

    env = {xla_flags.OPT_OUT: "0"}
    assert "RESJAX_XLA_DEFAULTS=0" in xla_flags.apply_defaults(env)
    assert "XLA_FLAGS" not in env

    monkeypatch.setattr(xla_flags, "_jaxlib_release", lambda: (9, 9))
    env = {}
    assert "not one of" in xla_flags.apply_defaults(env)
    assert env == {}

    monkeypatch.setattr(xla_flags, "_jaxlib_release", lambda: xla_flags.JAXLIB_NO_GAIN[0])
    assert "measured, the defaults do not help" in xla_flags.apply_defaults(env)
    assert env == {}


def _python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_commands_call_sets_flags_that_xla_accepts_and_importing_sets_none():
    if xla_flags._jaxlib_release() not in xla_flags.JAXLIB_TESTED:
        pytest.skip("defaults are only added on the jaxlib releases they were measured on")
    # What every command does first (resjax.cli.run), and a library user's one call.
    code = (
        "import os, jax, jax.numpy as jnp; from resjax import xla_flags; "
        "xla_flags.apply_defaults(); jax.jit(lambda a: a + 1)(jnp.ones(3)); "
        "print(xla_flags.status(), '|', os.environ['XLA_FLAGS'])"
    )
    assert _python(code) == f"added {FLAG} | {FLAG}"
    imported = (
        "import os, resjax, resjax.models, resjax.training; "
        "print(resjax.xla_flags.status(), '|', os.environ.get('XLA_FLAGS'))"
    )
    assert _python(imported) == (
        "not applied (resjax.xla_flags.apply_defaults() not called) | None"
    )
    late = "import jax; jax.numpy.ones(1); from resjax import xla_flags; print(xla_flags.apply_defaults())"
    assert "backends had started" in _python(late)


def test_bfloat16_network_trains_with_the_cpu_convs():
    x = _input((4, 16, 16, 3))
    grads = []
    for cpu in (True, False):
        model = get_model("resnet8", dtype="bfloat16", cpu_convs=cpu)
        variables = model.init(jax.random.PRNGKey(0), x)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                mutable=["batch_stats"],
            )
            return jnp.mean(logits**2)

        grads.append(jax.jit(jax.grad(loss))(variables["params"]))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads[0]))
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[1]))
    # bfloat16 keeps 8 significant bits; the two forms may round in different places.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.05 * scale), *grads)
