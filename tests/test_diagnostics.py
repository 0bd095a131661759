"""resjax.diagnostics and resjax.diagnose: per-block metrics, signal at init, lesions, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax import diagnose, diagnostics, models
from resjax.training import train_and_evaluate
from resjax.workdir import BLOCK_METRICS
from tests.test_train import tiny_config

SMALL = dict(widths=(4, 8, 8), stem_width=4)


def _batch(n=8, size=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, size, size, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
    }


def _init(model, batch):
    # Under jit: eagerly, a scanned net's init dispatches op by op for ~10 s.
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(batch["image"])


@pytest.mark.parametrize(
    "name, fields",
    [
        ("resnet14", {}),
        ("plain14", {}),
        ("resnet14", {"scan": True}),
        ("resnet14", {"ordering": "pre", "shortcut": "B"}),
    ],
)
def test_block_diagnostics_keys_shapes_and_finite(name, fields):
    model = models.get_model(name, **SMALL, **fields)
    batch = _batch()
    v = _init(model, batch)
    out = jax.jit(diagnostics.make_block_diagnostics(model))(v["params"], v["batch_stats"], batch)
    expected = {f"diag/{b}/{m}" for b in model.block_names() for m in BLOCK_METRICS}
    assert set(out) == expected
    for key, value in out.items():
        assert value.shape == () and value.dtype == jnp.float32, key
        assert np.isfinite(value), key
    assert all(out[f"diag/{b}/last_bn_gamma"] == 1.0 for b in model.block_names())
    assert all(out[f"diag/{b}/grad_norm"] > 0 for b in model.block_names())


def test_scanned_diagnostics_equal_the_unrolled_ones():
    scanned = models.get_model("resnet14", scan=True, **SMALL)
    unrolled = scanned.clone(scan=False)
    batch = _batch()
    v = _init(scanned, batch)
    a = jax.jit(diagnostics.make_block_diagnostics(scanned))(v["params"], v["batch_stats"], batch)
    u = diagnostics.unscan_variables(scanned, v)
    b = jax.jit(diagnostics.make_block_diagnostics(unrolled))(u["params"], u["batch_stats"], batch)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, err_msg=key)


def test_input_grad_norm_is_the_per_example_gradient_norm():
    model = models.get_model("resnet8", **SMALL)
    batch = _batch(n=4)
    v = _init(model, batch)
    out = jax.jit(diagnostics.make_block_diagnostics(model))(v["params"], v["batch_stats"], batch)
    # The first block's input is the stem's output: differentiate the loss w.r.t. it directly.
    probe = model.clone(perturb_inputs=True)
    pert = probe.init(jax.random.key(0), batch["image"], train=True)["perturbations"]

    def loss(d):
        p = jax.tree.map(jnp.zeros_like, pert)
        p["stage1_block1"]["input"] = d
        logits, _ = probe.apply(
            {**v, "perturbations": p}, batch["image"], train=True, mutable=["batch_stats"]
        )
        labels = jax.nn.one_hot(batch["label"], 10)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

    g = jax.jit(jax.grad(loss))(jnp.zeros_like(pert["stage1_block1"]["input"]))
    expected = np.mean(np.linalg.norm(4 * np.asarray(g).reshape(4, -1), axis=-1))
    np.testing.assert_allclose(out["diag/stage1_block1/input_grad_norm"], expected, rtol=1e-4)


def test_diagnostics_run_sharded_as_training_calls_them():
    model = models.get_model("resnet8", **SMALL)
    batch = _batch(n=8)
    v = _init(model, batch)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    fn = jax.jit(
        diagnostics.make_block_diagnostics(model),
        in_shardings=(NamedSharding(mesh, P()),) * 2 + (NamedSharding(mesh, P("data")),),
        out_shardings=NamedSharding(mesh, P()),
    )
    sharded = fn(v["params"], v["batch_stats"], batch)
    single = diagnostics.make_block_diagnostics(model)(v["params"], v["batch_stats"], batch)
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-4, err_msg=key)


def test_signal_profile_shapes_plain_and_residual():
    batch = _batch()
    for name in ("plain14", "resnet14"):
        model = models.get_model(name, **SMALL)
        p = jax.jit(lambda v, b, m=model: diagnostics.signal_profile(m, v, b))(
            _init(model, batch), batch
        )
        for key in ("output_std", "input_grad_norm", "grad_norm", "branch_ratio"):
            assert p[key].shape == (6,), key
            assert np.all(np.isfinite(p[key])) and np.all(p[key] > 0), key


def test_at_depth_and_its_error():
    base = models.get_model("resnet20")
    assert diagnostics.at_depth(base, 56, residual=False).stage_sizes == (9, 9, 9)
    assert not diagnostics.at_depth(base, 56, residual=False).residual
    with pytest.raises(ValueError, match=r"depth must be 2 \+ 6·n .* got 21"):
        diagnostics.at_depth(base, 21, residual=True)


def test_removing_every_block_leaves_a_working_network():
    for name in ("resnet14", "plain14"):
        model = models.get_model(name, **SMALL)
        batch = _batch()
        v = _init(model, batch)
        gutted = model.clone(lesion=tuple(model.block_names()))
        logits = gutted.apply(v, batch["image"], train=False)
        assert logits.shape == (8, 10) and np.all(np.isfinite(logits))
        # Only the stem and the classifier are left: the logits no longer depend on the blocks.
        zeroed = jax.tree.map(jnp.zeros_like, v)
        zeroed["params"]["stem_conv"] = v["params"]["stem_conv"]
        zeroed["params"]["classifier"] = v["params"]["classifier"]
        zeroed["batch_stats"]["stem_bn"] = v["batch_stats"]["stem_bn"]
        zeroed["params"]["stem_bn"] = v["params"]["stem_bn"]
        np.testing.assert_allclose(
            gutted.apply(zeroed, batch["image"], train=False), logits, atol=1e-5
        )


def test_plain_lesion_needs_a_parameter_free_shortcut():
    model = models.get_model("plain8", shortcut="B", **SMALL)
    batch = _batch()
    v = _init(model, batch)
    with pytest.raises(ValueError, match="parameter-free shortcut"):
        model.clone(lesion=("stage2_block1",)).apply(v, batch["image"], train=False)


def test_lesion_study_on_a_scanned_net():
    model = models.get_model("resnet14", scan=True, **SMALL)
    batches = [dict(_batch(seed=s), mask=jnp.ones(8)) for s in range(2)]
    v = _init(model, batches[0])
    r = diagnostics.lesion_study(model, v, lambda: iter(batches), ks=(6,), trials=2)
    assert r["blocks"] == model.block_names()
    assert [row["block"] for row in r["single"]] == r["blocks"]
    assert [row["k"] for row in r["random"]] == [6]
    assert len(r["random"][0]["errors"]) == 2
    assert all(0 <= row["error"] <= 1 for row in r["single"])
    # Removing all six blocks, in any order, is one network.
    assert r["random"][0]["errors"][0] == r["random"][0]["errors"][1]
    with pytest.raises(ValueError, match="k must be in 1..6"):
        diagnostics.lesion_study(model, v, lambda: iter(batches), ks=(7,))


def test_lesion_and_block_diagnostics_of_a_trained_run(fashion_mnist_dir, tmp_path):
    config = tiny_config(fashion_mnist_dir, total_steps=4)  # no diagnostics logged
    train_and_evaluate(config, tmp_path / "run")
    result = diagnose.lesion_run(tmp_path / "run", ks=(1, 2), trials=2, examples=64, log=None)
    assert result["examples"] == 64 and len(result["single"]) == 3
    assert "stage1_block1" in diagnose.lesion_table(result)
    diagnose.plot_lesion([result], tmp_path / "lesion.png")
    assert (tmp_path / "lesion.png").stat().st_size > 0

    d = diagnose.run_block_diagnostics(tmp_path / "run")
    assert [b["block"] for b in d["blocks"]] == ["stage1_block1", "stage2_block1", "stage3_block1"]
    assert all(np.isfinite(b[m]) for b in d["blocks"] for m in BLOCK_METRICS)
    assert d["depth"] == 8 and d["residual"] and d["source"] == "checkpoint" and d["step"] == 4

    # Rows logged by training (metrics.jsonl) win over recomputing from the checkpoint.
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        logged = {f"diag/{b['block']}/{m}": 0.5 for b in d["blocks"] for m in BLOCK_METRICS}
        f.write(json.dumps({"step": 4, **logged}) + "\n")
    again = diagnose.run_block_diagnostics(tmp_path / "run")
    assert again["source"] == "logged" and again["blocks"][0]["grad_norm"] == 0.5


def test_init_diagnostics_writes_the_figure_and_numbers(fashion_mnist_dir, tmp_path):
    config = tiny_config(fashion_mnist_dir)
    results = diagnose.init_diagnostics(config, depths=(8,), batch_size=16)
    assert [(r["depth"], r["residual"]) for r in results["runs"]] == [(8, False), (8, True)]
    diagnose.write_init(results, tmp_path)
    for name in ("init_signal.png", "init_signal.json", "init_signal.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "init_signal.csv").read_text().splitlines()) == 1 + 2 * 3
