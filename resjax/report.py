"""`python -m resjax.report WORKDIR`: (re)writes the report of a sweep's workdir and prints it.

The tables and plots are resjax.sweeps.report's; this command reads files only (no JAX).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from resjax import cli
from resjax.sweeps.report import write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m resjax.report", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", metavar="WORKDIR", help="a sweep's workdir")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run(lambda: _report(args.workdir))


def _report(workdir: str) -> int:
    paths = write_report(workdir)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
