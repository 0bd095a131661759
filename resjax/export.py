"""Export a run's weights as one portable file (msgpack or .npz) for inference elsewhere.

    python -m resjax.export --workdir=runs/r56 --out=r56.msgpack [--which=best] [--overwrite]

The file holds params, batch_stats, the model name and overrides, and the run's config;
`resjax.models.load_params(FILE).model()` rebuilds the network without resjax's trainer. It
says which step it wrote: a newer step that cannot be read (a damaged disk, a half-copied
workdir) is skipped with a warning naming it and why, and nothing in the workdir changes. Bad
input, or no readable checkpoint, is answered with one `error:` line (resjax.cli).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from resjax import cli, weights
from resjax.models import save_params


def export(workdir: str | Path, out: str | Path, which: str = "latest", overwrite: bool = False):
    """Writes the latest (or best) readable checkpoint of `workdir` to `out`; returns the path.
    A newer step that cannot be read is skipped, with a warning on stderr."""
    loaded = weights.load_checkpoint(workdir, which)
    for line in loaded.warnings():
        print(line, file=sys.stderr)
    return write(loaded, out, overwrite)


def write(loaded: weights.Loaded, out: str | Path, overwrite: bool = False) -> Path:
    """Writes weights read by `weights.load_checkpoint` to `out` (msgpack or .npz)."""
    portable = loaded.portable()
    return save_params(
        out,
        portable.variables,
        model_name=portable.model_name,
        model_overrides=portable.overrides,
        config=loaded.config,
        overwrite=overwrite,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m resjax.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--out", required=True, help="FILE.msgpack or FILE.npz")
    parser.add_argument("--which", choices=("latest", "best"), default="latest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    def run() -> None:
        loaded = weights.load_checkpoint(args.workdir, args.which)
        for line in loaded.warnings():
            print(line, file=sys.stderr)
        path = write(loaded, args.out, args.overwrite)
        print(f"wrote {path} (step {loaded.step} of {args.workdir}, the {args.which} readable)")

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
