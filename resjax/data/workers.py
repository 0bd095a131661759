"""Batches made in worker processes and handed out in order, with grain.

`OrderedWorkers(make, start, stop, workers)` calls the picklable, pure `make(position)` for
position = start, start + 1, ... in `workers` processes (`grain.MapDataset.range(...).map(make)`
then `mp_prefetch`): worker i makes positions start + i, start + i + workers, ..., each keeping
one finished batch in shared memory while it makes the next, and `next()` returns them in
order. Decoding JPEGs is ~70% of the per-image cost of an ImageNet-style input, and in worker
processes it scales with the cores; the main process only maps the finished uint8 batches.

Finished batches pass through shared memory (/dev/shm): with W workers, up to ~2W batches are
there at once (ImageNet at batch 256: 38.5 MB each), more than a container's default 64 MB.

Workers are spawned, not forked (grain's choice, and the safe one once JAX has started threads),
so each imports resjax afresh (a few seconds), and a script that trains must guard its entry
point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import grain
from absl import flags

from resjax.data.errors import DataWorkerError

_ENDLESS = 1 << 62  # training has no last batch; grain's range needs a stop


def cpu_count() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _let_grain_read_its_flags() -> None:
    # grain's multiprocess prefetch reads its absl flags, which raise UnparsedFlagAccessError
    # outside `absl.app.run` (google/grain#1355): outside it, they keep their defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class OrderedWorkers:
    """make(start), make(start + 1), ... (< stop; None: endless), made by `workers` processes.

    Args:
      make: picklable; called in the workers with a position; returns a pytree of numpy arrays.
      start, stop: the positions.
      workers: number of processes (>= 1).
      what: what a batch is, for error messages ('training', 'evaluation').
    """

    def __init__(
        self,
        make: Callable[[int], Any],
        start: int,
        stop: int | None,
        workers: int,
        what: str,
    ):
        if workers < 1:
            raise ValueError(f"OrderedWorkers needs >= 1 worker process; got {workers}")
        _let_grain_read_its_flags()
        dataset = (
            grain.MapDataset.range(start, _ENDLESS if stop is None else stop)
            .map(make)
            # Each worker makes one batch at a time: no read-ahead threads or buffers inside it
            # (grain's defaults, 16 threads and 500 elements, would hold 500 batches).
            .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            .mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=1)
            )
        )
        self._iterator = iter(dataset)
        self._position = start
        self._what = what

    def next(self) -> Any:
        """The next position's batch; a worker's exception is raised here, a dead worker is a
        DataWorkerError; StopIteration after `stop`."""
        try:
            batch = next(self._iterator)
        except RuntimeError as e:
            # grain notices a worker that exited without a result and says so in a
            # RuntimeError; anything else a worker raises arrives with its own type.
            if "terminated unexpectedly" not in str(e):
                raise
            code = re.search(r"exit code (-?\d+)", str(e))
            raise DataWorkerError(
                f"a worker process making {self._what} batches died (exit code "
                f"{code.group(1) if code else 'unknown'}) before batch {self._position}; -9 is "
                "SIGKILL, often the out-of-memory killer, -7 SIGBUS, often a full /dev/shm (a "
                "container's --shm-size): lower config.data.workers or the batch size"
            ) from e
        self._position += 1
        return batch

    def close(self) -> None:
        """Stops the workers and frees their shared memory."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
