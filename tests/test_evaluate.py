"""resjax.evaluate: the test error of a portable weights file, in one command."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import tiny_run

from resjax import data, evaluate
from resjax.config import base_config
from resjax.models import get_model, save_params


def weights_file(path, record_config=True):
    """The tiny run's network (a ResNet-8 of width 4) with random weights and BN statistics,
    as `resjax.export` writes it."""
    tiny = tiny_run().config().model
    config = base_config()
    config.model.name = tiny.name
    config.data.dir = "/a/machine/elsewhere"  # where the data lay is not what was trained on
    config.data.val_examples = 1000
    overrides = {k: v for k, v in tiny.overrides.items() if v is not None}
    model = get_model(tiny.name, **overrides)
    variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1)), train=False)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda v: v + 0.1 * rng.standard_normal(v.shape), variables)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    save_params(
        path,
        variables,
        model_name="resnet8",
        model_overrides=overrides,
        config=config if record_config else None,
    )
    return model, variables


def test_evaluate_matches_the_model_applied_to_the_normalised_split(fashion_mnist_dir, tmp_path):
    model, variables = weights_file(tmp_path / "w.msgpack")
    result = evaluate.evaluate(
        tmp_path / "w.msgpack", split="test[:300]", data_dir=str(fashion_mnist_dir), batch_size=128
    )

    config = base_config().data
    config.dir, config.val_examples = str(fashion_mnist_dir), 1000
    config.test_split = "test[:300]"
    splits = data.load_splits(config)
    images = data.augment.normalize(splits.test.images, splits.mean, splits.std)
    logits = np.asarray(model.apply(variables, images, train=False))
    labels = splits.test.labels
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    assert result["examples"] == 300  # padding of the last batch (300 = 2 * 128 + 44) masked
    assert result["top1_error"] == pytest.approx(np.mean(logits.argmax(-1) != labels), abs=1e-6)
    assert result["top5_error"] == pytest.approx(np.mean(~(top5 == labels[:, None]).any(-1)))
    assert result["loss"] == pytest.approx(-np.mean(log_p[np.arange(300), labels]), rel=1e-4)
    assert result["model"] == "resnet8" and result["params"] == 1638


def test_the_command_prints_the_errors_or_one_error_line(fashion_mnist_dir, tmp_path, capsys):
    weights_file(tmp_path / "w.npz")
    weights_file(tmp_path / "bare.npz", record_config=False)

    def cli(*args):
        status = evaluate.main([*args, f"--data-dir={fashion_mnist_dir}"])
        return status, capsys.readouterr()

    status, out = cli(str(tmp_path / "w.npz"), "--split=test[:100]")
    assert status == 0, out.err
    assert "resnet8 (1,638 params) on fashion_mnist test[:100], 100 examples" in out.out
    assert "top-1 error" in out.out and "top-5 error" in out.out

    for args, message in [
        ((str(tmp_path / "missing.npz"),), "No such file or directory"),
        (
            (str(tmp_path / "bare.npz"),),
            "records no training config; say which data with --dataset",
        ),
        ((str(tmp_path / "w.npz"), "--split=tset"), "tset"),
    ]:
        status, out = cli(*args)
        lines = out.err.strip().splitlines()
        assert status == 1 and len(lines) == 1, out.err
        assert lines[0].startswith("error: ") and message in lines[0], lines
