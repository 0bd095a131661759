"""A fault at a named moment of a training run, injected from outside resjax.

    SPEC = MOMENT[@STEP]:ACTION

MOMENT: start (before the first step: after the restore), compile (inside JAX's compilation of
the first train step, between lowering and XLA), step (after a train step: step@TOTAL is the
last one), eval and final_eval (as an evaluation starts), before_save, during_save (Orbax's
asynchronous write under way), after_save (on disk), and the same three of final_save. @STEP:
the first time at or after that step (default: the first time). ACTION: SIGTERM or SIGINT (the
process signals itself, as a scheduler would), or pause=PATH (creates PATH and waits until it
is deleted, so that a test can fill the disk or make it read-only at that moment). It fires once.

In the test's own process, `inject(SPEC, monkeypatch)` wraps the functions the loop calls at
those moments (resjax is not told); in a process of its own, the same wrapping, then
`python -m resjax.train`:

    python tests/faults.py SPEC -- --config=... --workdir=...
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np

MOMENTS = (
    "start compile step eval final_eval before_save during_save after_save before_final_save "
    "during_final_save after_final_save"
).split()


class Fault:
    """One SPEC: where, from which step, what; `fire` does it once."""

    def __init__(self, spec: str):
        where, _, self.action = spec.partition(":")
        self.moment, _, step = where.partition("@")
        self.step = int(step or 0)
        if self.moment not in MOMENTS:
            raise ValueError(f"fault moment must be one of {MOMENTS}; got {self.moment!r}")
        if self.action not in ("SIGTERM", "SIGINT") and not self.action.startswith("pause="):
            raise ValueError(f"fault action must be SIGTERM, SIGINT or pause=PATH; got {spec!r}")
        self.fired = False

    def wants(self, moment: str, step: int) -> bool:
        return not self.fired and moment == self.moment and step >= self.step

    def at(self, moment: str, step: int) -> None:
        if self.wants(moment, step):
            self.fire()

    def fire(self) -> None:
        self.fired = True
        if self.action.startswith("pause="):
            marker = Path(self.action.removeprefix("pause="))
            marker.touch()
            deadline = time.monotonic() + 300
            while marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            signal.raise_signal(getattr(signal, self.action))


def _step_of(state) -> int:
    return int(np.ravel(jax.device_get(state.step))[0])  # pmap: one copy per device


def inject(spec: str, setattr_) -> Fault:
    """Wraps the loop's seams so that `spec`'s fault happens; `setattr_(obj, name, value)` is
    pytest's `monkeypatch.setattr` (undone after the test) or the builtin `setattr`."""
    from resjax import checkpoint
    from resjax.training import loop, parallel

    fault = Fault(spec)
    finishing = [False]  # the final evaluation has begun: the next save is the final one

    restore = checkpoint.Checkpointer.restore

    def restore_then_start(self, *args, **kwargs):
        restored = restore(self, *args, **kwargs)
        fault.at("start", 0 if restored is None else restored.step)
        return restored

    compile_train_step = parallel.compile_train_step

    def compile_with_fault(*args, **kwargs):
        train_step = compile_train_step(*args, **kwargs)
        run, calls = train_step.run, [0]

        def run_with_fault(state, batch, metrics):
            calls[0] += 1
            if calls[0] == 1 and fault.moment == "compile":
                _fire_inside_the_next_lowering(fault)
            state, metrics = run(state, batch, metrics)
            if fault.moment == "step":
                fault.at("step", _step_of(state))
            return state, metrics

        return dataclasses.replace(train_step, run=run_with_fault)

    evaluate_splits = loop.evaluate_splits

    def evaluate_with_fault(eval_step, state, *args, final=False, **kwargs):
        finishing[0] = finishing[0] or final
        fault.at("final_eval" if final else "eval", _step_of(state))
        return evaluate_splits(eval_step, state, *args, final=final, **kwargs)

    save = checkpoint.Checkpointer.save

    def save_with_fault(self, state, meta, val_error, *, wait=False):
        kind = "final_save" if finishing[0] else "save"
        step = _step_of(state)
        fault.at(f"before_{kind}", step)
        save(self, state, meta, val_error, wait=False)  # the write under way ...
        fault.at(f"during_{kind}", step)
        if wait or fault.wants(f"after_{kind}", step):  # ... and on disk
            self.wait()
        fault.at(f"after_{kind}", step)

    setattr_(checkpoint.Checkpointer, "restore", restore_then_start)
    setattr_(parallel, "compile_train_step", compile_with_fault)
    setattr_(loop, "evaluate_splits", evaluate_with_fault)
    setattr_(checkpoint.Checkpointer, "save", save_with_fault)
    return fault


def _fire_inside_the_next_lowering(fault: Fault) -> None:
    """Fires from JAX's monitoring event for the next lowering (the first train step's), so
    the signal lands while XLA compiles."""

    def on_event(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and not fault.fired:
            fault.fire()

    jax.monitoring.register_event_duration_secs_listener(on_event)


def command(spec: str, train_args: list[str]) -> list[str]:
    """`python tests/faults.py SPEC -- ARGS`: `python -m resjax.train ARGS` with the fault."""
    return [sys.executable, str(Path(__file__).resolve()), spec, "--", *map(str, train_args)]


if __name__ == "__main__":
    spec, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: python tests/faults.py SPEC -- ARGS OF resjax.train"
    inject(spec, setattr)
    from absl import app

    from resjax import cli, train

    sys.argv = ["resjax.train", *train_args]
    train.define_flags()
    app.run(train.main, flags_parser=cli.absl_flags_parser)
