"""Export a run's weights as one portable file (msgpack or .npz) for inference elsewhere.

    python -m resjax.export --workdir=runs/r56 --out=r56.msgpack [--which=best] [--overwrite]

The file holds params, batch_stats, the model name and overrides, and the run's config;
`resjax.models.load_params(FILE).model()` rebuilds the network without resjax's trainer. Bad
input is answered with one `error:` line (resjax.cli).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from resjax import checkpoint, cli
from resjax.config import model_overrides
from resjax.models import save_params


def export(workdir: str | Path, out: str | Path, which: str = "latest", overwrite: bool = False):
    """Writes the latest (or best) checkpoint of `workdir` to `out`; returns the path."""
    config, variables = checkpoint.load_variables(workdir, which)
    num_classes = int(np.shape(variables["params"]["classifier"]["bias"])[0])
    return save_params(
        out,
        variables,
        model_name=config.model.name,
        model_overrides=model_overrides(config, num_classes),
        config=config,
        overwrite=overwrite,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m resjax.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--out", required=True, help="FILE.msgpack or FILE.npz")
    parser.add_argument("--which", choices=("latest", "best"), default="latest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    return cli.run(
        lambda: print(f"wrote {export(args.workdir, args.out, args.which, args.overwrite)}")
    )


if __name__ == "__main__":
    raise SystemExit(main())
