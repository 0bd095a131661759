"""Preemption: SIGTERM/SIGINT become a request to checkpoint and stop at the next step.

    with PreemptionWatch() as watch:
        for step in ...:
            ...
            if watch.requested(step):
                save(); raise Preempted(...)

`Preempted` is an ordinary exception: a library caller catches it like any other, and the
commands turn it into exit status 0, so that a scheduler requeues the job and the rerun resumes.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was saved (or there was nothing new to save) and the
    run stopped. The message says which signal, which step and how to resume."""

    @property
    def message(self) -> str:
        return str(self)


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
        self.multiprocess = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self.multiprocess else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the final save
        self._signal = signal.Signals(signum).name
        self._requested.set()
        if self.multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service (its handler)

    def requested(self, step: int) -> bool:
        """True when the run should checkpoint at `step` and stop (same answer on all processes).
        Every process must ask at every step, in order."""
        if self.multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()

    @property
    def arrived_here(self) -> bool:
        """Whether this process got a signal (no collective: for messages, not for stopping)."""
        return self._requested.is_set()

    @property
    def signal_name(self) -> str:
        return self._signal or "preemption notice"

    def close(self) -> None:
        """Gives the signals back to the handlers they had before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __enter__(self) -> PreemptionWatch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
