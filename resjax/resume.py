"""When a run may resume from a checkpoint in its workdir: the same model and a config that
changed only in what does not alter a step (`resjax.config.SAFE_ON_RESUME`). Anything else is
refused with one line, before anything in the workdir is touched.

The checkpoint's meta (resjax.checkpoint) records what is compared here: the parameter shapes,
the model's description and the config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resjax.config import SAFE_ON_RESUME
from resjax.workdir import RESUME_LOG


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model or an incompatible config."""


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every leaf that differs between two config dicts."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def shapes_of(tree: Any) -> dict[str, list[int]]:
    """{path: shape} of every leaf: what must match for a checkpoint to fit a model."""
    return {
        jax.tree_util.keystr(path): list(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_compatible(
    meta: dict[str, Any], params_shapes: dict[str, list[int]], config: dict[str, Any], workdir: Path
) -> dict[str, tuple[Any, Any]]:
    """Refuses a checkpoint of another model; returns the safe config changes to record."""
    old_model = meta.get("model_description", "?")
    new_model = describe_model(config)
    if meta.get("param_shapes") != params_shapes:
        raise CheckpointMismatchError(
            f"{workdir} holds a checkpoint of {old_model}, but the config asks for {new_model}; "
            "use another --workdir (nothing was overwritten)"
        )
    changes = config_changes(meta.get("config", {}), config)
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in unsafe.items())
        raise CheckpointMismatchError(
            f"{workdir} holds a checkpoint of {old_model} trained with a different config "
            f"({listed}); only {', '.join(SAFE_ON_RESUME)} may change on resume. Use another "
            "--workdir (nothing was overwritten)"
        )
    return changes


def describe_model(config: dict[str, Any]) -> str:
    """'resnet56 (shortcut=B)' from a config dict: the name and any non-default overrides."""
    model = config.get("model", {})
    overrides = {k: v for k, v in model.get("overrides", {}).items() if v is not None}
    extra = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return f"{model.get('name', '?')}" + (f" ({extra})" if extra else "")


def record_resume(workdir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Appends the resume and the config values it changed to workdir/resume_log.jsonl."""
    if jax.process_index() != 0:
        return
    row = {"time": round(time.time(), 3), "resumed_at_step": step}
    row["changes"] = {k: {"old": a, "new": b} for k, (a, b) in changes.items()}
    with (workdir / RESUME_LOG).open("a") as f:
        f.write(json.dumps(row, default=repr) + "\n")
