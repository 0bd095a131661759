"""Evaluate a portable weights file, or a run's checkpoint, on a dataset split: top-1 and top-5
error, loss, examples.

    python -m resjax.evaluate experiments/2026-12-02_fmnist_reference/resnet20.msgpack
    python -m resjax.evaluate FILE --dataset=fashion_mnist --split='test[:5000]' --json
    python -m resjax.evaluate runs/r20 [--which=best]      # a workdir: its latest checkpoint

The network is rebuilt from the file alone (`resjax.models.load_params`), or from the config
recorded beside a checkpoint; the data are read as in training, normalised with the training
split's statistics. Dataset, training split and normalisation come from the config recorded in
the file (what `resjax.export` writes) or the run; a file without one (converted weights) needs
`--dataset`. For a workdir it says which step it evaluated: a newer step that cannot be read is
skipped with a warning naming it and why. Bad input is one `error:` line (resjax.cli).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from resjax import checkpoint, cli, data, weights
from resjax.config import data_config_of
from resjax.models import load_params
from resjax.models.portable import Portable
from resjax.training.step import eval_sums


def load_weights(path: str | Path, which: str = "latest") -> tuple[Portable, dict[str, Any]]:
    """(weights, where they came from) of a weights file, or of a workdir's latest (or best)
    readable checkpoint: {'step', 'skipped': [{'step', 'reason'}]} for a workdir, {} else."""
    if not Path(path).is_dir():
        return load_params(path), {}
    loaded = weights.load_checkpoint(path, which)
    skipped = [{"step": s.step, "reason": s.reason} for s in loaded.skipped]
    return loaded.portable(), {"step": loaded.step, "skipped": skipped}


def evaluate(
    path: str | Path,
    *,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 500,
    which: str = "latest",
) -> dict[str, Any]:
    """Loss, top-1 and top-5 error of the weights in `path` (a file, or a workdir's `which`
    readable checkpoint: its step and the steps skipped are in the result) over every example
    of `split`."""
    weights, source = load_weights(path, which)
    model = weights.model()
    data_config = data_config_of(weights.config, dataset, data_dir)
    data_config.test_split = split  # the split to evaluate is read as the test part
    splits = data.load_splits(data_config)
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
        **source,
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
    where = f" (step {r['step']} of {r['weights']})" if "step" in r else ""
    return (
        f"{r['model']}{where} ({r['params']:,} params) on {r['dataset']} {r['split']}, "
        f"{r['examples']:,} examples\n"
        f"top-1 error {100 * r['top1_error']:.2f}% (accuracy {100 - 100 * r['top1_error']:.2f}%)\n"
        f"top-5 error {100 * r['top5_error']:.2f}%\n"
        f"loss        {r['loss']:.4f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m resjax.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "weights", help="a portable weights file (.msgpack or .npz), or a training run's workdir"
    )
    parser.add_argument(
        "--which", choices=("latest", "best"), default="latest", help="for a workdir"
    )
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
            which=args.which,
        )
        for skipped in result.get("skipped", []):
            line = checkpoint.Skipped(**skipped).describe(result["step"])
            print(f"warning: {line}", file=sys.stderr)
        print(json.dumps(result) if args.json else format_result(result))

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
