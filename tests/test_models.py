"""resjax.models: parameter counts from the papers, block semantics, scan/remat, errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import resjax.models as m

# Exact counts (10 classes for CIFAR nets, 1000 for ImageNet nets; BN γ/β and biases counted).
PAPER_COUNTS = {
    "resnet20": 269_722,  # He et al. 2015, Table 6 ("0.27M") — exact count, option A
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "plain20": 269_722,  # option A adds no parameters: plain = residual
    "plain32": 464_154,
    "plain44": 658_586,
    "plain56": 853_018,
    "plain110": 1_727_962,
    "resnet18": 11_689_512,  # torchvision
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Papers give these to 0.1M only; the exact figure is pinned so any change is noticed, and the
# test also checks it rounds to the paper's number.
ROUNDED_COUNTS = {
    "resnet200": (64_673_832, 64.7),  # timm's resnet200 (He et al. 2016 ImageNet model)
    "preact_resnet110": (1_730_714, 1.7),  # He et al. 2016, Table 2 (projection shortcut, +2,752)
    "preact_resnet164": (1_704_154, 1.7),  # He et al. 2016, Table 2
    "preact_resnet1001": (10_328_602, 10.3),  # paper's "10.2M" omits the projection BNs etc.
    "wrn28_10": (36_481_434, 36.5),  # Zagoruyko & Komodakis 2016, Table 1
    "wrn16_8": (10_963_162, 11.0),
}


def test_every_registered_model_has_a_pinned_count():
    missing = set(m.list_models()) - set(PAPER_COUNTS) - set(ROUNDED_COUNTS)
    assert not missing, f"pin a parameter count for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_counts_match_the_papers(name):
    assert m.count_params(m.get_model(name)) == PAPER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(ROUNDED_COUNTS))
def test_parameter_counts_of_rounded_models(name):
    exact, millions = ROUNDED_COUNTS[name]
    count = m.count_params(m.get_model(name))
    assert count == exact
    assert round(count / 1e6, 1) == millions


def test_option_b_adds_the_projection_parameters():
    # Two 1×1 projections (16→32, 32→64) with BN: 512+64 + 2048+128 = 2,752 (option B projects only where the shape changes).
    assert m.count_params(m.get_model("resnet20", shortcut="B")) - 269_722 == 2_752


def _init(module, x, **kw):
    return module.init(jax.random.key(0), x, train=False, **kw)


def _apply(module, variables, x, train=False, **kw):
    if train:
        return module.apply(variables, x, train=True, mutable=["batch_stats"], **kw)[0]
    return module.apply(variables, x, train=False, **kw)


@pytest.mark.parametrize("ordering", ["post", "pre", "relu_bn_conv"])
@pytest.mark.parametrize("shortcut", ["A", "B", "C", "conv"])
def test_basic_block_shapes_and_projection_params(ordering, shortcut):
    block = m.ResidualBlock(16, strides=2, shortcut=shortcut, ordering=ordering)
    x = jnp.ones((2, 8, 8, 8))
    variables = _init(block, x)
    assert _apply(block, variables, x, train=True).shape == (2, 4, 4, 16)
    has_projection = "shortcut_conv" in variables["params"]
    assert has_projection == (shortcut != "A")
    assert ("shortcut_bn" in variables["params"]) == (shortcut in ("B", "C"))
    if shortcut == "conv":
        assert "bias" in variables["params"]["shortcut_conv"]


@pytest.mark.parametrize(
    "shortcut, projects", [("A", False), ("B", False), ("C", True), ("conv", False)]
)
def test_shortcut_kinds_on_shape_preserving_blocks(shortcut, projects):
    block = m.ResidualBlock(8, shortcut=shortcut)
    variables = _init(block, jnp.ones((1, 4, 4, 8)))
    assert ("shortcut_conv" in variables["params"]) == projects


def test_basic_block_is_the_textbook_formula():
    """Post-activation: relu(bn2(conv2(relu(bn1(conv1(x))))) + x), checked by hand."""
    block = m.ResidualBlock(4)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
    variables = _init(block, x)
    p, s = variables["params"], variables["batch_stats"]

    def conv_bn(h, i):
        h = jax.lax.conv_general_dilated(
            h,
            p[f"conv{i}"]["kernel"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        bn_stats, bn_params = s[f"bn{i}"], p[f"bn{i}"]
        h = (h - bn_stats["mean"]) / jnp.sqrt(bn_stats["var"] + 1e-5)
        return h * bn_params["scale"] + bn_params["bias"]

    expected = jax.nn.relu(conv_bn(jax.nn.relu(conv_bn(x, 1)), 2) + x)
    np.testing.assert_allclose(_apply(block, variables, x), expected, atol=1e-5)


def test_plain_block_has_same_params_and_no_shortcut():
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 8))
    res, plain = m.ResidualBlock(8), m.ResidualBlock(8, residual=False)
    variables = _init(res, x)
    assert jax.tree.structure(variables) == jax.tree.structure(_init(plain, x))
    # With the branch's last BN zeroed, a residual block is relu(x) and a plain one is zero.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "bn2" in jax.tree_util.keystr(path) else v, variables
    )
    np.testing.assert_allclose(_apply(res, zeroed, x), jax.nn.relu(x), atol=1e-6)
    np.testing.assert_allclose(_apply(plain, zeroed, x), 0.0, atol=1e-6)


def test_pre_activation_block_adds_nothing_after_the_sum():
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 8))
    block = m.ResidualBlock(8, ordering="pre", zero_init_last_bn=False)
    variables = _init(block, x)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "conv2" in jax.tree_util.keystr(path) else v,
        variables,
    )
    # Zero branch output: the block is the exact identity (negative inputs survive).
    np.testing.assert_allclose(_apply(block, zeroed, x), x, atol=1e-6)


def test_zero_init_last_bn_makes_each_block_start_as_identity():
    block = m.ResidualBlock(8, zero_init_last_bn=True)
    x = jax.nn.relu(jax.random.normal(jax.random.key(4), (2, 6, 6, 8)))
    variables = _init(block, x)
    assert not np.any(variables["params"]["bn2"]["scale"])
    np.testing.assert_allclose(_apply(block, variables, x), x, atol=1e-6)


def test_bottleneck_block_strides_on_the_3x3():
    block = m.BottleneckBlock(8, strides=2)
    x = jnp.ones((1, 8, 8, 16))
    variables = _init(block, x)
    p = variables["params"]
    assert p["conv1"]["kernel"].shape == (1, 1, 16, 8)
    assert p["conv2"]["kernel"].shape == (3, 3, 8, 8)
    assert p["conv3"]["kernel"].shape == (1, 1, 8, 32)
    assert _apply(block, variables, x).shape == (1, 4, 4, 32)


def test_drop_path_needs_rng_only_when_on_and_training():
    x = jnp.ones((4, 4, 4, 8))
    block = m.ResidualBlock(8, drop_path_rate=0.5)
    variables = _init(block, x)
    _apply(block, variables, x)  # eval: no RNG needed
    with pytest.raises(Exception, match="dropout"):
        _apply(block, variables, x, train=True)
    out = _apply(block, variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert out.shape == x.shape


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_cifar_net_accepts_mnist_and_cifar_inputs(shape):
    model = m.get_model("resnet8", num_classes=7)
    x = jnp.ones(shape)
    assert _apply(model, _init(model, x), x, train=True).shape == (2, 7)


def test_imagenet_net_runs_at_small_resolution():
    model = m.get_model("resnet18", widths=(8, 8, 8, 8), stem_width=8, num_classes=5)
    x = jnp.ones((1, 64, 64, 3))
    assert _apply(model, _init(model, x), x).shape == (1, 5)


def test_bf16_computation_keeps_float32_params_and_logits():
    model = m.get_model("resnet8", dtype="bfloat16")
    x = jnp.ones((2, 28, 28, 1))
    variables = _init(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    assert _apply(model, variables, x).dtype == jnp.float32


def _stack_stage(params, stage, n):
    """Unrolled → scanned layout: blocks 2..n of a stage stacked on a leading axis."""
    params = dict(params)
    blocks = [params.pop(f"stage{stage}_block{j}") for j in range(2, n + 1)]
    params[f"stage{stage}_scan"] = {"block": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}
    return params


def test_scanned_form_computes_the_same_function():
    unrolled, scanned = m.get_model("resnet14"), m.get_model("resnet14", scan=True)
    x = jax.random.normal(jax.random.key(5), (2, 16, 16, 3))
    variables = _init(unrolled, x)
    stacked = {
        c: _stack_stage(_stack_stage(_stack_stage(variables[c], 1, 2), 2, 2), 3, 2)
        for c in ("params", "batch_stats")
    }
    assert jax.tree.structure(stacked) == jax.tree.structure(
        jax.eval_shape(lambda x: _init(scanned, x), x)
    )
    np.testing.assert_allclose(
        _apply(scanned, stacked, x, train=True),
        _apply(unrolled, variables, x, train=True),
        atol=1e-5,
    )


def test_scan_and_remat_give_the_same_gradients():
    x = jax.random.normal(jax.random.key(6), (2, 8, 8, 3))
    base = m.get_model("resnet14", widths=(4, 8, 8), stem_width=4, scan=True)
    variables = jax.jit(_init, static_argnums=0)(base, x)  # a scanned net's eager init: ~10 s

    def grads(model):
        def loss(p):
            return _apply(model, {**variables, "params": p}, x, train=True).sum()

        return jax.jit(jax.grad(loss))(variables["params"])

    g0, g1 = grads(base), grads(base.clone(remat=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g0, g1)


def test_diagnostics_are_recorded_only_on_request():
    model = m.get_model("resnet8")
    x = jax.random.normal(jax.random.key(7), (2, 16, 16, 3))
    variables = _init(model, x)
    assert set(variables) == {"params", "batch_stats"}
    _, state = model.apply(variables, x, train=False, mutable=["diagnostics"])
    diag = state["diagnostics"]
    assert sorted(diag) == ["stage1_block1", "stage2_block1", "stage3_block1"]
    assert sorted(diag["stage2_block1"]) == [
        "branch_norm",
        "branch_std",
        "input_norm",
        "shortcut_norm",
    ]
    assert all(np.isfinite(v[0]) for d in diag.values() for v in d.values())


def test_lesioned_network_removes_the_branch():
    model = m.get_model("resnet14")
    x = jax.random.normal(jax.random.key(8), (2, 16, 16, 3))
    variables = _init(model, x)
    all_blocks = tuple(model.block_names())
    out = _apply(model.clone(lesion=all_blocks), variables, x)
    assert np.all(np.isfinite(out)) and out.shape == (2, 10)
    assert not np.allclose(out, _apply(model, variables, x))


def test_model_works_with_tabulate_and_jit():
    model = m.get_model("resnet8")
    x = jnp.ones((1, 16, 16, 3))
    table = nn.tabulate(model, jax.random.key(0), depth=1, console_kwargs={"width": 200})(
        x, train=False
    )
    assert "stage3_block1" in table and f"{m.count_params(model):,}" in table
    variables = _init(model, x)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert out.shape == (1, 10)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: m.get_model("resnet21"), "CIFAR ResNet depth must be 6n\\+2 .*got 21"),
        (lambda: m.get_model("resnet9000x"), "unknown model 'resnet9000x'; registered: .*resnet20"),
        (lambda: m.get_model("resnet20", shortcut="D"), "unknown shortcut kind 'D'; allowed: 'A'"),
        (lambda: m.get_model("resnet20", ordering="x"), "unknown ordering 'x'; allowed: 'post'"),
        (lambda: m.get_model("resnet50", shortcut="A"), "shortcut 'A' .* basic blocks only"),
        (lambda: m.BottleneckBlock(8, shortcut="A"), "shortcut 'A' .* basic blocks only"),
        (lambda: m.get_model("resnet20", depht=3), "unknown model fields \\['depht'\\]"),
        (lambda: m.imagenet_resnet(19), "must be one of \\[18, 34, 50, 101, 152, 200\\]"),
        (lambda: m.get_model("resnet20", lesion=("stage9_block1",)), "unknown blocks"),
        (lambda: m.get_model("resnet20", widths=(8, 8, 8)), "shortcut 'A' zero-pads channels"),
    ],
)
def test_bad_input_says_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_importing_models_pulls_in_no_heavy_frameworks():
    code = (
        "import sys, resjax.models; "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'orbax', 'grain', 'torch', "
        "'ml_collections') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
