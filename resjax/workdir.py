"""What the directories of a run and of a sweep hold, and reading them without JAX.

A run's workdir (written by resjax.training)::

    config.json          the resolved config, written at every start
    metrics.jsonl        one JSON object per logged step (train window, eval, diagnostics)
    results.json         the final numbers; written last and atomically, so it means "finished"
    environment.jsonl    versions, devices and flags, one line per start or resume
    resume_log.jsonl     one line per resume (resjax.checkpoint)
    checkpoints/, tb/    Orbax checkpoints, TensorBoard event files

A sweep's workdir (written by resjax.sweeps) holds one run directory per point, named by
`safe_name`, `sweep_status.json` and the report. Per-block diagnostics are logged in
metrics.jsonl as 'diag/{block}/{metric}' (`flatten_diagnostics`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
STATUS = "sweep_status.json"
LOG = "log.txt"  # a point's console output when launch.sh runs it
ENVIRONMENT = "environment.jsonl"
RESUME_LOG = "resume_log.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"

DIAG_PREFIX = "diag"
BLOCK_METRICS = ("grad_norm", "input_grad_norm", "branch_ratio", "branch_std", "last_bn_gamma")


def write_json(path: Path, value: Any) -> None:
    """Writes `value` as indented JSON beside `path`, then renames: readers never see half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def check_writable(folder: Path, writer: str = "0") -> None:
    """Creates `folder` and writes and removes a 4 KB probe file in it (named for `writer`, so
    that processes sharing the folder do not collide); raises OSError when that fails. Cheaper
    than finding out from a background save: when Orbax's first write fails, the threads it
    started wait for signals that never come, and the process hangs at exit."""
    probe = folder / f".write_probe_{writer}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        probe.write_bytes(bytes(4096))
    finally:
        probe.unlink(missing_ok=True)


# What a run writes into its workdir, by name: a folder of the user's holding any of them (and no
# resjax run) would have them overwritten or mixed with a run's.
RUN_FILES = (CONFIG, RESULTS, METRICS, ENVIRONMENT, RESUME_LOG, CHECKPOINTS, TENSORBOARD)


def check_run_dir(path: Path) -> None:
    """Raises ValueError, in one line naming what is there, when `path` cannot be a run's
    workdir: a file, or a folder holding files a run writes (`RUN_FILES`) but no resjax run.

    Pass: a folder that does not exist, is empty or holds none of `RUN_FILES` (empty folders
    of those names aside: a run writes beside the user's other files); a resjax run to resume
    (environment.jsonl, a checkpoint step in checkpoints/, or a config.json of resjax's keys);
    a sweep's workdir (sweep_status.json). Reads names and at most config.json; no JAX.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"workdir {path} is a file, not a folder; give a folder for the run")
    clashes = sorted(name for name in RUN_FILES if _holds_something(path / name))
    if not clashes or _is_run(path):
        return
    listed = ", ".join(n + "/" if (path / n).is_dir() else n for n in clashes)
    raise ValueError(
        f"workdir {path} holds {listed} but no resjax run (no {ENVIRONMENT}, checkpoint step "
        f"or resjax {CONFIG}): a run would write over them; choose a new or empty folder, or "
        "a resjax run's workdir to resume it"
    )


def _holds_something(path: Path) -> bool:
    """A file, or a folder with anything in it (an empty one has nothing to write over)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _is_run(path: Path) -> bool:
    """Whether `path` holds what only resjax writes: a run (to resume) or a sweep."""
    if (path / ENVIRONMENT).is_file() or (path / STATUS).is_file():
        return True
    checkpoints = path / CHECKPOINTS
    if checkpoints.is_dir() and any(re.match(r"\d+(\.|$)", p.name) for p in checkpoints.iterdir()):
        return True  # '<step>' or '<step>.unrestorable', as resjax.checkpoint names them
    config = read_json(path / CONFIG)
    return isinstance(config, dict) and {"model", "optim", "data", "seed"} <= config.keys()


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file ([] when missing), without a line a kill cut short."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def safe_name(text: str) -> str:
    """`text` with every run of characters other than letters, digits and `_.+-` made one '_'."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


# --- per-block diagnostics in metrics.jsonl ---


def flatten_diagnostics(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{metric: {block: v}} -> {'diag/{block}/{metric}': v} (MetricWriter's flat scalars)."""
    return {
        f"{DIAG_PREFIX}/{block}/{metric}": v
        for metric, blocks in values.items()
        for block, v in blocks.items()
    }


def unflatten_diagnostics(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{'diag/{block}/{metric}': v, ...} (other keys ignored) -> {block: {metric: v}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, v in row.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == DIAG_PREFIX:
            out.setdefault(parts[1], {})[parts[2]] = v
    return out


def logged_diagnostics(run_dir: Path) -> dict[str, Any] | None:
    """The last per-block diagnostics a run logged, or None when it logged none.

    Returns {'step', 'blocks': [{'block', 'index', 'relative_depth', **BLOCK_METRICS}]}, blocks
    from input to output ('stage{i}_block{j}' in (i, j) order; block k of n at (k + 0.5) / n).
    """
    last = None
    for row in read_rows(run_dir / METRICS):
        if any(k.startswith(DIAG_PREFIX + "/") for k in row):
            last = row
    if last is None:
        return None
    per_block = unflatten_diagnostics(last)
    names = sorted(per_block, key=lambda name: [int(n) for n in re.findall(r"\d+", name)])
    blocks = [
        {
            "block": name,
            "index": k,
            "relative_depth": (k + 0.5) / len(names),
            **{m: float(per_block[name][m]) for m in BLOCK_METRICS},
        }
        for k, name in enumerate(names)
    ]
    return {"step": int(last["step"]), "blocks": blocks}
