"""Batches for training and evaluation: deterministic, sharded per process, prefetched.

Every batch is a pure function of (seed, epoch, step) and the process's place among processes:
the epoch's permutation comes from (seed, epoch), augmentation from (seed, epoch, step), and the
global batch is the same whatever the number of processes (each takes its contiguous slice).
So the iterator's state is one integer, and a resumed run sees exactly the batches it would have.

Not grain, which does this in general: what it would replace here is one prefetch thread and
the index arithmetic below, while the augmentation must stay vectorised over the whole batch in
numpy either way (~50k images/s on 2 cores against ~5k per example, measured here), and its
multiprocess prefetch reads absl flags and fails outside `absl.app.run` (google/grain#1355).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resjax.data import augment
from resjax.data.sources import ArraySource, Source, Splits, StreamSource

Batch = dict[str, Any]
BATCH_AXIS = "data"  # mesh axis the batch is split along
# Streams of np.random.SeedSequence([seed, STREAM, ...]), so shuffling and augmentation never
# draw the same numbers.
_SHUFFLE, _AUGMENT, _ERASE = 0, 1, 2


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}); got {index}")
    return index, count


def _local_batch_size(
    global_batch_size: int, process_count: int, mesh: Mesh | None, what: str
) -> int:
    """global / process count, after checking that processes and devices divide the batch."""
    if global_batch_size <= 0:
        raise ValueError(f"{what} must be positive; got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(
            f"{what} {global_batch_size} must be a multiple of the process count {process_count}"
        )
    if mesh is not None:
        if BATCH_AXIS not in mesh.shape:
            raise ValueError(f"mesh must have a {BATCH_AXIS!r} axis; its axes: {tuple(mesh.shape)}")
        devices = mesh.shape[BATCH_AXIS]
        if global_batch_size % devices:
            raise ValueError(
                f"{what} {global_batch_size} must be a multiple of the {devices} devices along "
                f"the mesh's {BATCH_AXIS!r} axis (e.g. {devices * max(1, global_batch_size // devices)})"
            )
    return global_batch_size // process_count


def _to_global(batch: Batch, mesh: Mesh | None, global_batch_size: int) -> Batch:
    """This process's numpy slice -> global jax.Arrays sharded along the batch axis of `mesh`."""
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
        for k, v in batch.items()
    }


class _ConsumerGone(Exception):
    """The iterator that owned a prefetch thread was garbage-collected."""


def _weak(method: Callable[[int], Batch]) -> Callable[[int], Batch]:
    """`method` without a strong reference to its object, so that an iterator dropped without
    `close()` is still collected (and its thread stopped by `__del__`)."""
    ref = weakref.WeakMethod(method)

    def call(position: int) -> Batch:
        bound = ref()
        if bound is None:
            raise _ConsumerGone
        return bound(position)

    return call


