"""Checkpoints that never lose a run: Orbax saves and restores, with fallback past damaged steps.

Layout of a run's workdir::

    checkpoints/<step>/state     the TrainState arrays (params, batch_stats, opt_state, step, rng)
    checkpoints/<step>/meta      JSON: data iterator position, model, parameter shapes, config,
                                 the latest logged numbers, and a SHA-256 of all that
    checkpoints/<step>.unrestorable   a step that could not be restored, moved aside (kept)
    resume_log.jsonl             one line per resume that changed a (safe) config value

Saves are asynchronous (Orbax writes in the background while training goes on) and atomic
(Orbax writes into a temporary folder and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest; the temporary folder is removed on the next start).
Kept: the latest `keep_checkpoints`, plus the best by validation error. Whether a checkpoint
may be resumed with a given config is resjax.resume's question; reading a run's weights for
evaluation or export is resjax.weights'; preemption is resjax.training.preemption's.

What goes wrong on real disks: a step that cannot be read back (truncated, bit-flipped or
missing files, JSON that no longer parses or no longer matches its digest) is skipped for the
newest one that can; a run moves such a step aside (renamed, never deleted), a reader
(export, evaluation) only says which step it used. A save that fails (disk full, read-only
workdir) raises CheckpointSaveError naming that step and the last good one, with the partial
folder removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from resjax.workdir import CHECKPOINTS, check_writable

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")
MOVED_ASIDE = ".unrestorable"  # Orbax lists only all-digit folder names, so it ignores these
DIGEST = "sha256"  # the meta key holding the digest of the rest of the meta

T = TypeVar("T")


class CheckpointSaveError(OSError):
    """A save failed (disk full, permissions); the last good checkpoint is kept."""


class CheckpointUnreadableError(OSError):
    """The workdir holds checkpoints, but none of them can be read; nothing was changed."""


class _Unreadable(Exception):
    """One step cannot be read back; the message is the reason, one line."""


def state_arrays(state: Any) -> dict[str, Any]:
    """The checkpointed part of a TrainState, as a plain dict."""
    return {name: getattr(state, name) for name in STATE_FIELDS}


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A step that could not be read, why, and where it was moved (None: left in place)."""

    step: int
    reason: str
    moved_to: Path | None = None

    def describe(self, used: int) -> str:
        """One line for the console: which step, why, what was done, which step is used."""
        if self.moved_to is None:
            return f"the checkpoint at step {self.step} cannot be read ({self.reason}); using step {used}"
        return (
            f"the checkpoint at step {self.step} cannot be restored ({self.reason}); moved it "
            f"aside to {self.moved_to} and resuming from step {used}"
        )


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a restore found: the step, its state and meta, and the newer steps it skipped."""

    step: int
    state: dict[str, Any]
    meta: dict[str, Any]
    skipped: list[Skipped]


class Checkpointer:
    """Saves and restores one run's TrainState and data position in `workdir/checkpoints`.

    A context manager: leaving it waits for the pending save (raising if it failed) and
    releases Orbax's threads (`close`)."""

    def __init__(self, workdir: str | Path, *, keep: int = 2, track_best: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINTS
        self.track_best = track_best
        preserve = [policies.LatestN(n=max(1, keep))]
        if track_best:
            # BestN alone keeps only the best-ranked steps, so it would delete a newest checkpoint
            # that ranks worse right after saving it; with LatestN in an Any-policy the newest
            # always stays. reverse=True sorts descending, so the lowest validation error is last
            # and kept.
            preserve.append(
                policies.BestN(get_metric_fn=lambda m: m["val_error"], reverse=True, n=1)
            )
        self._options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            # Orbax writes the metrics given to save() only when best_fn is set; best_step()
            # reads them.
            best_fn=(lambda m: m["val_error"]) if track_best else None,
            best_mode="min",
            cleanup_tmp_directories=True,  # removes what a process killed mid-save left
            enable_async_checkpointing=True,
        )
        self._manager: ocp.CheckpointManager | None = None
        self._pending: int | None = None  # the step whose asynchronous save may still run
        # Quieting Orbax's own reports of a failure resjax reports in one line: from the first
        # save until close(), while its background threads may still fail (_quiet_orbax).
        self._quiet: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def manager(self) -> ocp.CheckpointManager:
        """Orbax's manager, opened on first use (see `open`)."""
        return self._manager if self._manager is not None else self.open()

    def open(self) -> ocp.CheckpointManager:
        """Opens Orbax's manager, which removes the temporary folders a killed save left. It
        reads every step's metrics as it opens, and a metrics file that does not parse stops
        it: `restore` moves such steps aside first."""
        if self._manager is None:
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=self._options)
            except Exception as e:
                raise CheckpointUnreadableError(
                    f"cannot list the checkpoints in {self.directory} ({_reason(e)})"
                ) from e
        return self._manager

    # --- which steps there are ---

    def steps_on_disk(self) -> list[int]:
        """The complete (finalized) steps in the directory, newest first; no Orbax manager."""
        if not self.directory.is_dir():
            return []
        return sorted(ocp.path.step.checkpoint_steps(self.directory), reverse=True)

    def latest_step(self) -> int | None:
        """The newest step saved or being saved by this process, else the newest on disk."""
        if self._manager is not None:
            return self._manager.latest_step()
        steps = self.steps_on_disk()
        return steps[0] if steps else None

    def best_step(self) -> int | None:
        """The step with the lowest recorded validation error (the latest without one)."""
        return self.manager.best_step()

    def steps_by_preference(self, which: str) -> list[int]:
        """Steps on disk in the order a reader should try them: 'latest' newest first; 'best'
        lowest recorded validation error first (ties: the newest; a step without a readable
        metric after every step with one), as Orbax's best_step ranks them."""
        newest_first = self.steps_on_disk()
        if which == "latest" or not self.track_best:
            return newest_first
        ranked = {s: v for s in newest_first if (v := self._val_error(s)) is not None}
        unranked = [s for s in newest_first if s not in ranked]
        return sorted(ranked, key=lambda s: (ranked[s], -s)) + unranked

    def _val_error(self, step: int) -> float | None:
        try:
            metrics = json.loads((self.directory / str(step) / "metrics" / "metrics").read_text())
            return float(metrics["val_error"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- reading ---

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved beside the state at `step`, its digest checked.

        Raises CheckpointUnreadableError when it cannot be read."""
        try:
            return self._read_meta(step)
        except _Unreadable as e:
            raise CheckpointUnreadableError(
                f"the checkpoint at step {step} in {self.directory} cannot be read ({e})"
            ) from e

    def restore(
        self,
        abstract_state: Any,
        sharding: jax.sharding.Sharding,
        check_meta: Callable[[dict[str, Any]], None] = lambda meta: None,
    ) -> Restored | None:
        """The newest step that restores (None: no checkpoint yet), each array placed with
        `sharding` (any device count: the checkpoint does not fix it); `abstract_state` comes
        from `jax.eval_shape`.

        `check_meta` may refuse a checkpoint (CheckpointMismatchError: another model), which
        stops the search. Newer steps that cannot be restored are moved aside once an older
        one has restored, so that Orbax never lists them again; when none restores, nothing
        is moved and CheckpointUnreadableError says why each failed.
        """
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            state_arrays(abstract_state),
        )

        def read(step: int) -> tuple[dict, dict]:
            meta = self._read_meta(step)
            check_meta(meta)
            self._check_metrics(step)
            return self._read_state(step, ocp.args.StandardRestore(target)), meta

        with _quiet_orbax():
            found = self.newest_readable(read, self.steps_on_disk(), verb="restored")
        if found is None:
            return None
        step, (state, meta), skipped = found
        skipped = [self._move_aside(s) for s in skipped]
        skipped += [self._move_aside(s) for s in self._older_with_bad_metrics(step)]
        self.open()  # now that Orbax will list only steps that restore
        return Restored(step=step, state=state, meta=meta, skipped=skipped)

    def read_host(self, which: str = "latest", steps: list[int] | None = None) -> Restored:
        """The latest (or best) step that reads, or the first of `steps` that does, as host
        numpy arrays; nothing is moved or written (a training run may be using the directory).
        For evaluation, export and diagnostics: no model is needed, and any device count reads
        it."""

        def read(step: int) -> tuple[dict, dict]:
            meta = self._read_meta(step)
            # As host numpy arrays: the saved shardings name the saving run's devices, which a
            # multi-process run's (or any other device count's) reader does not have.
            try:
                saved = ocp.StandardCheckpointHandler().metadata(
                    self.directory / str(step) / "state"
                )
            except Exception as e:
                raise _Unreadable(_item_reason("state", e, self.directory / str(step))) from e
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
            return self._read_state(step, ocp.args.PyTreeRestore(restore_args=as_numpy)), meta

        with _quiet_orbax():
            found = self.newest_readable(
                read, self.steps_by_preference(which) if steps is None else steps, verb="read"
            )
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        step, (state, meta), skipped = found
        return Restored(step=step, state=state, meta=meta, skipped=skipped)

    def newest_readable(
        self, read: Callable[[int], T], steps: list[int], verb: str
    ) -> tuple[int, T, list[Skipped]] | None:
        """(step, read(step), the steps skipped before it) for the first of `steps` that every
        process reads; None when `steps` is empty. Raises CheckpointUnreadableError when none
        reads."""
        skipped = []
        for step in steps:
            try:
                value, reason = read(step), None
            except _Unreadable as e:
                value, reason = None, str(e)
                _ignore_closed_loop_from_now()
            if not _on_every_process(reason is None):
                # Every process must resume from the same step, or the first collective hangs.
                skipped.append(Skipped(step, reason or "unreadable on another process"))
                continue
            return step, value, skipped
        if not skipped:
            return None
        listed = "; ".join(f"step {s.step}: {s.reason}" for s in skipped)
        raise CheckpointUnreadableError(
            f"no checkpoint in {self.directory} can be {verb} ({listed}); nothing was changed. "
            "Restore the folder from a copy, or start afresh in another --workdir"
        )

    def _restore_items(self, step: int, **items: Any) -> dict[str, Any]:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        try:
            return checkpointer.restore(
                self.directory / str(step), args=ocp.args.Composite(**items)
            )
        finally:
            checkpointer.close()

    def _read_meta(self, step: int) -> dict[str, Any]:
        try:
            meta = self._restore_items(step, meta=ocp.args.JsonRestore())["meta"]
        except Exception as e:
            raise _Unreadable(_item_reason("meta", e, self.directory / str(step))) from e
        if not isinstance(meta, dict):
            raise _Unreadable(f"meta: expected a JSON object, got {type(meta).__name__}")
        expected = meta.get(DIGEST)
        if expected is not None and expected != _digest(meta):
            raise _Unreadable("meta: its content does not match its SHA-256 (altered on disk)")
        return meta

    def _read_state(self, step: int, args: ocp.args.CheckpointArgs) -> dict[str, Any]:
        try:
            return self._restore_items(step, state=args)["state"]
        except Exception as e:
            raise _Unreadable(_item_reason("state", e, self.directory / str(step))) from e

    def _check_metrics(self, step: int) -> None:
        """Orbax's manager reads every step's metrics file when it opens: one that does not
        parse would stop it (a missing one it tolerates)."""
        path = self.directory / str(step) / "metrics" / "metrics"
        if not path.exists():
            return
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise _Unreadable(_item_reason("metrics", e, self.directory / str(step))) from e

    def _older_with_bad_metrics(self, restored: int) -> list[Skipped]:
        older = []
        for step in self.steps_on_disk():
            if step < restored:
                try:
                    self._check_metrics(step)
                except _Unreadable as e:
                    older.append(Skipped(step, str(e)))
        return older

    def _move_aside(self, skipped: Skipped) -> Skipped:
        """Renames the step's folder to `<step>.unrestorable[-n]` (process 0; the others wait)."""
        target = self.directory / f"{skipped.step}{MOVED_ASIDE}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{skipped.step}{MOVED_ASIDE}-{n}"
        if jax.process_index() == 0:
            (self.directory / str(skipped.step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"resjax moved step {skipped.step} aside")
        return dataclasses.replace(skipped, moved_to=target)

    # --- saving ---

    def save(
        self,
        state: Any,
        meta: dict[str, Any],
        val_error: float | None,
        *,
        wait: bool = False,
    ) -> None:
        """Saves `state` at its step (asynchronously unless `wait`).

        A step already saved or being saved is not saved again (a preemption on a periodic
        save's step reuses that save). `val_error` ranks checkpoints for "best"; None (no
        evaluation yet) ranks last. Raises CheckpointSaveError, naming the step that failed,
        when this save or the previous asynchronous one could not be written.
        """
        step = int(jax.device_get(state.step))
        if self._quiet is None:  # from the first save until close()
            self._quiet = _quiet_orbax()
            self._quiet.__enter__()
        if step not in self.manager.all_steps():
            self.wait()  # a failure of the previous save is reported under its own step
            self._probe(step)
            metrics = {"val_error": float("inf") if val_error is None else float(val_error)}
            try:
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state_arrays(state)),
                        meta=ocp.args.JsonSave({**meta, DIGEST: _digest(meta)}),
                    ),
                    metrics=metrics,
                    force=True,
                )
            except Exception as e:  # Orbax raises many kinds; all mean the same to the user
                self._failed(step, e)
            self._pending = step
        if wait:
            self.wait()

    def _probe(self, step: int) -> None:
        """A small write first: when Orbax's own first write fails (a workdir gone read-only, a
        disk already full), the threads it started for that save wait for signals that never
        come, and the process hangs for 5 minutes at exit."""
        try:
            check_writable(self.directory, str(jax.process_index()))
        except OSError as e:
            self._failed(step, e)

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        step, self._pending = self._pending, None
        if step is None or self._manager is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._failed(step, e)

    def _failed(self, step: int, error: Exception) -> None:
        """Removes the failed step's temporary folder; raises CheckpointSaveError."""
        _quiet_after_failed_save()
        leftover = ""
        if jax.process_index() == 0:
            for path in self.directory.glob(f"{step}{ocp.path.step.TMP_DIR_SUFFIX}*"):
                try:
                    shutil.rmtree(path)
                except OSError as e:
                    leftover = f"; could not remove {path} ({_reason(e)})"
        self.manager.reload()  # forget the step Orbax had listed when the save began
        kept = [s for s in self.steps_on_disk() if s != step]
        raise CheckpointSaveError(
            f"checkpoint save at step {step} in {self.directory} failed ({_reason(error)}); "
            f"the last good checkpoint ({f'step {kept[0]}' if kept else 'none yet'}) is kept"
            + leftover
        ) from error

    def close(self) -> None:
        """Waits for the pending save (raising if it failed), then releases Orbax's threads."""
        try:
            self.wait()
        finally:
            if self._manager is not None:
                manager, self._manager = self._manager, None
                try:
                    manager.close()
                except Exception:  # a failed save is reported by wait(), not twice
                    pass
            if self._quiet is not None:
                quiet, self._quiet = self._quiet, None
                quiet.__exit__(None, None, None)


