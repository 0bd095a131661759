"""Datasets as random-access sources: `load_splits(config.data)` -> `Splits`.

Two routes, neither imports TensorFlow:
- resjax's own builders (fashion_mnist, mnist, cifar10, cifar100), prepared on first use from the
  upstream archives (see `builders`);
- any other TFDS dataset already prepared as array_record in the data dir, read with
  `tfds.data_source`.

A dataset whose images have one fixed shape and fit in RAM is held as numpy arrays
(`ArraySource`); a larger one (ImageNet) stays on disk and is read by index (`StreamSource`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from resjax.data import augment, builders
from resjax.data.errors import (
    TF_EXTRA,
    DataError,
    MissingDataError,
    NeedsTensorFlowError,
    SplitError,
    UnknownDatasetError,
)

# Splits larger than this stay on disk and are decoded per batch (ImageNet's train is ~140 GB
# decoded); CIFAR-10's 50k x 32x32x3 is 150 MB.
IN_MEMORY_MAX_BYTES = 4 << 30
# Output side of the ImageNet-style preprocessing for datasets read from disk.
STREAM_IMAGE_SIZE = 224
_READ_CHUNK = 4096
_STATS_SAMPLE = 512  # examples decoded to estimate mean/std of a dataset kept on disk


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split held in RAM.

    Attributes:
      images: uint8 [N, H, W, C].
      labels: int32 [N].
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}

    def slice(self, start: int, stop: int) -> ArraySource:
        """Examples [start, stop), without copying."""
        return ArraySource(self.images[start:stop], self.labels[start:stop])


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """A split read from disk by index, for datasets too large for RAM.

    Examples [start, stop) of a `tfds.data_source`; images come out as they are stored (encoded
    bytes when `decoders` skipped decoding, else uint8 arrays) and are decoded per batch by
    `resjax.data.disk`, in worker processes. Picklable: workers unpickle it and read by index.
    """

    data_source: Any
    start: int
    stop: int
    image_key: str = "image"
    label_key: str = "label"
    name: str = ""  # dataset and TFDS split string, to name an example in messages
    split: str = ""

    def __len__(self) -> int:
        return self.stop - self.start

    def describe(self, i: int) -> str:
        """Example `i` of this part, as TFDS numbers it: 'imagenet2012 'train' record 17'."""
        return f"{self.name or 'dataset'} {self.split!r} record {self.start + i}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.read([i])[0]

    def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The examples at `indices` (relative to this split): [{'image', 'label'}, ...]."""
        n = len(self)
        if any(not 0 <= i < n for i in indices):
            raise IndexError(f"index out of range [0, {n}) in {list(indices)[:8]}...")
        rows = self.data_source.__getitems__([self.start + int(i) for i in indices])
        return [{"image": r[self.image_key], "label": int(r[self.label_key])} for r in rows]

    def slice(self, start: int, stop: int) -> StreamSource:
        """Examples [start, stop) of this split."""
        return dataclasses.replace(self, start=self.start + start, stop=self.start + stop)


Source = ArraySource | StreamSource


@dataclasses.dataclass(frozen=True)
class Splits:
    """A dataset's splits and what the pipeline needs to know about it.

    Attributes:
      name: `config.data.name`.
      train: the training part (train split minus the validation examples).
      val: the last `val_examples` of the train split, or None when val_examples == 0.
      test: the test split (imagenet2012: 'validation'), never seen in training or model selection.
      num_classes: number of labels.
      image_shape: (H, W, C) of the images in a batch (224x224x3 for datasets read from disk).
      mean: float32 [C], per-channel mean of `train` in pixel units (0..255).
      std: float32 [C], per-channel standard deviation of `train`, same units.
      normalize: whether batches are normalised with mean/std (`config.data.normalize`).
    """

    name: str
    train: Source
    val: Source | None
    test: Source
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    normalize: bool = True

    @property
    def in_memory(self) -> bool:
        """True when the splits are numpy arrays (small datasets), False when read from disk."""
        return isinstance(self.train, ArraySource)

    def normalize_images(self, images):
        """uint8 images [..., C] -> the network's float32 input: (x - mean) / std per channel,
        or x / 255 when `normalize` is off. On numpy arrays, or on jax arrays inside a jitted
        step (the same bits either way)."""
        if not self.normalize:
            return augment.normalize(images, None, None)
        return augment.normalize(images, self.mean, self.std)


