"""The sequential sweep runner: every point trained in turn, each in WORKDIR/<name>/.

    python -m resjax.train --config=configs/depth_sweep.py --workdir=runs/depth_sweep

`run_sweep` skips finished points (their results.json, of the same config), reruns interrupted
ones into the same directory (training resumes from its checkpoint), records failures in
WORKDIR/sweep_status.json and goes on, stops at Preempted or KeyboardInterrupt (a SIGTERM/SIGINT
during a point), and always writes the report (resjax.sweeps.report) at the end.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from resjax import models
from resjax.config import model_overrides
from resjax.sweeps import report as sweep_report
from resjax.sweeps import status as sweep_status
from resjax.sweeps.points import Point, enumerate_points
from resjax.training import Preempted, train_and_evaluate
from resjax.workdir import CONFIG, STATUS

TrainFn = Callable[[ml_collections.ConfigDict, Path], dict]


def run_sweep(
    points: Sequence[Point],
    workdir: str | Path,
    train_fn: TrainFn | None = None,
    *,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    lead: bool | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Runs `points` in turn, each in `workdir/<name>`; returns the status written to
    `workdir/sweep_status.json` ({'points': {name: {'status': ..., ...}}, ...}).

    A point finished with its config is skipped; any other is (re)run into its directory
    (`train_fn` resumes from a checkpoint there). An exception fails that point and the sweep
    goes on; Preempted or KeyboardInterrupt stops it (status 'interrupted') and is re-raised after
    the status and report are written. `train_fn` defaults to `train_and_evaluate`; `lead`
    (default: process 0) writes the status file and report.
    """
    sweep = _Sweep(
        points,
        Path(workdir),
        command=command,
        log=log or (lambda line: print(line, flush=True)),
        lead=jax.process_index() == 0 if lead is None else lead,
    )
    try:
        for i, point in enumerate(points, 1):
            if not sweep.run_point(i, point, train_fn or train_and_evaluate):
                break
    finally:
        sweep.close(report)
    if sweep.interrupted is not None:
        raise sweep.interrupted
    sweep.log_done()
    return sweep.status


def run_from_flags(
    config_file: str,
    arg: str | None,
    overrides: dict[str, Any],
    workdir: str | Path,
    *,
    point: str | None = None,
    train_fn: TrainFn | None = None,
) -> int:
    """What `python -m resjax.train` does for a sweep: enumerate (and check) every point, run
    them, write the report. With `point`, runs only that point, in `workdir` itself. Returns the
    exit status: 0, or 1 when a point failed. SweepError when the points cannot be enumerated."""
    points = enumerate_points(config_file, arg, overrides, only=point)
    train_fn = train_fn or train_and_evaluate
    if point is not None:
        train_fn(points[0].config, Path(workdir))
        return 0
    print(
        f"[sweep] {config_file}{':' + arg if arg else ''}: {len(points)} points in {workdir}: "
        + ", ".join(p.name for p in points),
        flush=True,
    )
    command = "python -m resjax.train " + shlex.join(sys.argv[1:])
    failed = sweep_status.failed_points(run_sweep(points, workdir, train_fn, command=command))
    if failed:
        print(
            f"error: {len(failed)} point(s) did not finish: {', '.join(failed)} "
            f"(see {Path(workdir) / STATUS})",
            file=sys.stderr,
        )
        return 1
    return 0


def model_depth(config: ml_collections.ConfigDict) -> int | None:
    """The depth of the network `config` trains (weighted layers, as results.json records it);
    None when its model name is no model (that point fails when it trains)."""
    try:
        return models.get_model(config.model.name, **model_overrides(config, 10)).depth
    except ValueError:
        return None


class _Eta:
    """Time left: seconds per unit of cost of the points trained so far x the cost left.
    A point's cost is its depth x steps (or epochs) x batch size."""

    def __init__(self, points: Sequence[Point], depths: dict[str, int | None]):
        self.remaining = {p.name: _cost(p.config, depths[p.name]) for p in points}
        self.seconds_spent = self.cost_spent = 0.0  # over points trained in this invocation

    def seconds_left(self) -> float:
        rate = self.seconds_spent / self.cost_spent if self.cost_spent else math.nan
        return rate * sum(self.remaining.values())

    def trained(self, name: str, seconds: float) -> None:
        self.seconds_spent += seconds
        self.cost_spent += self.remaining.pop(name)

    def done(self, name: str) -> None:
        self.remaining.pop(name, None)


