"""`python -m resjax.sweep`: what launch.sh (or anyone) needs to know about a sweep.

    python -m resjax.sweep list CONFIG[:ARG] [--config.key=value ...]
    python -m resjax.sweep workdir CONFIG[:ARG]
    python -m resjax.sweep state CONFIG[:ARG] WORKDIR [--point=NAME] [--config.key=value ...]
    python -m resjax.sweep record CONFIG[:ARG] WORKDIR NAME=OUTCOME ... --wall-time=S [--config...]

`list` prints one line per point, `name<TAB>--config=FILE:ARG [--config.key=value ...]`: the
flags that make `python -m resjax.train` run exactly that point (add `--workdir`). `workdir`
prints the default workdir, runs/<config>[_<arg>], as `python -m resjax.train` uses it. `state`
prints `name<TAB>finished|started|new` per point: finished when WORKDIR/<name> holds the results
of this very config (the sequential runner skips it), started when it holds a run that did not.
`record` writes WORKDIR/sweep_status.json and the report for points run by another launcher, and
prints a summary; OUTCOME is finished:SECONDS, skipped, interrupted:SECONDS, failed:EXIT:SECONDS
or pending. The sequential runner itself is `python -m resjax.train --config=SWEEP`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from resjax import cli
from resjax.sweeps import points as sweep_points
from resjax.sweeps import report, status
from resjax.workdir import CONFIG, LOG

STATES = ("finished", "started", "new")


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    return cli.run(lambda: args.command(args, overrides))


def _points(args: argparse.Namespace, override_flags: Sequence[str]) -> list[sweep_points.Point]:
    overrides = cli.config_overrides(args.spec, override_flags) if override_flags else {}
    config_file, arg = sweep_points.split_config_spec(args.spec)
    return sweep_points.enumerate_points(config_file, arg, overrides)


def list_points(args: argparse.Namespace, override_flags: Sequence[str]) -> int:
    """`name<TAB>flags` for every point; the override flags are checked and appended."""
    for p in _points(args, override_flags):
        print(f"{p.name}\t{shlex.join(p.flags(override_flags))}")
    return 0


def workdir(args: argparse.Namespace, override_flags: Sequence[str]) -> int:
    if override_flags:
        raise cli.CommandError(f"workdir takes no overrides; got {' '.join(override_flags)}")
    config_file, arg = sweep_points.split_config_spec(args.spec)
    sweep_points.load_config_module(config_file)  # a missing file is an error here too
    print(sweep_points.default_workdir(config_file, arg))
    return 0


def state(args: argparse.Namespace, override_flags: Sequence[str]) -> int:
    """`name<TAB>state` for every point (or the one --point names)."""
    for p in _selected(_points(args, override_flags), args.point):
        point_dir = Path(args.workdir) / p.name
        if p.is_finished_in(point_dir):
            print(f"{p.name}\tfinished")
        else:
            print(f"{p.name}\t{'started' if (point_dir / CONFIG).exists() else 'new'}")
    return 0


def _selected(points: list[sweep_points.Point], name: str | None) -> list[sweep_points.Point]:
    if name is None:
        return points
    chosen = [p for p in points if p.name == name]
    if not chosen:
        raise cli.CommandError(
            f"no point named {name!r}; points: {', '.join(p.name for p in points)}"
        )
    return chosen


def record(args: argparse.Namespace, override_flags: Sequence[str]) -> int:
    """sweep_status.json and the report of points another launcher ran; prints a summary."""
    points = _points(args, override_flags)
    workdir = Path(args.workdir)
    outcomes = _outcomes(args.outcomes, [p.name for p in points])
    sweep = status.new(
        points,
        f"{args.launcher} {args.spec}",
        override_flags,
        launcher=args.launcher,
        finished=status.now(),
        wall_time_s=args.wall_time,
    )
    for name, entry in sweep["points"].items():
        kind, seconds, exit_status = outcomes.get(name, ("pending", None, None))
        entry["status"] = {"skipped": "finished"}.get(kind, kind)
        entry["log"] = str(workdir / name / LOG)
        if kind == "finished":
            entry["wall_time_s"] = seconds
        if kind == "failed":
            words = status.last_words(workdir / name / LOG)
            entry["error"] = (words or f"exit status {exit_status}")[:500]
    workdir.mkdir(parents=True, exist_ok=True)
    status.write(workdir, sweep)
    try:
        print(f"[{args.launcher}] report: {report.write_report(workdir)['markdown']}")
    except Exception as e:  # noqa: BLE001  (the report must not hide the sweep's outcome)
        print(f"[{args.launcher}] the report could not be written: {status.error_line(e)}")
    _print_summary(sweep, outcomes, workdir, args)
    return 0


def _outcomes(texts: Sequence[str], names: Sequence[str]) -> dict[str, tuple]:
    """{'a': ('finished', 12.0, None), 'bad': ('failed', 3.0, 1)} from 'a=finished:12' etc."""
    out = {}
    for text in texts:
        name, _, outcome = text.partition("=")
        kind, *rest = outcome.split(":")
        if name not in names or kind not in (
            "finished",
            "skipped",
            "interrupted",
            "failed",
            "pending",
        ):
            raise cli.CommandError(f"bad outcome {text!r}; expected NAME=OUTCOME (see --help)")
        exit_status = int(rest.pop(0)) if kind == "failed" and rest else None
        out[name] = (kind, float(rest[0]) if rest else None, exit_status)
    return out


def _print_summary(sweep: dict, outcomes: dict[str, tuple], workdir: Path, args) -> None:
    n = len(sweep["points"])
    kinds = [outcomes.get(name, ("pending",))[0] for name in sweep["points"]]
    ok = sum(k in ("finished", "skipped") for k in kinds)
    failed = kinds.count("failed")
    print(
        f"[{args.launcher} {time.strftime('%H:%M:%S')}] done in "
        f"{status.duration(args.wall_time)}: {ok} of {n} finished, {failed} failed, "
        f"{n - ok - failed} not run or stopped"
    )
    for name, kind in zip(sweep["points"], kinds, strict=True):
        log = workdir / name / LOG
        if kind == "failed":
            print(f"  FAILED      {name}  (exit {outcomes[name][2]})  log: {log}")
            words = status.last_words(log)
            if words:
                print(f"              {words[:160]}")
        elif kind == "interrupted":
            print(f"  stopped     {name}  (checkpointed; rerun to resume)  log: {log}")
        elif kind == "pending":
            print(f"  not run     {name}")


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m resjax.sweep",
        description=__doc__.split("\n")[0],
        epilog="Each subcommand also takes --config.key=value overrides after its arguments.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(required=True, metavar="{list,workdir,state,record}")

    def command(name, fn, help_text):
        p = sub.add_parser(name, help=help_text, allow_abbrev=False)
        p.set_defaults(command=fn)
        p.add_argument("spec", metavar="CONFIG[:ARG]")
        return p

    command("list", list_points, "name<TAB>flags per point")
    command("workdir", workdir, "the default workdir")
    p = command("state", state, "name<TAB>finished|started|new per point")
    p.add_argument("workdir", metavar="WORKDIR")
    p.add_argument("--point", help="only this point")
    p = command("record", record, "write sweep_status.json and the report; print a summary")
    p.add_argument("workdir", metavar="WORKDIR")
    p.add_argument("outcomes", nargs="*", metavar="NAME=OUTCOME")
    p.add_argument("--wall-time", type=float, required=True, help="the sweep's seconds")
    p.add_argument("--launcher", default="launch.sh", help="who ran the points")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
