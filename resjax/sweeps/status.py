"""sweep_status.json: what a sweep knows of each of its points, kept current on disk.

    {"command": ..., "sweep": "FILE[:ARG]", "reference": ... (a report_summary.csv, or None),
     "started": ...,
     "finished": ... (None until the sweep ends whole),
     "wall_time_s": ..., "updated": ...,
     "points": {name: {"status": "pending" | "running" | "finished" | "failed" | "interrupted",
                       "flags": ..., "depth": ..., "wall_time_s": ..., "error": ...,
                       "skipped": True (finished before this run), "log": ...}}}

Written by the sequential runner (resjax.sweeps.runner) after every change and by launch.sh
(through `python -m resjax.sweep record`) at the end; read by the report and by a rerun.
"""

from __future__ import annotations

import datetime
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from resjax.duration import hms
from resjax.sweeps.points import Point
from resjax.workdir import STATUS, read_json, write_json

# A line of a point's log that is not its own words: absl log lines and launch.sh's headers.
_NOT_THE_POINTS_WORDS = re.compile(r"^([IWEF][0-9]{4} |===|$)")


def now() -> str:
    """The local time, to the second, with its UTC offset."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


duration = hms  # the sweep's log lines (runner, `python -m resjax.sweep record`)


def new(
    points: Iterable[Point],
    command: str | None,
    cli_flags: Sequence[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """A status with every point pending, each with the `python -m resjax.train` flags that run
    it (`cli_flags` appended); the sweep's `FILE[:ARG]` and `fields` are added at the top level."""
    points = list(points)
    return {
        "command": command,
        "sweep": points[0].sweep if points else None,
        "reference": points[0].reference if points else None,
        **fields,
        "points": {
            p.name: {"status": "pending", "flags": shlex.join(p.flags(cli_flags))} for p in points
        },
    }


def read_points(workdir: Path) -> dict[str, dict[str, Any]]:
    """The per-point entries of the status file in `workdir` ({} when there is none)."""
    return (read_json(workdir / STATUS) or {}).get("points", {})


def write(workdir: Path, status: dict[str, Any]) -> None:
    """Writes `status` to workdir/sweep_status.json (atomically), stamping 'updated'."""
    status["updated"] = now()
    write_json(workdir / STATUS, status)


def counts(status: dict[str, Any]) -> dict[str, int]:
    """How many points have each status, in the order they first appear."""
    out: dict[str, int] = {}
    for entry in status["points"].values():
        out[entry["status"]] = out.get(entry["status"], 0) + 1
    return out


def failed_points(status: dict[str, Any]) -> list[str]:
    """Names of the points whose status is not 'finished'."""
    return [name for name, e in status["points"].items() if e["status"] != "finished"]


def error_line(e: BaseException) -> str:
    """'KindOfError: first line of its message'."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def last_words(log: Path) -> str | None:
    """The last line a point wrote to its log, absl's log lines and headers left out."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    words = [line for line in lines if not _NOT_THE_POINTS_WORDS.match(line)]
    return words[-1] if words else None
