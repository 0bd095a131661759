"""Config files and their points: `FILE[:ARG]` loaded, a sweep enumerated and checked up front.

A config file may define `sweep(arg)` returning the points of the sweep `arg` names, each a
`get_config` arg string ('depth=56,plain=1') or a dict of flattened overrides ({'optim.lr': 0.2}),
or None when `arg` is a single point. `point_name(point)`, if defined, names each point
('plain_d56_s0'); otherwise the name is made from the point itself. Imports no JAX.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import json
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resjax import hyperparameters
from resjax.config import WHERE_KEYS
from resjax.workdir import CONFIG, RESULTS, safe_name


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
      sweep: the `FILE[:ARG]` it was enumerated from, as given (what the sweep's report is titled).
      reference: the config file's `REFERENCE` (a committed report_summary.csv of the same
        points, other seeds), when no command-line override changed what the point computes.
    """

    name: str
    config_file: str
    arg: str | None
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    is_dict_point: bool = False
    sweep: str | None = None
    reference: str | None = None

    def flags(self, cli_flags: Sequence[str] = ()) -> list[str]:
        """`python -m resjax.train` flags that run exactly this point (without --workdir)."""
        spec = self.config_file + (f":{self.arg}" if self.arg else "")
        out = [f"--config={spec}"]
        if self.is_dict_point:
            out.append(f"--point={self.name}")
            out += [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()]
        return out + list(cli_flags)

    def is_finished_in(self, point_dir: Path) -> bool:
        """True when `point_dir` holds the results of this very config (a run that finished
        with another one, say a shorter total_steps, is not: training extends or refuses it).
        Keys that only say where things are (WHERE_KEYS) may differ."""
        if not (point_dir / RESULTS).exists():
            return False
        path = point_dir / CONFIG
        if not path.exists():
            return True
        try:
            saved = json.loads(path.read_text())
            ours = json.loads(self.config.to_json_best_effort())
            return _without_where_keys(saved) == _without_where_keys(ours)
        except (ValueError, TypeError):
            return False


def _flag_value(value: Any) -> str:
    return str(value) if not isinstance(value, tuple) else "(" + ", ".join(map(str, value)) + ")"


def _without_where_keys(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for key in WHERE_KEYS:
        *parents, leaf = key.split(".")
        node = d
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return d


# --- config files ---


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """'configs/x.py:depth=56' -> ('configs/x.py', 'depth=56'); no ':' -> (spec, None)."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep and arg else None)


def load_config_module(config_file: str | Path):
    """Imports a config file by path (as ml_collections' --config flag does). A file that does
    not exist, does not compile, fails while importing or defines no `get_config` raises
    SweepError naming the file (and the line)."""
    path = Path(config_file)
    if not path.is_file():
        raise SweepError(f"config file {config_file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_resjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # IndentationError included
        raise SweepError(
            f"config file {config_file}, line {e.lineno}: {e.msg} (a Python syntax error)"
        ) from None
    except Exception as e:  # noqa: BLE001  (whatever a config file's own code raises)
        line = next(
            (f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
             if Path(f.filename).resolve() == path.resolve()),
            None,
        )  # fmt: skip
        where = f", line {line}" if line else ""
        raise SweepError(
            f"config file {config_file}{where}: {type(e).__name__}: {e} (while importing it)"
        ) from None
    if not callable(getattr(module, "get_config", None)):
        raise SweepError(
            f"config file {config_file} defines no get_config(arg); a config file defines "
            "get_config(arg: str | None = None) returning the run's config (see configs/)"
        )
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config `FILE[:ARG]` names, as the --config flag builds it: FILE's get_config(ARG).
    A missing file or an ARG that get_config rejects raises SweepError, in one line."""
    config_file, arg = split_config_spec(spec)
    return _get_config(load_config_module(config_file), arg, spec)


def _get_config(module, arg: str | None, where: str) -> ml_collections.ConfigDict:
    try:
        return module.get_config(arg) if arg is not None else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{where}: {e}") from None


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
    return safe_name(str(name)).strip("_.") or "default"


def default_workdir(config_file: str, arg: str | None) -> Path:
    """runs/<config stem>[_<arg>], used when --workdir is not given."""
    return Path("runs") / (Path(config_file).stem + (f"_{safe_name(arg)}" if arg else ""))


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


# --- a sweep's points ---


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
      unknown key or a bad value, hyperparameters that cannot train (resjax.hyperparameters),
      and for two points with one name, before anything runs.
    """
    module = load_config_module(config_file)
    spec = config_file + (f":{arg}" if arg else "")
    try:
        raw = sweep_points(module, arg)
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{spec}: {e}") from None
    single = raw is None
    points, seen = [], {}
    same = all(key in WHERE_KEYS for key in overrides or {})  # the points the file describes
    reference = getattr(module, "REFERENCE", None) if same else None
    for i, point in enumerate([arg or ""] if single else raw, 1):
        if not isinstance(point, str | dict):
            raise SweepError(
                f"sweep point {i} of {config_file}: expected str or dict, got {point!r}"
            )
        is_dict = isinstance(point, dict)
        try:
            name = point_name(module, point)
        except (ValueError, KeyError, TypeError) as e:
            where = spec if single else f"sweep point {i} ({config_file}:{point})"
            raise SweepError(f"{where}: {e}") from None
        where = (
            spec
            if single
            else f"sweep point {i} {name!r} ({config_file}:{point if not is_dict else arg or ''})"
        )
        get_arg = (arg if is_dict else point) or None
        config = _get_config(module, get_arg, where)
        config = config.copy_and_resolve_references() if not config.is_locked else config
        config.lock()
        if is_dict:
            apply_overrides(config, point, where)
        apply_overrides(config, dict(overrides or {}), f"{where}, command-line override")
        try:
            hyperparameters.check(config, truncated=hyperparameters.truncated_by(overrides or {}))
        except ValueError as e:
            raise SweepError(f"{where}: {e}") from None
        if name in seen:
            raise SweepError(
                f"{where} has the same name as sweep point {seen[name]}; names must differ"
            )
        seen[name] = i
        points.append(
            Point(
                name,
                config_file,
                get_arg,
                dict(point) if is_dict else {},
                config,
                is_dict,
                spec,
                None if reference is None else str(reference),
            )
        )
    if only is not None:
        points = [p for p in points if p.name == only]
        if not points:
            raise SweepError(f"no point named {only!r} in {spec}; points: {', '.join(seen)}")
    return points
