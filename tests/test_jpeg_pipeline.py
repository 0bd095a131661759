"""Datasets read from disk (JPEG `tfds.features.Image` in array_record, as TFDS's imagenet2012):
uint8 batches decoded in worker processes, deterministic and resumable, the same for any number
of processes; corrupt images; a worker that dies; the dataset re-encoded at a shorter side.

One tiny ImageNet-format dataset is prepared per session: 22 small training JPEGs (record 21
is not a JPEG at all) and 6 validation ones (record 2 is truncated). Tests that start worker
processes (a few seconds each: they import resjax afresh) are kept to the few that need them.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resjax import data
from resjax.config import base_config
from resjax.data import augment, plan, resize

NAME = "resjax_tiny_jpegs"
N_TRAIN, CORRUPT_TRAIN = 22, 21  # 'train[:21]' is clean
N_VAL, TRUNCATED_VAL = 6, 2


def _jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    """A smooth colour field plus noise (random pixels alone make JPEGs of no typical size)."""
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


class ResjaxTinyJpegs(tfds.core.GeneratorBasedBuilder):
    """JPEGs of varying sizes and orientations, stored as imagenet2012 stores them."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records in the order written
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, N_TRAIN, CORRUPT_TRAIN),
            "validation": self._generate_examples(1, N_VAL, TRUNCATED_VAL),
        }

    def _generate_examples(self, seed, n, bad):
        rng = np.random.default_rng(seed)
        for i in range(n):
            height, width = (36 + 2 * i, 52 - i) if i % 2 else (50 - i, 40 + 3 * i)
            image = _jpeg(rng, height, width)
            if i == bad:
                image = b"not a JPEG" if seed == 0 else image[: len(image) // 2]
            yield i, {"image": image, "label": i % 4}


@pytest.fixture(scope="session")
def jpeg_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("jpegs")
    builder = ResjaxTinyJpegs(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return data_dir


def config_for(data_dir, **overrides):
    config = base_config().data
    config.name = NAME
    config.dir = str(data_dir)
    config.val_examples = 0
    config.train_split = "train[:21]"
    config.workers = 0
    config.update(overrides)
    return config


def load(config):
    config.test_split = "validation"
    return data.load_splits(config)


def raw_train(splits, i):
    return splits.train.read([i])[0]


def test_batches_are_uint8_random_resized_crops_the_same_for_any_process_count(jpeg_dir):
    config = config_for(jpeg_dir)
    splits = load(config)
    assert not splits.in_memory and len(splits.train) == 21
    it = data.TrainIterator(splits, 8, seed=0, data_config=config, normalize_on_host=False)
    assert it.steps_per_epoch == 2
    batches = [next(it) for _ in range(3)]  # crosses into the second epoch
    first = batches[0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (8, 224, 224, 3)
    assert first["label"].dtype == np.int32

    # Example j of batch p is its record, random-resized-cropped with the rng of its slot.
    order = plan.BatchPlan(21, 8, 0, 1, 0).global_indices(0)
    for slot in (0, 5):
        row = raw_train(splits, int(order[slot]))
        rng = plan.BatchPlan(21, 8, 0, 1, 0).rng(plan.AUGMENT, 0, slot)
        want = augment.train_crop(row["image"], rng, 224, flip=True)
        np.testing.assert_array_equal(first["image"][slot], want)
        assert first["label"][slot] == row["label"]

    halves = [
        data.TrainIterator(
            splits, 8, 0, config, process_index=p, process_count=2, normalize_on_host=False
        )
        for p in range(2)
    ]
    for want in batches:
        parts = [next(h) for h in halves]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), want[key])

    on_host = data.TrainIterator(splits, 8, seed=0, data_config=config)
    np.testing.assert_array_equal(next(on_host)["image"], splits.normalize_images(first["image"]))


def test_worker_processes_make_the_same_batches_resume_exactly_and_dying_is_an_error(jpeg_dir):
    config = config_for(jpeg_dir, random_erase=0.5)
    splits = load(config)
    threads = data.TrainIterator(splits, 8, seed=1, data_config=config, normalize_on_host=False)
    want = [threads.host_batch(p) for p in range(5)]

    config.workers = 2
    resumed = data.TrainIterator(splits, 8, seed=1, data_config=config, normalize_on_host=False)
    resumed.set_state({"batches_consumed": 2})  # the workers start at batch 2
    got = [next(resumed) for _ in range(3)]
    assert resumed.get_state() == {"batches_consumed": 5}
    for w, g in zip(want[2:], got, strict=True):
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["label"], w["label"])

    # A worker that dies (here: SIGKILL, as the out-of-memory killer sends) is a clear error
    # within seconds, not a hang.
    worker = next(c for c in multiprocessing.active_children() if "grain" in c.name)
    os.kill(worker.pid, signal.SIGKILL)

    def hung(signum, frame):
        raise TimeoutError("the iterator hung on a dead worker")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(data.DataWorkerError, match=r"died \(exit code -9\) before batch"):
            # Batches finished before the kill may still arrive: the prefetch queue's 2, the one
            # the prefetch thread holds, and up to 2 per worker (its queue slot and the one it
            # was putting there); a loaded machine fills them all before the kill.
            for _ in range(12):
                next(resumed)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resumed.close()
    assert not [c for c in multiprocessing.active_children() if "grain" in c.name]


