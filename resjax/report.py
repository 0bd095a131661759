"""`python -m resjax.report WORKDIR`: (re)writes the report of a sweep's workdir, or the learning
curves of one run's, and prints it.

A sweep's tables and plots are resjax.sweeps.report's, a run's curves resjax.curves'; this
command reads files only (no JAX).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from resjax import cli, curves
from resjax.sweeps.report import write_report
from resjax.workdir import METRICS, STATUS


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m resjax.report", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", metavar="WORKDIR", help="a sweep's workdir, or one run's")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run(lambda: _report(args.workdir))


def _report(workdir: str) -> int:
    run_dir = Path(workdir)
    if (run_dir / METRICS).exists() and not (run_dir / STATUS).exists():  # one run
        path = curves.plot(run_dir)
        print(curves.summary(run_dir))
        print(f"wrote {path}")
        return 0
    paths = write_report(workdir)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