def _cost(c: ml_collections.ConfigDict, depth: int | None) -> float:
    steps = c.total_steps if c.total_steps is not None else (c.total_epochs or 1) * 1000
    return float(depth or 1) * float(steps) * float(c.batch_size)


class _Sweep:
    """One call of run_sweep: its status (kept on disk), its ETA, and the steps of a point."""

    def __init__(self, points, workdir: Path, *, command, log, lead: bool):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.log, self.lead, self.n = workdir, log, lead, len(points)
        self.previous = sweep_status.read_points(workdir)  # a rerun keeps their wall times
        self.status = sweep_status.new(
            points, command, started=sweep_status.now(), finished=None, wall_time_s=None
        )
        depths = {p.name: model_depth(p.config) for p in points}
        for name, depth in depths.items():
            self.status["points"][name]["depth"] = depth
        self.eta = _Eta(points, depths)
        self.start = time.perf_counter()
        self.interrupted: BaseException | None = None
        self.save()

    def save(self) -> None:
        if self.lead:
            sweep_status.write(self.workdir, self.status)

    def run_point(self, i: int, point: Point, train_fn: TrainFn) -> bool:
        """Skips, trains or fails point `i`; False when the sweep must stop (interrupted)."""
        tag = f"[sweep] point {i}/{self.n} {point.name}"
        point_dir = self.workdir / point.name
        if point.is_finished_in(point_dir):
            self._skip(point, tag)
            return True
        entry = self.status["points"][point.name]
        self.log(
            f"{tag}: {'resuming' if (point_dir / CONFIG).exists() else 'starting'} in "
            f"{point_dir}  (sweep elapsed {sweep_status.duration(time.perf_counter() - self.start)}"
            f", ETA {sweep_status.duration(self.eta.seconds_left())})"
        )
        entry.update(status="running", started=sweep_status.now())
        self.save()
        t0 = time.perf_counter()
        try:
            results = train_fn(point.config, point_dir)
        except (KeyboardInterrupt, SystemExit, Preempted) as e:
            entry.update(status="interrupted", wall_time_s=time.perf_counter() - t0)
            self.interrupted = e
            self.log(f"{tag}: interrupted ({type(e).__name__}); rerun the same command to resume")
            return False
        except Exception as e:  # noqa: BLE001  (a failing point must not stop the sweep)
            seconds = time.perf_counter() - t0
            entry.update(status="failed", error=sweep_status.error_line(e), wall_time_s=seconds)
            self.log(f"{tag}: FAILED after {sweep_status.duration(seconds)}: {entry['error']}")
            traceback.print_exc(file=sys.stderr)
        else:
            self._finished(point, tag, results, time.perf_counter() - t0)
        self.eta.done(point.name)
        self.save()
        return True

    def _skip(self, point: Point, tag: str) -> None:
        entry = self.status["points"][point.name]
        entry.update(status="finished", skipped=True)
        if self.previous.get(point.name, {}).get("wall_time_s") is not None:
            entry["wall_time_s"] = self.previous[point.name]["wall_time_s"]
        self.eta.done(point.name)
        self.log(f"{tag}: already finished, skipped")
        self.save()

    def _finished(self, point: Point, tag: str, results: Any, seconds: float) -> None:
        self.eta.trained(point.name, seconds)
        self.status["points"][point.name].update(status="finished", wall_time_s=seconds)
        summary = ", ".join(
            f"{k} {results[k]:.4f}"
            for k in ("train_error", "test_error")
            if isinstance(results, dict) and isinstance(results.get(k), float)
        )
        self.log(
            f"{tag}: finished in {sweep_status.duration(seconds)}"
            + (f" ({summary})" if summary else "")
            + f"; ETA of the sweep {sweep_status.duration(self.eta.seconds_left())}"
        )

    def close(self, report: bool) -> None:
        """The final status and, on the lead process, the report (whatever happened)."""
        self.status["finished"] = sweep_status.now() if self.interrupted is None else None
        self.status["wall_time_s"] = time.perf_counter() - self.start
        self.save()
        if report and self.lead:
            try:
                paths = sweep_report.write_report(self.workdir)
                self.log(f"[sweep] report: {paths['markdown']}")
            except Exception as e:  # noqa: BLE001  (the report must not hide the sweep's outcome)
                self.log(f"[sweep] the report could not be written: {sweep_status.error_line(e)}")

    def log_done(self) -> None:
        counts = sweep_status.counts(self.status)
        self.log(
            f"[sweep] done in {sweep_status.duration(self.status['wall_time_s'])}: "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
        )
