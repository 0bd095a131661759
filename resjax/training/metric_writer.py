"""Where a run's numbers go: metrics.jsonl, TensorBoard event files, and the console.

Only process 0 writes; on other processes every method is a no-op, so callers need no checks.
Every file is written from the calling thread and closed after each call: a full disk or a
read-only workdir raises MetricWriteError (one line) where the numbers were written, never a
traceback from a background thread or at exit.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import jax

from resjax.duration import hms
from resjax.workdir import METRICS, TENSORBOARD


class MetricWriteError(OSError):
    """metrics.jsonl or the TensorBoard event file could not be written (disk full, read-only)."""


class MetricWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors scalars to TensorBoard.

    TensorBoard files are written with tensorboardX's record format (no TensorFlow needed)
    under `workdir/tb`, one file per start or resume.
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._path = Path(workdir) / METRICS
        self._tb = None
        if self.active and tensorboard:
            self._tb = EventFile(Path(workdir) / TENSORBOARD)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Records `metrics` (scalars; non-finite values are written as null) at `step`."""
        if not self.active:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        scalars = {}
        for key, value in metrics.items():
            value = float(value) if not isinstance(value, str) else value
            row[key] = value if isinstance(value, str) or math.isfinite(value) else None
            if not isinstance(value, str):
                scalars[key] = value
        _append(self._path, (json.dumps(row) + "\n").encode())
        if self._tb is not None:
            self._tb.add_scalars(int(step), scalars)


class EventFile:
    """One TensorBoard event file, appended to synchronously (no writer thread, no open file
    between calls): tensorboardX's own writer queues events for a thread that, on a full disk,
    dies with a traceback and leaves the next write blocked on its full queue."""

    def __init__(self, logdir: Path):
        record_writer, summary, event_pb2 = _tensorboardx()

        self._crc, self._scalar, self._event = (
            record_writer.masked_crc32c,
            summary.scalar,
            event_pb2.Event,
        )
        self.path = logdir / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MetricWriteError(f"creating {logdir} failed ({_why(e)})") from None
        self._append([self._event(wall_time=time.time(), file_version="brain.Event:2")])

    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        self._append(
            [
                self._event(wall_time=now, step=step, summary=self._scalar(k, v))
                for k, v in values.items()
            ]
        )

    def _append(self, events: list[Any]) -> None:
        _append(self.path, b"".join(self._record(e.SerializeToString()) for e in events))

    def _record(self, data: bytes) -> bytes:
        """TFRecord framing: length, its masked CRC-32C, the data, its masked CRC-32C."""
        header = struct.pack("Q", len(data))
        return (
            header + struct.pack("I", self._crc(header)) + data + struct.pack("I", self._crc(data))
        )


def _append(path: Path, data: bytes) -> None:
    """Appends `data` whole or not at all: a row cut short by a full disk is cut off again,
    so that the rerun's next row does not land on its tail."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("ab") as f:
            f.write(data)
    except OSError as e:
        try:
            os.truncate(path, size)
        except OSError:
            pass  # read-only: nothing was written
        raise MetricWriteError(
            f"writing {path} failed ({_why(e)}); the checkpoints are kept: rerun the same "
            "command to resume once the workdir can be written"
        ) from None


def _why(e: OSError) -> str:
    return f"[Errno {e.errno}] {e.strerror}" if e.strerror else str(e)


class Progress:
    """A tqdm bar (step, img/s, loss, ETA) on a terminal; plain periodic lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = None
        self._total = total_steps
        self._start_time = time.perf_counter()
        self._start_step = start_step
        if self.enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def update(self, step: int, **fields: float) -> None:
        """Moves the bar to `step` (steps done) and shows `fields`."""
        if not self.enabled:
            return
        text = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
        )
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(text, refresh=True)
            return
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        eta = elapsed / done * (self._total - step) if done > 0 else float("nan")
        print(f"step {step}/{self._total}  {text}  eta {hms(eta)}", flush=True)

    def message(self, text: str) -> None:
        """A line that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _tensorboardx():
    """tensorboardX's record writer, summary builder and Event proto, imported on first use
    (only process 0 writes TensorBoard). tensorboardX's package imports PyTorch, when installed,
    only to accept torch tensors; resjax passes floats, and that import alone costs 1-2 s at
    every start. So, unless the program has imported torch already, `import torch` fails while
    tensorboardX loads (a None entry in sys.modules), and works again after."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import record_writer, summary
        from tensorboardX.proto import event_pb2
    finally:
        if block:
            del sys.modules["torch"]
    return record_writer, summary, event_pb2