def dataset_names() -> list[str]:
    """resjax's own builders first, then every dataset TFDS registers (readable once prepared)."""
    own = sorted(builders.BUILDERS)
    stock = [n for n in tfds.list_builders(with_community_datasets=False) if n not in own]
    return own + sorted(stock)


def data_dir_of(data_config: ml_collections.ConfigDict) -> Path:
    """config.data.dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    d = data_config.get("dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(d).expanduser()


def _unknown(name: str) -> UnknownDatasetError:
    names = dataset_names()
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownDatasetError(
        f"unknown dataset {name!r}: resjax prepares {', '.join(sorted(builders.BUILDERS))} itself "
        f"and reads any other TFDS dataset prepared as array_record "
        f"(names: resjax.data.dataset_names()){hint}"
    )


def tfds_builder(name: str, data_dir: Path) -> tfds.core.DatasetBuilder:
    """The builder of a TFDS dataset prepared as array_record in `data_dir`."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _unknown(name) from e
    except ModuleNotFoundError as e:  # a stock builder whose module imports TensorFlow
        raise NeedsTensorFlowError(
            f"{name}: TFDS's builder needs {e.name} ({TF_EXTRA}); resjax prepares only "
            f"{', '.join(sorted(builders.BUILDERS))} without it"
        ) from e
    if not builder.is_prepared():
        raise MissingDataError(
            f"{name} is not prepared in {data_dir}; resjax prepares only "
            f"{', '.join(sorted(builders.BUILDERS))} itself; prepare {name} with TensorFlow "
            f"({TF_EXTRA}): `tfds build {name} --file_format=array_record --data_dir={data_dir}`"
        )
    formats = {builder.info.file_format} | set(
        getattr(builder.info, "alternative_file_formats", ()) or ()
    )
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        raise NeedsTensorFlowError(
            f"{name} in {data_dir} is stored as {builder.info.file_format.value}, which only "
            f"TensorFlow reads; install it ({TF_EXTRA}) and rebuild as array_record: "
            f"`tfds build {name} --file_format=array_record --data_dir={data_dir}`"
        )
    return builder


def resized_name(name: str, short_side: int) -> str:
    """The TFDS name of dataset `name` re-encoded with its shorter side at `short_side` pixels
    (`python -m resjax.data.resize`): 'imagenet2012' -> 'imagenet2012_short160'."""
    return f"{re.sub(r'[^a-z0-9_]', '_', name.lower())}_short{short_side}"


def _resized(name: str, short_side: int, data_dir: Path) -> str:
    """`resized_name`, after checking that it is prepared in `data_dir`."""
    if short_side <= 0:
        raise DataError(
            f"config.data.short_side must be a positive number of pixels; got {short_side}"
        )
    resized = resized_name(name, short_side)
    if not (data_dir / resized).is_dir():
        raise MissingDataError(
            f"{name} re-encoded with its shorter side at {short_side} px ({resized}) is not "
            f"prepared in {data_dir}; prepare it once: python -m resjax.data.resize "
            f"--dataset={name} --short_side={short_side} --data_dir={data_dir}"
        )
    return resized


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of examples of `split`, or a SplitError that lists the valid splits."""
    try:
        return builder.info.splits[split].num_examples
    except (ValueError, KeyError, AssertionError) as e:
        available = ", ".join(builder.info.splits)
        reason = str(e).splitlines()[0]
        raise SplitError(
            f"bad split {split!r} for {builder.name}: {reason}; available: {available} "
            f"(slices like 'train[:90%]' or 'train[:45000]' are allowed)"
        ) from None


def _read_all(data_source, image_key: str, label_key: str) -> ArraySource:
    """Reads a whole split into numpy, in chunks (a data source decodes per example)."""
    n = len(data_source)
    images, labels = None, np.empty(n, np.int32)
    for start in range(0, n, _READ_CHUNK):
        rows = data_source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
        chunk = np.stack([np.asarray(r[image_key]) for r in rows])
        if chunk.ndim == 3:  # a grayscale Image feature may come without its channel axis
            chunk = chunk[..., None]
        if images is None:
            images = np.empty((n, *chunk.shape[1:]), np.uint8)
        images[start : start + len(rows)] = chunk
        labels[start : start + len(rows)] = [int(r[label_key]) for r in rows]
    return ArraySource(images, labels)


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std of uint8 images, from a 256-bin histogram per channel (no
    float copy of the whole split)."""
    c = images.shape[-1]
    flat = images.reshape(-1, c)
    levels = np.arange(256, dtype=np.float64)
    mean, std = np.empty(c, np.float32), np.empty(c, np.float32)
    for ch in range(c):
        counts = np.bincount(flat[:, ch], minlength=256).astype(np.float64)
        m = counts @ levels / counts.sum()
        mean[ch] = m
        std[ch] = np.sqrt(counts @ (levels - m) ** 2 / counts.sum())
    return mean, std