def test_a_corrupt_image_is_an_error_naming_it_or_is_skipped_and_counted(jpeg_dir):
    config = config_for(jpeg_dir, train_split="train")  # record 21 is not a JPEG
    splits = load(config)
    it = data.TrainIterator(splits, 11, seed=0, data_config=config)
    with pytest.raises(data.CorruptExampleError, match=r"resjax_tiny_jpegs 'train' record 21 "):
        for _ in range(2):  # one of the epoch's two batches holds it
            next(it)
    error = pickle.loads(pickle.dumps(data.CorruptExampleError("record 21")))  # crosses processes
    assert str(error) == "record 21"

    config.corrupt_images = "skip"
    skip = data.TrainIterator(splits, 11, seed=0, data_config=config, normalize_on_host=False)
    batches = [next(skip) for _ in range(2)]
    assert skip.get_state() == {"batches_consumed": 2, "examples_skipped": 1}
    order = plan.BatchPlan(22, 11, 0, 1, 0)
    position = next(p for p in (0, 1) if CORRUPT_TRAIN in order.global_indices(p))
    slot = int(np.flatnonzero(order.global_indices(position) == CORRUPT_TRAIN)[0])
    substitute = int(order.global_indices(position)[(slot + 1) % 11])
    assert batches[position]["label"][slot] == raw_train(splits, substitute)["label"]
    # The substitute comes from the global batch, so a process that does not hold it still
    # makes the same images.
    parts = [
        data.TrainIterator(
            splits, 22, 0, config, process_index=p, process_count=2, normalize_on_host=False
        )
        for p in range(2)
    ]
    whole = next(data.TrainIterator(splits, 22, 0, config, normalize_on_host=False))
    np.testing.assert_array_equal(np.concatenate([next(p)["image"] for p in parts]), whole["image"])

    # Evaluation: record 2 of 'validation' is truncated. Through a worker process, the error
    # still names it; skipped, it is masked out.
    config = config_for(jpeg_dir, workers=1)
    splits = load(config)
    with pytest.raises(data.CorruptExampleError, match=r"'validation' record 2 .*truncated"):
        list(data.eval_batches(splits.test, splits, 4, data_config=config))
    config.update({"corrupt_images": "skip", "workers": 0})
    batches = list(data.eval_batches(splits.test, splits, 4, data_config=config))
    assert [b["mask"].tolist() for b in batches] == [[1, 1, 0, 1], [1, 1, 0, 0]]


def test_dataset_reencoded_at_a_shorter_side_is_what_training_reads(jpeg_dir, tmp_path):
    config = config_for(tmp_path, short_side=40)
    with pytest.raises(data.MissingDataError, match=r"python -m resjax.data.resize "):
        load(config)
    source = tfds.data_source(NAME, split="train", data_dir=jpeg_dir, download=False)
    written = resize.prepare_resized(NAME, jpeg_dir, 40, data_dir_out=tmp_path, workers=0)
    assert written == "resjax_tiny_jpegs_short40"
    splits = load(config)
    assert splits.name == written and len(splits.train) == 21
    for i in (1, 2, 4):  # kept (shorter side 38 px), resized (46 and 48 px)
        original = np.asarray(source[i]["image"])
        row = raw_train(splits, i)
        image = augment.decode(row["image"])
        assert min(image.shape[:2]) == min(40, *original.shape[:2])
        ratio = image.shape[0] / image.shape[1]
        assert abs(ratio - original.shape[0] / original.shape[1]) < 0.05
        assert row["label"] == int(source[i]["label"])
    # The record that is not a JPEG is kept as it was: the pipeline's corrupt_images decides.
    everything = tfds.data_source(written, split="train", data_dir=tmp_path, download=False)
    assert len(everything) == N_TRAIN
