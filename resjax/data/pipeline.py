"""Batches for training and evaluation: deterministic, sharded per process, prefetched.

Every batch is a pure function of (seed, epoch, step) and the process's place among processes
(`plan.BatchPlan`): the epoch's permutation comes from (seed, epoch), augmentation from (seed,
epoch, step), and the global batch is the same whatever the number of processes (each takes its
contiguous slice). So the iterator's state is one integer, and a resumed run sees exactly the
batches it would have.

Where the work happens:
- a split held in RAM is gathered, padded, cropped and flipped vectorised over the batch in
  numpy, in the prefetch thread (~50k images/s on 2 cores; per example it would be ~5k);
- a split read from disk (JPEGs) is decoded and cropped per example in `config.data.workers`
  worker processes (`disk`, `workers`: grain), where it scales with the cores;
- images stay uint8 on the host when the consumer normalises them on the device
  (`normalize_on_host=False`, as the training loop does, with `Splits.normalize_images` as the
  step's first op): a quarter of float32's bytes to move and no float pass on the host;
- a prefetch thread puts `config.data.prefetch_batches` batches on the devices ahead of use,
  overlapping the transfer with the step.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resjax.data import augment, disk
from resjax.data.plan import AUGMENT, ERASE, BatchPlan
from resjax.data.sources import Source, Splits, StreamSource
from resjax.data.workers import OrderedWorkers, cpu_count

Batch = dict[str, Any]
BATCH_AXIS = "data"  # mesh axis the batch is split along


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


def _weak(method: Callable[[int], Any]) -> Callable[[int], Any]:
    """`method` without a strong reference to its object, so that an iterator dropped without
    `close()` is still collected (and its thread stopped by `__del__`)."""
    ref = weakref.WeakMethod(method)

    def call(position: int) -> Any:
        bound = ref()
        if bound is None:
            raise _ConsumerGone
        return bound(position)

    return call


class _Prefetcher:
    """Computes make(position) for position = start, start + 1, ... (< stop) in a daemon thread,
    up to `depth` ahead of the consumer, so the device never waits on the host."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int | None, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(make, start, stop), daemon=True, name="resjax-prefetch"
        )
        self._thread.start()

    def _run(self, make: Callable[[int], Any], start: int, stop: int | None) -> None:
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

    def get(self) -> tuple[int, Any]:
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


def workers_of(data_config: ml_collections.ConfigDict | None) -> int:
    """`config.data.workers`: processes decoding a dataset read from disk; None: one per CPU
    this process may use; 0: threads of this process instead."""
    workers = None if data_config is None else data_config.get("workers")
    workers = cpu_count() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(
            f"config.data.workers must be >= 0 (0: threads, no processes); got {workers}"
        )
    return workers


class _FromDisk:
    """Batches of a `disk.TrainBatches` / `disk.EvalBatches` maker: in order from worker
    processes (started at the first position asked for), or with workers=0 from threads here."""

    def __init__(self, make, workers: int, stop: int | None, what: str):
        self.make = make
        self._count = workers
        self._stop = stop
        self._what = what
        self._workers: OrderedWorkers | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def inline(self, position: int) -> tuple[Batch, np.ndarray]:
        """Batch `position`, made by threads of this process: (batch, examples skipped)."""
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(cpu_count())
        return self._split(self.make(position, self._threads.map), position)

    def next(self, position: int) -> tuple[Batch, np.ndarray]:
        """Batch `position`, the one after the previous call's (the first call starts anywhere)."""
        if self._count == 0:
            return self.inline(position)
        if self._workers is None:
            self._workers = OrderedWorkers(self.make, position, self._stop, self._count, self._what)
        return self._split(self._workers.next(), position)

    def _split(self, out: dict[str, Any], position: int) -> tuple[Batch, np.ndarray]:
        made = int(out.pop("position"))
        if made != position:  # the workers' order is the iterator's: this is a bug if it fires
            raise RuntimeError(f"{self._what} batch {made} arrived where {position} was due")
        skipped = out.pop("skipped")
        if len(skipped):
            logging.warning(
                "%s batch %d: skipped %d example(s) whose image does not decode: %s",
                self._what,
                position,
                len(skipped),
                ", ".join(self.make.source.describe(int(i)) for i in skipped),
            )
        return out, skipped

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None