class _Prefetcher:
    """Computes make(position) for position = start, start + 1, ... (< stop) in a daemon thread,
    up to `depth` ahead of the consumer, so the device never waits on the host."""

    def __init__(self, make: Callable[[int], Batch], start: int, stop: int | None, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(make, start, stop), daemon=True, name="resjax-prefetch"
        )
        self._thread.start()

    def _run(self, make: Callable[[int], Batch], start: int, stop: int | None) -> None:
        position = start
        while not self._stop.is_set() and (stop is None or position < stop):
            try:
                item = (position, make(position), None)
            except _ConsumerGone:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                item = (position, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            position += 1

    def get(self) -> tuple[int, Batch]:
        """The next (position, batch); re-raises an error of the producer."""
        while True:
            try:
                position, batch, error = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("resjax data prefetch thread stopped") from None
        if error is not None:
            raise error
        return position, batch

    def close(self) -> None:
        """Stops the thread and drops what it prepared."""
        self._stop.set()
        if threading.current_thread() is not self._thread:  # __del__ may run on the thread
            self._thread.join(timeout=10)


class TrainIterator:
    """Endless training batches: shuffled per epoch, augmented, normalised, sharded per process.

    Each epoch is `steps_per_epoch` = len(train) // global_batch_size batches (the remainder of
    the permutation is dropped). With `mesh`, a batch is {'image': float32 [B, H, W, C],
    'label': int32 [B]} of global jax.Arrays sharded NamedSharding(mesh, P('data')); with
    mesh=None, this process's numpy slice of it (B / process_count rows).

    Augmentation (`config.data.augment`): for splits in RAM, 'pad_crop_flip' / 'pad_crop' pad
    by `pad_px` zeros, crop back at random and (first mode) flip, vectorised per batch; for
    splits read from disk, the same modes mean random-resized-crop (+ flip), and 'none' means
    the eval resize + center crop. `random_erase` > 0 then erases a random box of each image
    with that probability (Zhong et al. 2017), in either case.

    Args:
      splits: from `load_splits`; augmentation depends on whether it is held in RAM.
      global_batch_size: over all processes and devices.
      seed: `config.seed`; shuffling and augmentation derive from it.
      data_config: `config.data` (augment, pad_px, random_erase, prefetch_batches); None:
        defaults.
      mesh: for global arrays; None for host-local numpy batches (pmap, benchmarks).
      process_index, process_count: override jax's (to test multi-process sharding in one).
    """

    def __init__(
        self,
        splits: Splits,
        global_batch_size: int,
        seed: int,
        data_config: ml_collections.ConfigDict | None = None,
        mesh: Mesh | None = None,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self._prefetcher: _Prefetcher | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        data_config = data_config if data_config is not None else ml_collections.ConfigDict()
        self._splits = splits
        self._source = splits.train
        self._global_batch_size = global_batch_size
        self._seed = int(seed)
        self._mesh = mesh
        self._process_index, process_count = _processes(process_index, process_count)
        self._local_batch_size = _local_batch_size(
            global_batch_size, process_count, mesh, "global_batch_size"
        )
        self.steps_per_epoch = len(self._source) // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"global_batch_size {global_batch_size} exceeds the {len(self._source)} "
                f"training examples of {splits.name}"
            )
        mode = augment.check_augment(data_config.get("augment", "pad_crop_flip"))
        self._flip = mode == "pad_crop_flip"
        self._pad_px = int(data_config.get("pad_px", 4)) if mode != "none" else 0
        self._crop = mode != "none"
        self._erase = float(data_config.get("random_erase", 0.0))
        if not 0.0 <= self._erase <= 1.0:
            raise ValueError(f"config.data.random_erase must be in [0, 1]; got {self._erase}")
        self._prefetch = int(data_config.get("prefetch_batches", 2))
        if self._prefetch < 0:
            raise ValueError(f"config.data.prefetch_batches must be >= 0; got {self._prefetch}")
        self._mean = splits.mean if splits.normalize else None
        self._std = splits.std if splits.normalize else None
        self._permutation_cache: tuple[int, np.ndarray] | None = None
        self._consumed = 0

    # --- state ---

    def get_state(self) -> dict[str, int]:
        """The consumer's position: batches returned by `next` so far (prefetched ones excluded)."""
        return {"batches_consumed": self._consumed}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a `get_state()`: the next batch is the one that followed it."""
        consumed = int(state["batches_consumed"])
        if consumed < 0:
            raise ValueError(f"batches_consumed must be >= 0; got {consumed}")
        self.close()
        self._consumed = consumed

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._consumed // self.steps_per_epoch

    # --- iteration ---

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._prefetch == 0:
            batch = self._make(self._consumed)
        else:
            if self._prefetcher is None:
                self._prefetcher = _Prefetcher(
                    _weak(self._make), self._consumed, None, self._prefetch
                )
            position, batch = self._prefetcher.get()
            assert position == self._consumed, (position, self._consumed)
        self._consumed += 1
        return batch

    def close(self) -> None:
        """Stops prefetching (the iterator can still be used; it restarts where it stands)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __del__(self):
        self.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._permutation_cache is None or self._permutation_cache[0] != epoch:
            rng = np.random.default_rng([self._seed, _SHUFFLE, epoch])
            self._permutation_cache = (epoch, rng.permutation(len(self._source)))
        return self._permutation_cache[1]

    def host_batch(self, position: int) -> Batch:
        """This process's numpy slice of batch number `position` (pure: no state changes)."""
        epoch, step = divmod(position, self.steps_per_epoch)
        g, n = self._global_batch_size, self._local_batch_size
        mine = slice(self._process_index * n, (self._process_index + 1) * n)
        index = self._permutation(epoch)[step * g : (step + 1) * g][mine]
        if isinstance(self._source, ArraySource):
            # Drawn for the whole global batch, then sliced: the same global batch for any
            # number of processes.
            rng = np.random.default_rng([self._seed, _AUGMENT, epoch, step])
            dy, dx, flip = augment.draw_crop_flip(rng, g, self._pad_px, self._flip)
            images = augment.gather_pad_crop_flip(
                self._source.images, index, dy[mine], dx[mine], flip[mine], self._pad_px
            )
            labels = self._source.labels[index]
        else:
            images, labels = self._stream_batch(index, epoch, step, mine.start)
        if self._erase:
            images = self._random_erase(images, epoch, step, mine)
        return {"image": augment.normalize(images, self._mean, self._std), "label": labels}

    def _random_erase(self, images: np.ndarray, epoch: int, step: int, mine: slice) -> np.ndarray:
        # Boxes and noise are drawn for the whole global batch and sliced, as the crops: the
        # same global batch for any number of processes.
        _, height, width, channels = images.shape
        g = self._global_batch_size
        rng = np.random.default_rng([self._seed, _ERASE, epoch, step])
        boxes = augment.draw_erase_boxes(rng, g, height, width, self._erase)
        noise = rng.integers(0, 256, (g, height, width, channels), dtype=np.uint8)[mine]
        return augment.erase(images, *(b[mine] for b in boxes), noise)

    def _stream_batch(self, index: np.ndarray, epoch: int, step: int, offset: int):
        rows = self._source.read(index)
        size = self._splits.image_shape[0]

        def one(j: int) -> np.ndarray:
            rng = np.random.default_rng([self._seed, _AUGMENT, epoch, step, offset + j])
            if not self._crop:
                return augment.eval_crop(rows[j]["image"], size)
            return augment.train_crop(rows[j]["image"], rng, size, self._flip)

        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)
        images = np.stack(list(self._pool.map(one, range(len(rows)))))
        return images, np.array([r["label"] for r in rows], np.int32)

    def _make(self, position: int) -> Batch:
        return _to_global(self.host_batch(position), self._mesh, self._global_batch_size)


