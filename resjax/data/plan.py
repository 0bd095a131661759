"""Which examples, and which random numbers, training batch number `position` is made of.

Every batch is a pure function of (seed, epoch, step) and the process's place among processes:
the epoch's permutation comes from (seed, epoch), augmentation from (seed, stream, epoch, step),
and the global batch is the same whatever the number of processes (each takes its contiguous
slice). So an iterator's state is one integer, a resumed run sees exactly the batches it would
have, and a worker process can make any batch knowing only the plan and the position.

Imports numpy only: worker processes unpickle a plan.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# Streams of np.random.SeedSequence([seed, STREAM, ...]), so shuffling and augmentation never
# draw the same numbers.
SHUFFLE, AUGMENT, ERASE = 0, 1, 2


@functools.lru_cache(maxsize=2)  # the current epoch and the next (prefetching crosses over)
def _permutation(seed: int, epoch: int, examples: int) -> np.ndarray:
    return np.random.default_rng([seed, SHUFFLE, epoch]).permutation(examples)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The order of a training split's examples over epochs, and this process's share.

    Each epoch is `steps_per_epoch` = examples // global_batch_size batches; the remainder of
    the epoch's permutation is dropped.
    """

    examples: int
    global_batch_size: int
    process_index: int
    process_count: int
    seed: int

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return self.examples // self.global_batch_size

    @property
    def mine(self) -> slice:
        """This process's rows of a global batch."""
        n = self.local_batch_size
        return slice(self.process_index * n, (self.process_index + 1) * n)

    def epoch_step(self, position: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of batch number `position`."""
        return divmod(position, self.steps_per_epoch)

    def global_indices(self, position: int) -> np.ndarray:
        """Example indices of the whole global batch `position` (all processes), int [G]."""
        epoch, step = self.epoch_step(position)
        g = self.global_batch_size
        return _permutation(self.seed, epoch, self.examples)[step * g : (step + 1) * g]

    def rng(self, stream: int, position: int, *more: int) -> np.random.Generator:
        """The random numbers of `stream` for batch `position` (and e.g. a slot in it)."""
        epoch, step = self.epoch_step(position)
        return np.random.default_rng([self.seed, stream, epoch, step, *more])
