"""Checkpoints that never lose a run: Orbax saves, automatic resume, preemption, mismatch checks.

Layout of a run's workdir::

    checkpoints/<step>/state     the TrainState arrays (params, batch_stats, opt_state, step, rng)
    checkpoints/<step>/meta      JSON: data iterator position, model, parameter shapes, config
    resume_log.jsonl             one line per resume that changed a (safe) config value

Saves are asynchronous (Orbax writes in the background while training goes on) and atomic
(Orbax writes into a temporary folder and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest; the temporary folder is removed on the next start).
Kept: the latest `keep_checkpoints`, plus the best by validation error.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from resjax.config import SAFE_ON_RESUME

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model or an incompatible config."""


class CheckpointSaveError(OSError):
    """A save failed (disk full, permissions); the last good checkpoint is kept."""


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


def state_arrays(state: Any) -> dict[str, Any]:
    """The checkpointed part of a TrainState, as a plain dict."""
    return {name: getattr(state, name) for name in STATE_FIELDS}


class Checkpointer:
    """Saves and restores one run's TrainState and data position in `workdir/checkpoints`."""

    def __init__(self, workdir: str | Path, *, keep: int = 2, track_best: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        preserve = [policies.LatestN(n=max(1, keep))]
        if track_best:
            # BestN alone keeps only the best-ranked steps, so it would delete a newest checkpoint
            # that ranks worse right after saving it; with LatestN in an Any-policy the newest
            # always stays. reverse=True sorts descending, so the lowest validation error is last
            # and kept.
            preserve.append(
                policies.BestN(get_metric_fn=lambda m: m["val_error"], reverse=True, n=1)
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            # Orbax writes the metrics given to save() only when best_fn is set; best_step()
            # reads them.
            best_fn=(lambda m: m["val_error"]) if track_best else None,
            best_mode="min",
            cleanup_tmp_directories=True,  # removes what a process killed mid-save left
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def read_meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata saved beside the state at `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def save(
        self,
        state: Any,
        meta: dict[str, Any],
        val_error: float | None,
        *,
        wait: bool = False,
    ) -> None:
        """Saves `state` at its step (asynchronously unless `wait`).

        `val_error` ranks checkpoints for "best"; None (no evaluation yet) ranks last.
        """
        step = int(jax.device_get(state.step))
        metrics = {"val_error": float("inf") if val_error is None else float(val_error)}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state_arrays(state)),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
                force=True,
            )
            if wait:
                self.manager.wait_until_finished()
        except Exception as e:  # Orbax raises many kinds; all mean the same to the user
            last = [s for s in self.manager.all_steps() if s != step]
            kept = f"step {max(last)}" if last else "none yet"
            raise CheckpointSaveError(
                f"checkpoint save at step {step} in {self.directory} failed ({e}); the last good "
                f"checkpoint ({kept}) is kept"
            ) from e

    def restore(
        self, abstract_state: Any, sharding: jax.sharding.Sharding, step: int | None = None
    ) -> tuple[dict, dict]:
        """Restores (state arrays, meta) at `step` (default latest), each array placed with
        `sharding` (any device count: the checkpoint does not fix it). `abstract_state` comes
        from `jax.eval_shape`."""
        step = self.latest_step() if step is None else step
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            state_arrays(abstract_state),
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(f"checkpoint save in {self.directory} failed ({e})") from e

    def close(self) -> None:
        self.manager.close()


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
    with (workdir / "resume_log.jsonl").open("a") as f:
        f.write(json.dumps(row, default=repr) + "\n")


class PreemptionWatch:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop at the next step.

    Single process: our own signal handlers set a flag. Several processes: JAX's preemption
    sync point, so that every process stops at the same step (needs jax.distributed, which a
    multi-process run has initialised). There SIGTERM is left to JAX's preemption service (it
    tells every process, whichever one got the signal), and SIGINT is passed on to it as SIGTERM;
    a local flag would stop processes that got the signal at different steps, and the first
    collective save would then hang.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._signal = None
        self._previous = {}
        self._multiprocess = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the final save
        self._signal = signal.Signals(signum).name
        self._requested.set()
        if self._multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service (its handler)

    def requested(self, step: int) -> bool:
        """True when the run should checkpoint at `step` and stop (same answer on all processes)."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()

    @property
    def signal_name(self) -> str:
        return self._signal or "preemption notice"

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def load_variables(
    workdir: str | Path, which: str = "latest"
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(config, {'params', 'batch_stats'}) of a run's latest or best checkpoint, as host arrays.

    For evaluation, export and diagnostics: no optimizer state, no model needed to restore.
    """
    workdir = Path(workdir)
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best'; got {which!r}")
    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {workdir}/checkpoints)")
    ckpt = Checkpointer(workdir)
    try:
        step = ckpt.best_step() if which == "best" else ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {workdir}/checkpoints")
        # As host numpy arrays: the saved shardings name the saving run's devices, which a
        # multi-process run's (or any other device count's) reader does not have.
        saved = ocp.StandardCheckpointHandler().metadata(ckpt.directory / str(step) / "state")
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
        restored = ckpt.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=as_numpy), meta=ocp.args.JsonRestore()
            ),
        )
    finally:
        ckpt.close()
    state, meta = restored["state"], restored["meta"]
    config = ml_collections.ConfigDict(meta["config"])
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return config, jax.tree.map(np.asarray, variables)