def eval_batches(
    source: Source,
    splits: Splits,
    global_batch_size: int,
    mesh: Mesh | None = None,
    *,
    prefetch_batches: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """Every example of `source` exactly once, in order: {'image', 'label', 'mask'}.

    The last batch is padded (mask 0.0 on padding, 1.0 on real examples) so that every batch
    has `global_batch_size` rows and every process runs ceil(len(source) / global_batch_size)
    steps. Images are normalised as in training, not augmented (datasets read from disk: resize
    and center crop).
    """
    process_index, process_count = _processes(process_index, process_count)
    n_local = _local_batch_size(global_batch_size, process_count, mesh, "global_batch_size")
    steps = math.ceil(len(source) / global_batch_size)
    mean = splits.mean if splits.normalize else None
    std = splits.std if splits.normalize else None
    pool = None
    if isinstance(source, StreamSource):
        pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)

    def make(step: int) -> Batch:
        start = step * global_batch_size + process_index * n_local
        index = np.arange(start, start + n_local)
        real = index < len(source)
        index = np.where(real, index, 0)  # padding rows repeat example 0, masked out
        if isinstance(source, ArraySource):
            images, labels = source.images[index], source.labels[index]
        else:
            rows = source.read(index)
            size = splits.image_shape[0]
            images = np.stack(list(pool.map(lambda r: augment.eval_crop(r["image"], size), rows)))
            labels = np.array([r["label"] for r in rows], np.int32)
        batch = {
            "image": augment.normalize(images, mean, std),
            "label": labels.astype(np.int32),
            "mask": real.astype(np.float32),
        }
        return _to_global(batch, mesh, global_batch_size)

    prefetcher = _Prefetcher(make, 0, steps, prefetch_batches) if prefetch_batches > 0 else None
    try:
        for step in range(steps):
            yield make(step) if prefetcher is None else prefetcher.get()[1]
    finally:
        if prefetcher is not None:
            prefetcher.close()
        if pool is not None:
            pool.shutdown(wait=False)