class TrainIterator:
    """Endless training batches: shuffled per epoch, augmented, sharded per process.

    Each epoch is `steps_per_epoch` = len(train) // global_batch_size batches (the remainder of
    the permutation is dropped). A batch is {'image': [B, H, W, C], 'label': int32 [B]}: uint8
    images for a step that normalises them (`normalize_on_host=False`; `splits.normalize_images`
    inside the jitted step), else float32 normalised here. With `mesh`, global jax.Arrays
    sharded NamedSharding(mesh, P('data')); with mesh=None, this process's numpy slice of the
    global batch (B / process_count rows).

    Augmentation (`config.data.augment`): for splits in RAM, 'pad_crop_flip' / 'pad_crop' pad
    by `pad_px` zeros, crop back at random and (first mode) flip, vectorised per batch; for
    splits read from disk, the same modes mean random-resized-crop (+ flip), and 'none' means
    the eval resize + center crop, per example in `config.data.workers` processes.
    `random_erase` > 0 then erases a random box of each image with that probability (Zhong et
    al. 2017), in either case.

    Args:
      splits: from `load_splits`; augmentation depends on whether it is held in RAM.
      global_batch_size: over all processes and devices.
      seed: `config.seed`; shuffling and augmentation derive from it.
      data_config: `config.data` (augment, pad_px, random_erase, prefetch_batches, workers,
        corrupt_images); None: defaults.
      mesh: for global arrays; None for host-local numpy batches (pmap, benchmarks).
      process_index, process_count: override jax's (to test multi-process sharding in one).
      normalize_on_host: float32 normalised images (True) or uint8 ones (False) for a step
        that normalises on the device.
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
        normalize_on_host: bool = True,
    ):
        self._prefetcher: _Prefetcher | None = None
        self._disk: _FromDisk | None = None
        data_config = data_config if data_config is not None else ml_collections.ConfigDict()
        self._splits = splits
        self._source = splits.train
        self._global_batch_size = global_batch_size
        self._mesh = mesh
        process_index, process_count = _processes(process_index, process_count)
        _local_batch_size(global_batch_size, process_count, mesh, "global_batch_size")
        self._plan = BatchPlan(
            len(self._source), global_batch_size, process_index, process_count, int(seed)
        )
        self.steps_per_epoch = self._plan.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"global_batch_size {global_batch_size} exceeds the {len(self._source)} "
                f"training examples of {splits.name}"
            )
        mode = augment.check_augment(data_config.get("augment", "pad_crop_flip"))
        self._flip = mode == "pad_crop_flip"
        self._pad_px = int(data_config.get("pad_px", 4)) if mode != "none" else 0
        self._erase = float(data_config.get("random_erase", 0.0))
        if not 0.0 <= self._erase <= 1.0:
            raise ValueError(f"config.data.random_erase must be in [0, 1]; got {self._erase}")
        self._prefetch = int(data_config.get("prefetch_batches", 2))
        if self._prefetch < 0:
            raise ValueError(f"config.data.prefetch_batches must be >= 0; got {self._prefetch}")
        self._normalize_on_host = normalize_on_host
        corrupt = disk.check_corrupt_images(data_config.get("corrupt_images", "error"))
        self._count_skipped = corrupt == "skip"
        if isinstance(self._source, StreamSource):
            make = disk.TrainBatches(
                self._source,
                self._plan,
                size=splits.image_shape[0],
                crop=mode != "none",
                flip=self._flip,
                erase=self._erase,
                corrupt_images=corrupt,
            )
            self._disk = _FromDisk(make, workers_of(data_config), None, "training")
        self._consumed = 0
        self._skipped = 0

    # --- state ---

    def get_state(self) -> dict[str, int]:
        """The consumer's position: batches returned by `next` so far (prefetched ones excluded);
        with corrupt_images='skip', also the examples skipped in them."""
        state = {"batches_consumed": self._consumed}
        if self._count_skipped:
            state["examples_skipped"] = self._skipped
        return state

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a `get_state()`: the next batch is the one that followed it."""
        consumed = int(state["batches_consumed"])
        if consumed < 0:
            raise ValueError(f"batches_consumed must be >= 0; got {consumed}")
        self.close()
        self._consumed = consumed
        self._skipped = int(state.get("examples_skipped", 0))

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._consumed // self.steps_per_epoch

    # --- iteration ---

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._prefetch == 0:
            batch, skipped = self._make(self._consumed)
        else:
            if self._prefetcher is None:
                self._prefetcher = _Prefetcher(
                    _weak(self._make), self._consumed, None, self._prefetch
                )
            position, (batch, skipped) = self._prefetcher.get()
            assert position == self._consumed, (position, self._consumed)
        self._consumed += 1
        self._skipped += skipped
        return batch

    def close(self) -> None:
        """Stops prefetching and the worker processes (the iterator can still be used; it
        restarts where it stands)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        if self._disk is not None:
            self._disk.close()

    def __del__(self):
        self.close()

    def host_batch(self, position: int) -> Batch:
        """This process's numpy slice of batch number `position` (pure: no state changes; a
        split on disk is decoded by threads of this process)."""
        if self._disk is not None:
            return self._finish(self._disk.inline(position)[0])
        plan, g = self._plan, self._global_batch_size
        index = plan.global_indices(position)[plan.mine]
        # Drawn for the whole global batch, then sliced: the same global batch for any
        # number of processes.
        rng = plan.rng(AUGMENT, position)
        dy, dx, flip = augment.draw_crop_flip(rng, g, self._pad_px, self._flip)
        mine = plan.mine
        images = augment.gather_pad_crop_flip(
            self._source.images, index, dy[mine], dx[mine], flip[mine], self._pad_px
        )
        if self._erase:
            images = augment.random_erase(images, plan.rng(ERASE, position), g, mine, self._erase)
        return self._finish({"image": images, "label": self._source.labels[index]})

    def _finish(self, batch: Batch) -> Batch:
        if self._normalize_on_host:
            batch["image"] = self._splits.normalize_images(batch["image"])
        return batch

    def _make(self, position: int) -> tuple[Batch, int]:
        """(batch `position` on the mesh, examples skipped in it); positions in order."""
        if self._disk is None:
            batch, skipped = self.host_batch(position), 0
        else:
            batch, skipped_examples = self._disk.next(position)
            batch, skipped = self._finish(batch), len(skipped_examples)
        return _to_global(batch, self._mesh, self._global_batch_size), skipped


def eval_batches(
    source: Source,
    splits: Splits,
    global_batch_size: int,
    mesh: Mesh | None = None,
    *,
    prefetch_batches: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    data_config: ml_collections.ConfigDict | None = None,
    normalize_on_host: bool = True,
) -> Iterator[Batch]:
    """Every example of `source` exactly once, in order: {'image', 'label', 'mask'}.

    The last batch is padded (mask 0.0 on padding, 1.0 on real examples) so that every batch
    has `global_batch_size` rows and every process runs ceil(len(source) / global_batch_size)
    steps. Images are not augmented (datasets read from disk: resize and center crop, in
    `config.data.workers` processes, no more than there are batches) and come as uint8 or, with
    `normalize_on_host`, normalised float32 as in training. An example of a dataset on disk that
    does not decode is an error or, with `config.data.corrupt_images='skip'`, masked out.
    """
    process_index, process_count = _processes(process_index, process_count)
    _local_batch_size(global_batch_size, process_count, mesh, "global_batch_size")
    steps = math.ceil(len(source) / global_batch_size)
    from_disk = None
    if isinstance(source, StreamSource):
        corrupt = disk.check_corrupt_images(
            "error" if data_config is None else data_config.get("corrupt_images", "error")
        )
        make = disk.EvalBatches(
            source, splits.image_shape[0], global_batch_size, process_index, process_count, corrupt
        )
        workers = min(workers_of(data_config), steps) if steps > 1 else 0
        from_disk = _FromDisk(make, workers, steps, "evaluation")

    def make_batch(step: int) -> Batch:
        if from_disk is not None:
            batch = from_disk.next(step)[0]
        else:
            n = global_batch_size // process_count
            start = step * global_batch_size + process_index * n
            index = np.arange(start, start + n)
            real = index < len(source)
            index = np.where(real, index, 0)  # padding rows repeat example 0, masked out
            batch = {
                "image": source.images[index],
                "label": source.labels[index].astype(np.int32),
                "mask": real.astype(np.float32),
            }
        if normalize_on_host:
            batch["image"] = splits.normalize_images(batch["image"])
        return _to_global(batch, mesh, global_batch_size)

    prefetcher = (
        _Prefetcher(make_batch, 0, steps, prefetch_batches) if prefetch_batches > 0 else None
    )
    try:
        for step in range(steps):
            yield make_batch(step) if prefetcher is None else prefetcher.get()[1]
    finally:
        if prefetcher is not None:
            prefetcher.close()
        if from_disk is not None:
            from_disk.close()
