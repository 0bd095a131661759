"""resjax's fast layers: BatchNorm as one multiply-add, conv fusion barriers, XLA flag defaults.

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

from resjax import xla_flags
from resjax.models import get_model
from resjax.models.batchnorm import BatchNorm
from resjax.models.materialize import (
    barriers_enabled,
    fusion_barrier,
    materialize,
    materialize_grad,
)


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


def test_materialize_and_materialize_grad_are_identities_with_identity_gradients():
    x, w = _input(), _input(seed=1)
    for fn in (materialize, materialize_grad):
        value, grad = jax.jit(jax.value_and_grad(lambda v, f=fn: jnp.sum(f(v) * w)))(x)
        np.testing.assert_array_equal(grad, w)
        np.testing.assert_allclose(value, jnp.sum(x * w), rtol=1e-6)


def test_barriers_default_to_the_cpu_backend():
    assert barriers_enabled(None) == (jax.default_backend() == "cpu")
    assert barriers_enabled(True) and not barriers_enabled(False)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("resnet8", {}),
        ("plain8", {}),
        ("resnet8", {"ordering": "pre", "shortcut": "B"}),
        ("resnet8", {"ordering": "relu_bn_conv", "shortcut": "C"}),
    ],
)
def test_conv_barriers_change_nothing_but_speed(name, overrides):
    x = _input((8, 16, 16, 3))
    labels = jnp.arange(8) % 10
    results = []
    for barriers in (True, False):
        model = get_model(name, conv_barriers=barriers, **overrides)
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


def test_bottleneck_network_with_barriers_matches_without():
    x = _input((2, 64, 64, 3))
    outs = []
    for barriers in (True, False):
        model = get_model("resnet50", num_classes=5, conv_barriers=barriers)
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


def _python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_resjax_sets_flags_that_xla_accepts():
    if xla_flags._jaxlib_release() not in xla_flags.JAXLIB_TESTED:
        pytest.skip("defaults are only added on the jaxlib releases they were measured on")
    code = (
        "import os, resjax, jax, jax.numpy as jnp; jax.jit(lambda a: a + 1)(jnp.ones(3));"
        "from resjax import xla_flags; print(xla_flags.status(), '|', os.environ['XLA_FLAGS'])"
    )
    assert _python(code) == f"added {FLAG} | {FLAG}"
    late = "import jax; jax.numpy.ones(1); import resjax; print(resjax.xla_flags.status())"
    assert "backends had started" in _python(late)
