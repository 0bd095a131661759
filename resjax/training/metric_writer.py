"""Where a run's numbers go: metrics.jsonl, TensorBoard event files, and the console.

Only process 0 writes; on other processes every method is a no-op, so callers need no checks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax


class MetricWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors scalars to TensorBoard.

    TensorBoard files are written by tensorboardX (no TensorFlow needed) under `workdir/tb`.
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: heavy, and only process 0

            self._tb = SummaryWriter(str(Path(workdir) / "tb"), flush_secs=30)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Records `metrics` (scalars; non-finite values are written as null) at `step`."""
        if not self.active:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        for key, value in metrics.items():
            value = float(value) if not isinstance(value, str) else value
            row[key] = value if isinstance(value, str) or math.isfinite(value) else None
            if self._tb is not None and not isinstance(value, str):
                self._tb.add_scalar(key, value, step)
        with self._path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
        print(f"step {step}/{self._total}  {text}  eta {_duration(eta)}", flush=True)

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


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
