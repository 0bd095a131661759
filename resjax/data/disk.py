"""Batches of a dataset read from disk (JPEG bytes in array_record, ImageNet-style), made in
worker processes.

`TrainBatches(position)` and `EvalBatches(step)` are picklable, pure functions from a batch
number to this process's uint8 batch: read the examples, decode, crop (random-resized-crop and
flip for training, resize and center crop for evaluation), stack. `resjax.data.workers` runs
them in worker processes, where decoding scales with the cores; `pipeline` puts the result on
the devices. Normalisation is left to the device (or to `pipeline`, when asked).

An example that does not decode (a corrupt or truncated JPEG) stops with a `CorruptExampleError`
naming it, or, with `config.data.corrupt_images='skip'`, is skipped and counted: in training,
its slot takes the next example of the global batch that decodes (with the slot's own crop), so
that the batch keeps its size and stays the same for any number of processes; in evaluation it
is masked out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from resjax.data import augment
from resjax.data.errors import CorruptExampleError
from resjax.data.plan import AUGMENT, ERASE, BatchPlan
from resjax.data.sources import StreamSource

CORRUPT_IMAGES = ("error", "skip")
Map = Callable[[Callable[[int], Any], Iterable[int]], Iterable[Any]]


def check_corrupt_images(policy: str) -> str:
    """Returns `policy` if it is one resjax knows, else a ValueError listing what is allowed."""
    if policy not in CORRUPT_IMAGES:
        raise ValueError(
            f"config.data.corrupt_images must be one of {', '.join(CORRUPT_IMAGES)}; got {policy!r}"
        )
    return policy


def _describe(source: StreamSource, index: int, error: BaseException) -> str:
    reason = " ".join(str(error).split()) or type(error).__name__
    return (
        f"{source.describe(index)} does not decode as an image ({type(error).__name__}: {reason})"
    )


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """This process's share of training batch number `position`, uint8, from a split on disk.

    Calling it returns {'image': uint8 [B, S, S, 3], 'label': int32 [B], 'position': int64 [],
    'skipped': int64 [k]} where B = plan.local_batch_size and 'skipped' lists the examples
    (indices into the split) that did not decode and were replaced (corrupt_images='skip').

    Example j of the batch crops with the random numbers of its slot in the global batch
    (plan.rng(AUGMENT, position, slot)), so the global batch is the same for any number of
    processes and any number of worker processes.
    """

    source: StreamSource
    plan: BatchPlan
    size: int  # output side, pixels
    crop: bool  # random-resized crop (else the eval resize + center crop)
    flip: bool
    erase: float  # random-erasing probability
    corrupt_images: str = "error"

    def __call__(self, position: int, map_fn: Map = map) -> dict[str, np.ndarray]:
        g = self.plan.global_batch_size
        order = self.plan.global_indices(position)
        mine = self.plan.mine
        rows = self.source.read(order[mine])
        skipped: list[int] = []

        def one(j: int) -> tuple[np.ndarray, int]:
            slot = mine.start + j
            try:
                return self._crop(rows[j]["image"], position, slot), rows[j]["label"]
            except augment.UNDECODABLE as e:
                self._check_skip(int(order[slot]), e)
                skipped.append(int(order[slot]))
            # The slot takes the next example of the global batch that decodes, with the crop
            # of the slot: the same for any split of the global batch over processes.
            for k in range(1, g):
                other = int(order[(slot + k) % g])
                row = self.source.read([other])[0]
                try:
                    return self._crop(row["image"], position, slot), row["label"]
                except augment.UNDECODABLE:
                    continue
            raise CorruptExampleError(f"no example of training batch {position} decodes")

        images, labels = _stack(list(map_fn(one, range(len(rows)))), self.size)
        if self.erase:
            rng = self.plan.rng(ERASE, position)
            images = augment.random_erase(images, rng, g, mine, self.erase)
        return {
            "image": images,
            "label": labels,
            "position": np.int64(position),
            "skipped": np.array(sorted(skipped), np.int64),
        }

    def _crop(self, image, position: int, slot: int) -> np.ndarray:
        if not self.crop:
            return augment.eval_crop(image, self.size)
        rng = self.plan.rng(AUGMENT, position, slot)
        return augment.train_crop(image, rng, self.size, self.flip)

    def _check_skip(self, index: int, error: BaseException) -> None:
        if self.corrupt_images != "skip":
            raise CorruptExampleError(
                f"{_describe(self.source, index, error)}; set config.data.corrupt_images="
                "'skip' to skip such examples (they are counted in the iterator's state)"
            ) from error


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """This process's share of evaluation batch number `step`: every example once, in order.

    Calling it returns {'image': uint8 [B, S, S, 3], 'label': int32 [B], 'mask': float32 [B],
    'position': int64 [], 'skipped': int64 [k]}; the mask is 0.0 on the padding after the last
    example and on examples that did not decode (corrupt_images='skip', listed in 'skipped').
    """

    source: StreamSource
    size: int
    global_batch_size: int
    process_index: int
    process_count: int
    corrupt_images: str = "error"

    def __call__(self, step: int, map_fn: Map = map) -> dict[str, np.ndarray]:
        n = self.global_batch_size // self.process_count
        start = step * self.global_batch_size + self.process_index * n
        index = np.arange(start, start + n)
        mask = (index < len(self.source)).astype(np.float32)
        index = np.where(mask > 0, index, 0)  # padding rows repeat example 0, masked out
        rows = self.source.read(index)

        def one(j: int) -> np.ndarray | None:
            try:
                return augment.eval_crop(rows[j]["image"], self.size)
            except augment.UNDECODABLE as e:
                if self.corrupt_images != "skip":
                    raise CorruptExampleError(
                        f"{_describe(self.source, int(index[j]), e)}; set "
                        "config.data.corrupt_images='skip' to leave such examples out"
                    ) from e
                return None

        crops = list(map_fn(one, range(n)))
        bad = [j for j, c in enumerate(crops) if c is None]
        blank = np.zeros((self.size, self.size, 3), np.uint8)
        images, labels = _stack(
            [(blank if c is None else c, r["label"]) for c, r in zip(crops, rows, strict=True)],
            self.size,
        )
        mask[bad] = 0.0
        skipped = [start + j for j in bad if start + j < len(self.source)]
        return {
            "image": images,
            "label": labels,
            "mask": mask,
            "position": np.int64(step),
            "skipped": np.array(skipped, np.int64),
        }


def _stack(examples: list[tuple[np.ndarray, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """[(uint8 [S, S, 3], label), ...] -> (uint8 [B, S, S, 3], int32 [B]), in one allocation."""
    images = np.empty((len(examples), size, size, 3), np.uint8)
    for j, (image, _) in enumerate(examples):
        images[j] = image
    return images, np.array([int(label) for _, label in examples], np.int32)
