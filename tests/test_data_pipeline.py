"""resjax.data pipeline: shuffling, sharding, augmentation, resume, eval padding, global arrays.

Splits are built in memory (no preparation needed); 4 fake CPU devices come from conftest.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resjax import data, optim
from resjax.config import base_config
from resjax.data import augment, sources
from resjax.training import create_train_state, parallel
from resjax.training.step import sum_over_batches


def make_splits(n=100, shape=(8, 8, 3), n_test=23, normalize=True) -> data.Splits:
    """Image i is filled with i % 251 (+1, so that zero padding is distinguishable); label i."""
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (n, *shape), dtype=np.uint8)
    train = sources.ArraySource(images, np.arange(n, dtype=np.int32))
    test = sources.ArraySource(images[:n_test].copy(), np.arange(n_test, dtype=np.int32))
    mean, std = sources._channel_stats(train.images)
    return data.Splits("fake", train, None, test, n, shape, mean, std, normalize)


def data_config(**overrides):
    config = base_config().data
    config.update(overrides)
    return config


def take(it, k):
    return [next(it) for _ in range(k)]


def test_epochs_are_deterministic_permutations():
    splits = make_splits()
    it = data.TrainIterator(splits, 16, seed=3, data_config=data_config())
    assert it.steps_per_epoch == 6  # 100 // 16, remainder dropped
    epoch0 = np.concatenate([b["label"] for b in take(it, 6)])
    epoch1 = np.concatenate([b["label"] for b in take(it, 6)])
    assert len(set(epoch0)) == 96 and len(set(epoch1)) == 96  # no example twice in an epoch
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch
    again = data.TrainIterator(splits, 16, seed=3, data_config=data_config())
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in take(again, 6)]), epoch0)
    other_seed = data.TrainIterator(splits, 16, seed=4, data_config=data_config())
    assert not np.array_equal(next(other_seed)["label"], epoch0[:16])


def test_process_shards_are_disjoint_slices_of_the_same_global_batch():
    splits = make_splits()
    whole = data.TrainIterator(splits, 16, seed=0, data_config=data_config(), process_count=1)
    parts = [
        data.TrainIterator(
            splits, 16, seed=0, data_config=data_config(), process_index=p, process_count=4
        )
        for p in range(4)
    ]
    for _ in range(7):  # crosses an epoch boundary
        batch = next(whole)
        local = [next(it) for it in parts]
        assert all(b["image"].shape == (4, 8, 8, 3) for b in local)  # global / process count
        for key in ("image", "label"):  # augmentation too is the same bit for bit
            np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), batch[key])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_state_is_bitwise_exact(prefetch):
    splits = make_splits()
    config = data_config(prefetch_batches=prefetch)
    uninterrupted = take(data.TrainIterator(splits, 16, seed=0, data_config=config), 10)

    first = data.TrainIterator(splits, 16, seed=0, data_config=config)
    take(first, 4)
    state = first.get_state()
    assert state == {"batches_consumed": 4}  # the consumer's position, not the prefetcher's
    first.close()

    resumed = data.TrainIterator(splits, 16, seed=0, data_config=config)
    resumed.set_state(state)
    for want, got in zip(uninterrupted[4:], take(resumed, 6), strict=True):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert resumed.get_state() == {"batches_consumed": 10} and resumed.epoch == 1


def _reference_pad_crop_flip(image, dy, dx, flip, pad):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    crop = padded[dy : dy + h, dx : dx + w]
    return crop[:, ::-1] if flip else crop


def test_pad_crop_flip_matches_the_textbook_definition():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (10, 28, 28, 1), dtype=np.uint8)
    index = np.array([3, 3, 0, 9, 5, 7])
    dy, dx, flip = augment.draw_crop_flip(rng, 6, 4, flip=True)
    dy[:2], dx[:2], flip[:2] = [4, 0], [4, 8], [False, True]  # identity; corner + flip
    out = augment.gather_pad_crop_flip(images, index, dy, dx, flip, 4)
    for k, i in enumerate(index):
        want = _reference_pad_crop_flip(images[i], dy[k], dx[k], flip[k], 4)
        np.testing.assert_array_equal(out[k], want)
    np.testing.assert_array_equal(out[0], images[3])
    assert (out[1][:4] == 0).all()  # zero padding above a crop taken at dy=0


def test_augment_modes_and_normalisation():
    splits = make_splits()
    plain = data.TrainIterator(splits, 16, seed=0, data_config=data_config(augment="none"))
    batch = next(plain)
    index = batch["label"]
    restored = batch["image"] * splits.std + splits.mean
    np.testing.assert_allclose(restored, splits.train.images[index], atol=1e-3)

    flipless = data.TrainIterator(splits, 16, seed=0, data_config=data_config(augment="pad_crop"))
    assert flipless._flip is False and flipless._pad_px == 4
    with pytest.raises(ValueError, match="augment must be one of pad_crop_flip, pad_crop, none"):
        data.TrainIterator(splits, 16, seed=0, data_config=data_config(augment="flip"))

    raw = make_splits(normalize=False)
    batch = next(data.TrainIterator(raw, 16, seed=0, data_config=data_config(augment="none")))
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_random_erase_boxes_follow_zhong_et_al():
    rng = np.random.default_rng(0)
    top, left, h, w = augment.draw_erase_boxes(rng, 20_000, 28, 28, probability=0.5)
    erased = h > 0
    assert abs(erased.mean() - 0.5) < 0.02
    area = (h * w)[erased] / (28 * 28)
    assert 0.0 < area.min() and area.max() <= 0.45  # 2%-40% of the image, rounded to pixels
    assert abs(np.median(area) - 0.21) < 0.03  # uniform in [0.02, 0.4]: median 0.21
    assert (top >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    assert (w[~erased] == 0).all()

    images = np.zeros((3, 6, 5, 1), np.uint8)
    noise = np.full_like(images, 7)
    box = (np.array([1, 0, 2]), np.array([2, 0, 0]), np.array([2, 0, 4]), np.array([3, 0, 5]))
    out = augment.erase(images, *box, noise)
    want = np.zeros_like(images)
    want[0, 1:3, 2:5] = 7
    want[2, 2:6, 0:5] = 7
    np.testing.assert_array_equal(out, want)


def test_random_erase_in_the_pipeline_is_per_process_invariant_and_resumable():
    splits = make_splits(normalize=False)
    config = data_config(augment="none", random_erase=1.0)
    plain = next(data.TrainIterator(splits, 16, seed=0, data_config=data_config(augment="none")))
    batch = next(data.TrainIterator(splits, 16, seed=0, data_config=config))
    changed = (batch["image"] != plain["image"]).any(axis=(1, 2, 3))
    assert changed.all()  # probability 1: every image has a box of noise
    parts = [
        next(data.TrainIterator(splits, 16, 0, config, process_index=p, process_count=2))
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in parts]), batch["image"])
    with pytest.raises(ValueError, match="random_erase must be in"):
        data.TrainIterator(splits, 16, seed=0, data_config=data_config(random_erase=1.5))


def test_batches_on_a_mesh_are_global_arrays_sharded_along_data():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 4  # conftest: 4 fake CPU devices
    splits = make_splits()
    it = data.TrainIterator(splits, 16, seed=0, data_config=data_config(), mesh=mesh)
    host = data.TrainIterator(splits, 16, seed=0, data_config=data_config())
    batch, want = next(it), next(host)
    want_sharding = NamedSharding(mesh, PartitionSpec("data"))
    for key in ("image", "label"):
        assert isinstance(batch[key], jax.Array) and batch[key].sharding == want_sharding
        np.testing.assert_array_equal(np.asarray(batch[key]), want[key])
    assert batch["image"].shape == (16, 8, 8, 3)
    assert batch["image"].addressable_shards[0].data.shape == (4, 8, 8, 3)

    with pytest.raises(ValueError, match="18 must be a multiple of the 4 devices"):
        data.TrainIterator(splits, 18, seed=0, data_config=data_config(), mesh=mesh)
    with pytest.raises(ValueError, match="multiple of the process count 4"):
        data.TrainIterator(splits, 18, seed=0, process_index=0, process_count=4)


def test_eval_visits_every_example_once_with_equal_steps_per_process():
    splits = make_splits(n_test=23)
    per_process = [
        list(
            data.eval_batches(
                splits.test, splits, global_batch_size=8, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert [len(b) for b in per_process] == [3, 3]  # ceil(23 / 8) on every process
    seen = [
        int(label)
        for batches in per_process
        for b in batches
        for label in b["label"][b["mask"] > 0]
    ]
    assert sorted(seen) == list(range(23))
    last = per_process[1][-1]  # examples 20, 21, 22 + padding; process 0 had 16..19
    assert last["mask"].dtype == np.float32 and last["mask"].tolist() == [1, 1, 1, 0]
    assert per_process[0][-1]["mask"].tolist() == [1, 1, 1, 1]
    first = per_process[0][0]
    want = (splits.test.images[:4] - splits.mean) / splits.std
    np.testing.assert_allclose(first["image"], want, rtol=1e-5, atol=1e-5)


def test_eval_on_a_mesh():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    splits = make_splits(n_test=10)
    batches = list(data.eval_batches(splits.test, splits, global_batch_size=8, mesh=mesh))
    assert len(batches) == 2 and batches[1]["mask"].sharding.spec == PartitionSpec("data")
    assert float(sum(b["mask"].sum() for b in batches)) == 10.0


def test_normalisation_on_the_device_gives_the_bits_of_normalisation_on_the_host():
    """uint8 batches normalised as the step's first op train and evaluate to exactly the numbers
    of float32 batches normalised on the host (jit; per-device BN and pmap run the same step)."""
    splits = make_splits(n=64, shape=(8, 8, 3), n_test=20)
    images = splits.train.images[:4]
    on_device = jax.jit(splits.normalize_images)(images)
    np.testing.assert_array_equal(np.asarray(on_device), splits.normalize_images(images))

    config = base_config()
    config.model.name = "resnet8"
    config.model.overrides.update({"widths": (4, 4, 8), "stem_width": 4})
    config.eval_batch_size = 8
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))  # one device: the cheapest compile
    tx = optim.make_optimizer(config.optim, optim.learning_rate_schedule(config.optim, 9, ()))
    model = parallel.build_model(config, splits.num_classes)
    initial = create_train_state(
        config, model, tx, splits.image_shape, NamedSharding(mesh, PartitionSpec())
    )
    runs = []
    for on_host in (True, False):
        normalize = None if on_host else splits.normalize_images
        train_step = parallel.compile_train_step(config, mesh, normalize)
        state = jax.tree.map(jnp.copy, initial)  # the step donates its input
        it = data.TrainIterator(splits, 16, 0, config.data, mesh=mesh, normalize_on_host=on_host)
        metrics = train_step.empty_metrics()
        for _ in range(2):
            batch = next(it)
            assert batch["image"].dtype == (np.float32 if on_host else np.uint8)
            state, metrics = train_step.run(state, batch, metrics)
        batches = data.eval_batches(
            splits.test, splits, config.eval_batch_size, mesh, normalize_on_host=on_host
        )
        evaluation = sum_over_batches(parallel.compile_eval_step(mesh, normalize), state, batches)
        runs.append((jax.device_get(state.params), jax.device_get(state.batch_stats), evaluation))
        if not on_host:
            with pytest.raises(
                ValueError, match=r"uint8 images reached the step .*normalize_images"
            ):
                parallel.compile_train_step(config, mesh).run(state, batch, metrics)  # refused
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])


def test_prefetch_error_reaches_the_consumer(monkeypatch):
    splits = make_splits()
    it = data.TrainIterator(splits, 16, seed=0, data_config=data_config(prefetch_batches=2))

    def broken(position):
        raise RuntimeError(f"bad batch {position}")

    monkeypatch.setattr(it, "host_batch", broken)
    with pytest.raises(RuntimeError, match="bad batch 0"):
        next(it)


def test_channel_stats_are_exact():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 5, 5, 3), dtype=np.uint8)
    mean, std = sources._channel_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0), rtol=1e-6)


def test_pipeline_is_fast_enough_for_cifar_on_this_machine():
    """Sanity bound far below the 20k images/s target, so a loaded CI machine passes; uint8
    batches, as training takes them."""
    splits = make_splits(n=5000, shape=(32, 32, 3))
    it = data.TrainIterator(splits, 128, seed=0, data_config=data_config(), normalize_on_host=False)
    take(it, 2)
    start = time.perf_counter()
    take(it, 20)
    rate = 20 * 128 / (time.perf_counter() - start)
    assert rate > 5_000, f"{rate:.0f} images/s"