def _digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the meta without its digest: a bit flip that leaves valid JSON is caught."""
    rest = {k: v for k, v in meta.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _on_every_process(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _item_reason(item: str, error: BaseException, step_folder: Path) -> str:
    """'state/_sharding: Invalid JSON (...)', or 'meta: JSONDecodeError: ...' where the error
    names no file."""
    reason = _reason(error, step_folder)
    return reason if reason.startswith(f"{item}/") else f"{item}: {reason}"


def _reason(error: BaseException, folder: Path | None = None) -> str:
    """A short one-line reason: '[Errno 28] No space left on device', or the innermost clause of
    TensorStore's message and the file it names (not its kilobytes of spec), paths relative to
    `folder`."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno and e.strerror:
            return f"[Errno {e.errno}] {e.strerror}"
    text = " ".join(str(error).split())
    if code := re.search(r"os_error_code='(\d+)'", text):
        return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
    text = re.sub(r"\s*\[tensorstore_spec.*$", "", text)  # kilobytes of JSON
    if status := re.match(r"([A-Z][A-Z_]+): (.*)", text):  # a TensorStore status
        code, rest = status.groups()
        # "Error opening ...: Error reading ... local file "F": what went wrong" -> F: what
        files = list(re.finditer(r'file "([^"]+)":? ?', rest))
        if files:
            detail = rest[files[-1].end() :]
            text = f"{files[-1].group(1)}" + (f": {detail} ({code})" if detail else f" ({code})")
        else:
            text = f"{rest.rsplit(': ', 1)[-1]} ({code})"
    else:
        text = f"{type(error).__name__}: {text}"
    if folder is not None:
        text = text.replace(f"{folder}/", "").replace(str(folder), ".")
    return text