def _val_count(data_config: ml_collections.ConfigDict, n_train: int) -> int:
    val = int(data_config.get("val_examples", 0) or 0)
    if not 0 <= val < n_train:
        raise DataError(
            f"config.data.val_examples must be in [0, {n_train}) for a train split of "
            f"{n_train} examples; got {val}"
        )
    return val


def load_splits(data_config: ml_collections.ConfigDict) -> Splits:
    """Loads (preparing on first use) the dataset `data_config.name`.

    Args:
      data_config: `config.data`: name, dir, manual_dir, val_examples, normalize, and the
        TFDS split strings `train_split` (train and validation are carved from it; default
        'train') and `test_split` (None: 'test', else 'validation').

    Returns:
      Splits whose train/val/test are in RAM for small datasets, on disk for large ones.
    """
    train_split = data_config.get("train_split") or "train"
    test_split = data_config.get("test_split")
    name = data_config.name
    data_dir = data_dir_of(data_config)
    if name in builders.BUILDERS:
        if data_config.get("short_side"):
            raise DataError(
                f"config.data.short_side applies to JPEG datasets read from disk; {name} is "
                "held in memory as arrays: leave it unset"
            )
        builder = builders.prepare(name, data_dir, data_config.get("manual_dir"))
        image_key, label_key = "image", "label"
    else:
        if data_config.get("short_side"):
            name = _resized(name, int(data_config.short_side), data_dir)
        builder = tfds_builder(name, data_dir)
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if test_split is None:
        test_split = "test" if "test" in builder.info.splits else "validation"
    n_train = _check_split(builder, train_split)
    n_test = _check_split(builder, test_split)
    val = _val_count(data_config, n_train)

    feature = builder.info.features[image_key]
    shape = tuple(feature.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    # A scalar string feature holds encoded images (JPEG/PNG bytes), decoded per batch.
    fixed = len(shape) == 3 and all(d is not None for d in shape)
    if fixed and n_train * int(np.prod(shape)) <= IN_MEMORY_MAX_BYTES:
        train = _read_all(builder.as_data_source(train_split), image_key, label_key)
        test = _read_all(builder.as_data_source(test_split), image_key, label_key)
        image_shape = shape
    else:
        # An Image feature stays as its JPEG/PNG bytes: Pillow decodes them per batch.
        decoders = (
            {image_key: tfds.decode.SkipDecoding()}
            if isinstance(feature, tfds.features.Image)
            else None
        )
        train, test = (
            StreamSource(
                builder.as_data_source(s, decoders=decoders), 0, n, image_key, label_key, name, s
            )
            for s, n in ((train_split, n_train), (test_split, n_test))
        )
        image_shape = (STREAM_IMAGE_SIZE, STREAM_IMAGE_SIZE, 3)  # decoded as RGB

    val_source = train.slice(n_train - val, n_train) if val else None
    train = train.slice(0, n_train - val)
    if isinstance(train, ArraySource):
        mean, std = _channel_stats(train.images)
    else:
        mean, std = _stream_stats(train)
    num_classes = builder.info.features[label_key].num_classes
    return Splits(
        name=name,
        train=train,
        val=val_source,
        test=test,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        normalize=bool(data_config.get("normalize", True)),
    )


def _stream_stats(train: StreamSource) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std estimated from evenly spaced examples (decoding all of ImageNet to
    compute them exactly would take hours)."""
    step = max(1, len(train) // _STATS_SAMPLE)
    pixels = []
    for row in train.read(range(0, len(train), step)):
        try:
            pixels.append(augment.decode(row["image"]).reshape(-1, 3))
        except augment.UNDECODABLE:  # a corrupt image: the pipeline's corrupt_images decides
            continue
    return _channel_stats(np.concatenate(pixels)[None])
