"""Sweeps: a config file's points, enumerated and checked up front, then run one after another.

A config file may define `sweep(arg)` returning the points of the sweep `arg` names, each a
`get_config` arg string ('depth=56,plain=1') or a dict of flattened overrides ({'optim.lr': 0.2}),
or None when `arg` is a single point. `point_name(point)`, if defined, names each point
('plain_d56_s0'); otherwise the name is made from the point itself.

    python -m resjax.train --config=configs/depth_sweep.py --workdir=runs/depth_sweep
    python -m resjax.sweep list configs/depth_sweep.py:cifar10 [--config.key=value ...]

`list` prints one line per point, `name<TAB>--config=FILE:ARG [--config.key=value ...]`: the
flags that make `python -m resjax.train` run exactly that point (add `--workdir`). The runner
(`run_sweep`) trains each point in `WORKDIR/<name>/`, skips finished ones (results.json exists),
reruns interrupted ones into the same directory (training resumes from its checkpoint), records
failures in `WORKDIR/sweep_status.json` and goes on, stops at KeyboardInterrupt/SystemExit (a
SIGTERM/SIGINT during a point), and always writes the report (`resjax.report`) at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import importlib.util
import inspect
import json
import math
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

STATUS_FILE = "sweep_status.json"
# Fields that say where things are, not what is trained: a finished point may differ in them.
_WHERE_KEYS = ("data.dir", "data.manual_dir", "data.prefetch_batches")


class SweepError(ValueError):
    """A sweep cannot be enumerated: an unknown key, a bad point, or two points with one name."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep.

    Attributes:
      name: its directory under the sweep's workdir, e.g. 'plain_d56_s0'.
      config_file: the config file's path as given.
      arg: the `get_config` arg that builds it (a point string, or the sweep's arg for dict points).
      overrides: the point's own flattened overrides (dict points; {} for string points).
      config: the locked config, point and command-line overrides applied.
      is_dict_point: True when the point was an override dict (then `--point` selects it).
    """

    name: str
    config_file: str
    arg: str | None
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    is_dict_point: bool = False

    def flags(self, cli_flags: Sequence[str] = ()) -> list[str]:
        """`python -m resjax.train` flags that run exactly this point (without --workdir)."""
        spec = self.config_file + (f":{self.arg}" if self.arg else "")
        out = [f"--config={spec}"]
        if self.is_dict_point:
            out.append(f"--point={self.name}")
            out += [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()]
        return out + list(cli_flags)

    @property
    def depth(self) -> int | None:
        """The depth in the model name ('plain56' -> 56), for ETA weights and the report."""
        match = re.search(r"(\d+)$", self.config.model.name)
        return int(match.group(1)) if match else None


def _flag_value(value: Any) -> str:
    return str(value) if not isinstance(value, tuple) else "(" + ", ".join(map(str, value)) + ")"


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """'configs/x.py:depth=56' -> ('configs/x.py', 'depth=56'); no ':' -> (spec, None)."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep and arg else None)


def load_config_module(config_file: str | Path):
    """Imports a config file by path (as ml_collections' --config flag does)."""
    path = Path(config_file)
    if not path.is_file():
        raise SweepError(f"config file {config_file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_resjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_points(module, arg: str | None) -> list[str | dict] | None:
    """What the module's `sweep(arg)` returns; None when it has no sweep or `arg` is one point."""
    fn = getattr(module, "sweep", None)
    if fn is None:
        return None
    points = fn(arg) if inspect.signature(fn).parameters else (fn() if not arg else None)
    return None if points is None else list(points)


def is_sweep(config_file: str, arg: str | None) -> bool:
    """True when `config_file[:arg]` names a sweep rather than one run."""
    return sweep_points(load_config_module(config_file), arg) is not None


def point_name(module, point: str | dict) -> str:
    """The point's directory name: the module's `point_name(point)`, else made from the point."""
    if hasattr(module, "point_name"):
        name = module.point_name(point)
    elif isinstance(point, dict):
        name = "_".join(f"{k.rsplit('.', 1)[-1]}{_flag_value(v)}" for k, v in point.items())
    else:
        name = point.replace("=", "").replace(",", "_")
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(name)).strip("_.")
    return name or "default"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any], where: str
) -> None:
    """Sets flattened `overrides` on a locked `config`; an unknown key or a wrong type raises
    SweepError naming `where` (the point), the key and the nearest existing keys."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                _unknown_key(where, key, ".".join(parents[: i + 1]), node, part)
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            _unknown_key(where, key, key, node, leaf)
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise SweepError(f"{where}: cannot set config.{key} = {value!r}: {e}") from None


def _unknown_key(where: str, key: str, missing: str, node, part: str) -> None:
    known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    close = difflib.get_close_matches(part, known, n=3)
    prefix = missing.rsplit(".", 1)[0] + "." if "." in missing else ""
    hint = f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    raise SweepError(f"{where}: unknown config key {key!r} (no config.{missing}).{hint}")


def enumerate_points(
    config_file: str,
    arg: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    only: str | None = None,
) -> list[Point]:
    """Every point of the sweep `config_file[:arg]`, each config built, overridden and checked.

    Args:
      config_file: a config file defining `get_config(arg)` and, for a sweep, `sweep(arg)`.
      arg: the sweep's arg ('' or None: the file's default sweep). If it names a single point
        (`sweep(arg)` is None, or the file has no `sweep`), the list is that one point.
      overrides: flattened command-line overrides ({'total_steps': 10}), applied to every point.
      only: keep just the point of this name (SweepError if there is none).

    Returns:
      Points in the sweep's order. Raises SweepError, naming the point and the key, for an
      unknown key or a bad value, and for two points with one name, before anything runs.
    """
    module = load_config_module(config_file)
    try:
        raw = sweep_points(module, arg)
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{config_file}:{arg or ''}: {e}") from None
    if raw is None:
        raw = [arg or ""]
    points, seen = [], {}
    for i, point in enumerate(raw, 1):
        if not isinstance(point, str | dict):
            raise SweepError(
                f"sweep point {i} of {config_file}: expected str or dict, got {point!r}"
            )
        is_dict = isinstance(point, dict)
        try:
            name = point_name(module, point)
        except (ValueError, KeyError, TypeError) as e:
            raise SweepError(f"sweep point {i} ({config_file}:{point}): {e}") from None
        where = f"sweep point {i} {name!r} ({config_file}:{point if not is_dict else arg or ''})"
        get_arg = (arg if is_dict else point) or None
        try:
            config = module.get_config(get_arg) if get_arg is not None else module.get_config()
        except (ValueError, KeyError, TypeError) as e:
            raise SweepError(f"{where}: {e}") from None
        config = config.copy_and_resolve_references() if not config.is_locked else config
        config.lock()
        if is_dict:
            apply_overrides(config, point, where)
        apply_overrides(config, dict(overrides or {}), f"{where}, command-line override")
        if name in seen:
            raise SweepError(
                f"{where} has the same name as sweep point {seen[name]}; names must differ"
            )
        seen[name] = i
        points.append(
            Point(name, config_file, get_arg, dict(point) if is_dict else {}, config, is_dict)
        )
    if only is not None:
        points = [p for p in points if p.name == only]
        if not points:
            raise SweepError(
                f"no point named {only!r} in {config_file}:{arg or ''}; points: {', '.join(seen)}"
            )
    return points


# --- running ---


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _weight(point: Point) -> float:
    """Relative cost of a point for the ETA: depth x steps (or epochs) x batch size."""
    c = point.config
    steps = c.total_steps if c.total_steps is not None else (c.total_epochs or 1) * 1000
    return float(point.depth or 1) * float(steps) * float(c.batch_size)


def _config_json(d: dict) -> dict:
    """A config as JSON data, without the keys that only say where things are."""
    d = json.loads(json.dumps(d))
    for key in _WHERE_KEYS:
        *parents, leaf = key.split(".")
        node = d
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return d


def _same_run(point: Point, point_dir: Path) -> bool:
    """False when `point_dir` holds a config.json of another config (changed or reused)."""
    path = point_dir / "config.json"
    if not path.exists():
        return True
    try:
        saved = json.loads(path.read_text())
        return _config_json(saved) == _config_json(json.loads(point.config.to_json_best_effort()))
    except (ValueError, TypeError):
        return False


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_sweep(
    points: Sequence[Point],
    workdir: str | Path,
    train_fn: Callable[[ml_collections.ConfigDict, Path], dict] | None = None,
    *,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    lead: bool | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Runs `points` in turn, each in `workdir/<name>`; returns the status written to
    `workdir/sweep_status.json` ({'points': {name: {'status': ..., ...}}, ...}).

    A point whose results.json exists is skipped; any other is (re)run into its directory
    (`train_fn` resumes from a checkpoint there). An exception fails that point and the sweep
    goes on; KeyboardInterrupt/SystemExit stops it (status 'interrupted') and is re-raised after
    the status and report are written. `train_fn` defaults to `resjax.train.train_and_evaluate`;
    `lead` (default: process 0) writes the status file and report.
    """
    if train_fn is None:
        from resjax.train import train_and_evaluate as train_fn
    if lead is None:
        import jax

        lead = jax.process_index() == 0
    log = log or (lambda line: print(line, flush=True))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    status_path = workdir / STATUS_FILE
    try:  # a rerun keeps what it knows of points finished before (their wall time)
        previous = json.loads(status_path.read_text()).get("points", {})
    except (OSError, ValueError):
        previous = {}
    status: dict[str, Any] = {
        "command": command,
        "started": _now(),
        "finished": None,
        "wall_time_s": None,
        "points": {
            p.name: {
                "status": "pending",
                "flags": " ".join(shlex.quote(f) for f in p.flags()),
                "depth": p.depth,
            }
            for p in points
        },
    }

    def save():
        if lead:
            status["updated"] = _now()
            _write_json(status_path, status)

    n = len(points)
    start = time.perf_counter()
    spent, spent_weight = 0.0, 0.0  # over points trained in this invocation (not skipped)
    remaining = {p.name: _weight(p) for p in points}
    interrupted: BaseException | None = None
    save()
    try:
        for i, point in enumerate(points, 1):
            entry = status["points"][point.name]
            point_dir = workdir / point.name
            rate = spent / spent_weight if spent_weight else float("nan")
            eta = rate * sum(remaining.values())
            tag = f"[sweep] point {i}/{n} {point.name}"
            # A finished run of another config (say, a longer total_steps) goes to train_fn,
            # which extends it or refuses it with an error.
            if (point_dir / "results.json").exists() and _same_run(point, point_dir):
                entry.update(status="finished", skipped=True)
                if previous.get(point.name, {}).get("wall_time_s") is not None:
                    entry["wall_time_s"] = previous[point.name]["wall_time_s"]
                remaining.pop(point.name)
                log(f"{tag}: already finished, skipped")
                save()
                continue
            resuming = (point_dir / "config.json").exists()
            log(
                f"{tag}: {'resuming' if resuming else 'starting'} in {point_dir}  "
                f"(sweep elapsed {_duration(time.perf_counter() - start)}, ETA {_duration(eta)})"
            )
            entry.update(status="running", started=_now())
            save()
            t0 = time.perf_counter()
            try:
                results = train_fn(point.config, point_dir)
            except (KeyboardInterrupt, SystemExit) as e:
                entry.update(status="interrupted", wall_time_s=time.perf_counter() - t0)
                interrupted = e
                log(f"{tag}: interrupted ({type(e).__name__}); rerun the same command to resume")
                break
            except Exception as e:  # noqa: BLE001  (a failing point must not stop the sweep)
                entry.update(
                    status="failed", error=_first_line(e), wall_time_s=time.perf_counter() - t0
                )
                log(f"{tag}: FAILED after {_duration(time.perf_counter() - t0)}: {entry['error']}")
                traceback.print_exc(file=sys.stderr)
            else:
                elapsed = time.perf_counter() - t0
                spent += elapsed
                spent_weight += remaining[point.name]
                entry.update(status="finished", wall_time_s=elapsed)
                summary = ", ".join(
                    f"{k} {results[k]:.4f}"
                    for k in ("train_error", "test_error")
                    if isinstance(results, dict) and isinstance(results.get(k), float)
                )
                rate = spent / spent_weight
                remaining.pop(point.name)
                log(
                    f"{tag}: finished in {_duration(elapsed)}"
                    + (f" ({summary})" if summary else "")
                    + f"; ETA of the sweep {_duration(rate * sum(remaining.values()))}"
                )
            remaining.pop(point.name, None)
            save()
    finally:
        status["finished"] = _now() if interrupted is None else None
        status["wall_time_s"] = time.perf_counter() - start
        save()
        if report and lead:
            try:
                from resjax import report as report_module

                paths = report_module.write_report(workdir)
                log(f"[sweep] report: {paths['markdown']}")
            except Exception as e:  # noqa: BLE001  (the report must not hide the sweep's outcome)
                log(f"[sweep] the report could not be written: {_first_line(e)}")
    if interrupted is not None:
        raise interrupted
    counts = {}
    for entry in status["points"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    log(
        f"[sweep] done in {_duration(status['wall_time_s'])}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    return status


def failed_points(status: dict[str, Any]) -> list[str]:
    """Names of the points whose status is not 'finished'."""
    return [name for name, e in status["points"].items() if e["status"] != "finished"]


def default_workdir(config_file: str, arg: str | None) -> Path:
    """runs/<config stem>[_<arg>], used when --workdir is not given."""
    stem = Path(config_file).stem
    return Path("runs") / (stem + (f"_{re.sub(r'[^A-Za-z0-9_.+-]+', '_', arg)}" if arg else ""))


def run_from_flags(
    config_file: str,
    arg: str | None,
    overrides: dict[str, Any],
    workdir: str | Path,
    *,
    point: str | None = None,
    train_fn: Callable | None = None,
) -> int:
    """What `python -m resjax.train` does for a sweep: enumerate (and check) every point, run
    them, write the report. With `point`, runs only that point, in `workdir` itself. Returns the
    exit status: 0, or 1 when a point failed or the sweep could not be enumerated."""
    try:
        points = enumerate_points(config_file, arg, overrides, only=point)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if point is not None:
        (train_fn or _train())(points[0].config, Path(workdir))
        return 0
    print(
        f"[sweep] {config_file}{':' + arg if arg else ''}: {len(points)} points in {workdir}: "
        + ", ".join(p.name for p in points),
        flush=True,
    )
    command = "python -m resjax.train " + shlex.join(sys.argv[1:])
    status = run_sweep(points, workdir, train_fn, command=command)
    failed = failed_points(status)
    if failed:
        print(
            f"error: {len(failed)} point(s) did not finish: {', '.join(failed)} "
            f"(see {Path(workdir) / STATUS_FILE})",
            file=sys.stderr,
        )
        return 1
    return 0


def _train():
    from resjax.train import train_and_evaluate

    return train_and_evaluate


# --- `python -m resjax.sweep list CONFIG[:ARG] [--config.key=value ...]` ---


def list_lines(spec: str, cli_flags: Sequence[str] = ()) -> list[str]:
    """`name<TAB>flags` for every point of the sweep `spec`; `cli_flags` ('--config.k=v') are
    type-checked against the config and appended to each line."""
    config_file, arg = split_config_spec(spec)
    points = enumerate_points(config_file, arg)  # a bad point fails here, with a clear message
    if not cli_flags:
        return [f"{p.name}\t{shlex.join(p.flags())}" for p in points]
    bad = [f for f in cli_flags if not f.startswith("--config.")]
    if bad:
        raise SweepError(f"expected only --config.key=value overrides after the config; got {bad}")
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()  # ml_collections parses the values with the fields' types
    config_flags.DEFINE_config_file(
        "config", None, "Config file[:ARG].", flag_values=values, lock_config=True
    )
    try:
        values(["resjax.sweep", f"--config={spec}", *cli_flags])
    except (flags.Error, AttributeError, KeyError) as e:  # an unknown key: did-you-mean text
        while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
            e = e.args[0]
        text = str(e.args[0] if e.args else e).replace("\n", " ")
        raise SweepError(f"bad override in {' '.join(cli_flags)}: {text}") from None
    points = enumerate_points(config_file, arg, values["config"].override_values)
    return [f"{p.name}\t{shlex.join(p.flags(cli_flags))}" for p in points]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "list":
        print(
            "usage: python -m resjax.sweep list CONFIG[:ARG] [--config.key=value ...]\n"
            "  prints name<TAB>flags per point; `python -m resjax.train FLAGS --workdir=DIR` "
            "runs one",
            file=sys.stderr,
        )
        return 2
    try:
        for line in list_lines(argv[1], argv[2:]):
            print(line)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