class _DropReported(logging.Filter):
    """Drops ERROR records with a traceback through Orbax: Orbax logs each failure of a
    background save from every thread it passes (four tracebacks for one full disk), and
    asyncio logs the futures it left unretrieved when it gave up ("Future exception was never
    retrieved"), at exit. Orbax re-raises the failure, and resjax reports it once, in one line
    (the traceback stays on the raised error's cause, for RESJAX_TRACEBACK=1)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        paths = [record.pathname]
        paths += [f.filename for f in traceback.extract_tb(record.exc_info[2])]
        return not any(f"{os.sep}orbax{os.sep}" in path for path in paths)


class _DropUnretrieved(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" records; installed once a save
    has failed, whose error resjax has already reported in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


class _IgnoreClosedLoop:
    """sys.unraisablehook that drops "Event loop is closed": a failed restore closes Orbax's
    asyncio loop while TensorStore still reads other arrays, and each late read reports that,
    a dozen tracebacks after the error that matters (which resjax reports)."""

    def __init__(self, previous: Callable[[Any], None]):
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            self.previous(unraisable)


_FAILED = [False]  # a save or a read has failed in this process: the quieting stays


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """While Orbax saves or restores: _DropReported on the absl and asyncio loggers and
    _IgnoreClosedLoop as sys.unraisablehook, removed again on the way out unless something
    failed meanwhile (`_ignore_closed_loop_from_now`)."""
    loggers = [logging.getLogger("absl"), logging.getLogger("asyncio")]
    drop = _DropReported()
    for logger in loggers:
        logger.addFilter(drop)
    installed = not isinstance(sys.unraisablehook, _IgnoreClosedLoop)
    if installed:
        sys.unraisablehook = _IgnoreClosedLoop(sys.unraisablehook)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
        hook = sys.unraisablehook
        if installed and not _FAILED[0] and isinstance(hook, _IgnoreClosedLoop):
            sys.unraisablehook = hook.previous


def _ignore_closed_loop_from_now() -> None:
    """Once a step has failed to read or a save has failed, for the rest of the process:
    _IgnoreClosedLoop as sys.unraisablehook. The failed reads' or writes' late callbacks report
    at any moment up to the process's exit, long after the restore or save returned, so no
    narrower scope catches them; a process that never meets a failure never keeps the hook."""
    _FAILED[0] = True
    if not isinstance(sys.unraisablehook, _IgnoreClosedLoop):
        sys.unraisablehook = _IgnoreClosedLoop(sys.unraisablehook)


def _quiet_after_failed_save() -> None:
    """After a save failed, for the rest of the process, which is ending with that error: a
    save that fails before its writes start (a read-only workdir) leaves coroutines that Orbax
    created but never ran, held by its manager until the process exits, where each would print
    "coroutine ... was never awaited" (two lines) after resjax's error line; the same failure,
    set on futures of TensorStore's writes that nothing awaits any more, is logged by asyncio
    when they are collected at exit, with no Orbax frame to recognise it by. Both only ever
    follow a failure resjax has already reported, so only then are they silenced. (Python 3.12
    also reports the failed writes' callbacks on Orbax's closed event loop, as after a failed
    restore.)"""
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
    _ignore_closed_loop_from_now()  # its writes' late callbacks, as a failed restore's reads
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropUnretrieved) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DropUnretrieved())
