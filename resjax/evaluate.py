"""Evaluate a portable weights file on a dataset split: top-1 and top-5 error, loss, examples.

    python -m resjax.evaluate experiments/2026-12-02_fmnist_reference/resnet20.msgpack
    python -m resjax.evaluate FILE --dataset=fashion_mnist --split='test[:5000]' --json

The network is rebuilt from the file alone (`resjax.models.load_params`); the data are read as
in training, normalised with the training split's statistics. Dataset, training split and
normalisation come from the config recorded in the file (what `resjax.export` writes); a file
without one (converted weights) needs `--dataset`. Bad input is one `error:` line (resjax.cli).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resjax import cli, data
from resjax.config import WHERE_KEYS, base_config
from resjax.models import load_params
from resjax.training.step import eval_sums


def data_config_of(
    recorded: dict[str, Any] | None, dataset: str | None, data_dir: str | None
) -> ml_collections.ConfigDict:
    """`config.data` as the weights were trained with, `dataset`/`data_dir` set where given."""
    config = base_config().data
    if recorded is not None:  # what was trained on, not where it lay on that machine
        where = {key.removeprefix("data.") for key in WHERE_KEYS}
        trained = recorded.get("data", {}).items()
        config.update({k: v for k, v in trained if k in config and k not in where})
    elif dataset is None:
        raise cli.CommandError(
            "the weights file records no training config; say which data with --dataset=NAME"
        )
    if dataset is not None:
        config.name = dataset
    if data_dir is not None:
        config.dir = data_dir
    return config


def evaluate(
    path: str | Path,
    *,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 error of the weights in `path` over every example of `split`."""
    weights = load_params(path)
    model = weights.model()
    data_config = data_config_of(weights.config, dataset, data_dir)
    splits = data.load_splits(data_config, train_split=data_config.train_split, test_split=split)
    step = jax.jit(lambda variables, batch: eval_sums(model.apply, variables, batch))
    variables = jax.device_put(weights.variables)
    totals = None
    for batch in data.eval_batches(splits.test, splits, batch_size):
        sums = step(variables, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    count = totals["count"]
    return {
        "weights": str(path),
        "model": weights.model_name,
        "params": sum(int(p.size) for p in jax.tree.leaves(weights.variables["params"])),
        "dataset": data_config.name,
        "split": split,
        "examples": int(count),
        "top1_error": 1.0 - totals["correct"] / count,
        "top5_error": 1.0 - totals["correct5"] / count,
        "loss": totals["loss"] / count,
    }


def format_result(r: dict[str, Any]) -> str:
    return (
        f"{r['model']} ({r['params']:,} params) on {r['dataset']} {r['split']}, "
        f"{r['examples']:,} examples\n"
        f"top-1 error {100 * r['top1_error']:.2f}% (accuracy {100 - 100 * r['top1_error']:.2f}%)\n"
        f"top-5 error {100 * r['top5_error']:.2f}%\n"
        f"loss        {r['loss']:.4f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m resjax.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("weights", help="a portable weights file (.msgpack or .npz)")
    parser.add_argument("--dataset", help="TFDS name (default: the one the weights trained on)")
    parser.add_argument("--split", default="test", help="TFDS split string (default: test)")
    parser.add_argument("--data-dir", help="TFDS data dir (default: as in training)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    def run() -> None:
        result = evaluate(
            args.weights,
            dataset=args.dataset,
            split=args.split,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
        )
        print(json.dumps(result) if args.json else format_result(result))

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
