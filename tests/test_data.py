"""resjax.data sources and builders: upstream formats, offline preparation, errors.

Fake datasets are small but written in the true upstream formats (gzipped IDX, CIFAR python
pickles in a tar.gz) into temporary folders; the builders' registered digests are replaced by
the fakes' own. No test needs TensorFlow or the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resjax import data
from resjax.config import base_config
from resjax.data import archives, builders

REPO = Path(__file__).resolve().parents[1]


# --- writers of the upstream formats ---


def write_idx_gz(
    path: Path, array: np.ndarray, mtime: int = 1_500_000_000, name: str | None = None
):
    """Gzipped IDX as upstream: 0, 0, 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with open(path, "wb") as raw, gzip.GzipFile(name or path.stem, "wb", 9, raw, mtime) as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_cifar_tar(path: Path, batches: dict[str, dict]):
    """CIFAR python version: a tar.gz of pickled dicts with bytes keys, images as planes."""
    with tarfile.open(path, "w:gz") as tar:
        for member, batch in batches.items():
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes) -> dict:
    return {
        b"batch_label": b"fake batch",
        label_key: [int(x) for x in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        b"filenames": [b"x.png"] * len(images),
    }


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def register_fake(monkeypatch, name: str, folder: Path, content: bool = True) -> None:
    """Makes resjax's builder of `name` accept the fake archives in `folder` (by their content
    digests too unless `content` is False)."""
    cls = builders.BUILDERS[name]
    files = {}
    for role, f in cls.SPEC.files.items():
        blob = (folder / f.filename).read_bytes()
        if not content:
            digests = {}
        elif f.filename.endswith(".tar.gz"):
            with tarfile.open(folder / f.filename) as tar:
                digests = {m: _md5(tar.extractfile(m).read()) for m in f.content_digests}
        else:
            digests = {"": _sha256(gzip.decompress(blob))}
        files[role] = dataclasses.replace(f, archive_digest=_sha256(blob), content_digests=digests)
    monkeypatch.setattr(cls, "SPEC", dataclasses.replace(cls.SPEC, files=files))


@dataclasses.dataclass
class Fake:
    folder: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_idx_dataset(folder: Path, n_train=120, n_test=30, seed=0) -> Fake:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fake = Fake(
        folder,
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", fake.train_images)
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", fake.train_labels)
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", fake.test_images)
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", fake.test_labels)
    return fake


def make_cifar_dataset(folder: Path, classes: int, per_batch=20, n_test=25, seed=0) -> Fake:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_train = 5 * per_batch
    fake = Fake(
        folder,
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, classes, n_train),
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, classes, n_test),
    )
    if classes == 10:
        batches = {
            f"cifar-10-batches-py/data_batch_{i + 1}": cifar_batch(
                fake.train_images[i * per_batch : (i + 1) * per_batch],
                fake.train_labels[i * per_batch : (i + 1) * per_batch],
                b"labels",
            )
            for i in range(5)
        }
        batches["cifar-10-batches-py/test_batch"] = cifar_batch(
            fake.test_images, fake.test_labels, b"labels"
        )
        write_cifar_tar(folder / "cifar-10-python.tar.gz", batches)
    else:
        key = b"fine_labels"
        batches = {
            "cifar-100-python/train": cifar_batch(fake.train_images, fake.train_labels, key),
            "cifar-100-python/test": cifar_batch(fake.test_images, fake.test_labels, key),
        }
        write_cifar_tar(folder / "cifar-100-python.tar.gz", batches)
    return fake


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, no environment folder, no Debian folder: only what a test puts in place."""

    def no_network(spec, download_dir):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(builders, "_download", no_network)
    monkeypatch.delenv(builders.MANUAL_DIR_ENV, raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setattr(builders, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return tmp_path


def data_config(tmp_path: Path, name: str, **overrides) -> ml_collections.ConfigDict:
    config = base_config().data
    config.name = name
    config.dir = str(tmp_path / "tfds")
    for k, v in overrides.items():
        config[k] = v
    return config


def _no_partial_output(data_dir: Path, name: str) -> None:
    folder = data_dir / builders.BUILDERS[name].SPEC.tfds_name
    leftovers = [p.name for p in folder.iterdir()] if folder.exists() else []
    assert leftovers == [], leftovers


# --- archives ---


def test_read_idx_round_trips_and_rejects_truncation(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx_gz(path, images)
    np.testing.assert_array_equal(archives.read_idx(path), images)

    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(data.CorruptSourceError, match="x-idx3-ubyte.gz"):
        archives.read_idx(path)


def test_verify_accepts_a_rewritten_gzip_header_but_not_other_content(tmp_path):
    """Debian's dataset-fashion-mnist differs from upstream only in the gzip header."""
    labels = np.arange(100, dtype=np.uint8) % 10
    upstream, debian = tmp_path / "up" / "l.gz", tmp_path / "deb" / "l.gz"
    upstream.parent.mkdir()
    debian.parent.mkdir()
    write_idx_gz(upstream, labels, mtime=1_400_000_000, name="train-labels-idx1-ubyte")
    write_idx_gz(debian, labels, mtime=1_591_347_949, name="")
    assert upstream.read_bytes() != debian.read_bytes()
    spec = archives.SourceFile(
        "l.gz",
        "http://example.invalid/l.gz",
        _sha256(upstream.read_bytes()),
        {"": _sha256(gzip.decompress(upstream.read_bytes()))},
    )
    assert archives.verify(upstream, spec) == "archive"
    assert archives.verify(debian, spec) == "content"

    other = tmp_path / "other.gz"
    write_idx_gz(other, labels[::-1].copy())
    with pytest.raises(data.CorruptSourceError, match="other.gz.*not the upstream l.gz"):
        archives.verify(other, spec)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(debian.read_bytes()[:-20])
    with pytest.raises(data.CorruptSourceError, match="truncated.gz.*truncated or corrupt"):
        archives.verify(truncated, spec)


def test_cifar_pickles_reject_foreign_globals(tmp_path):
    path = tmp_path / "evil.tar.gz"
    write_cifar_tar(path, {"b/data_batch_1": {b"data": os.system, b"labels": []}})
    with pytest.raises(data.CorruptSourceError, match="evil.tar.gz.*not allowed"):
        archives.read_cifar(path, ["b/data_batch_1"], "labels")


# --- resjax's builders, on fake upstream files ---


def test_fashion_mnist_prepares_from_manual_dir_in_upstream_order(offline, monkeypatch):
    fake = make_idx_dataset(offline / "manual")
    register_fake(monkeypatch, "fashion_mnist", fake.folder)
    config = data_config(offline, "fashion_mnist", manual_dir=str(fake.folder), val_examples=20)
    killed = Path(config.dir) / "resjax_fashion_mnist" / "incomplete.ABC123_1.0.0"
    killed.mkdir(parents=True)  # what a preparation killed by SIGKILL leaves

    splits = data.load_splits(config)

    assert not killed.exists()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 20, 30)
    assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
    assert splits.in_memory and splits.train.images.dtype == np.uint8
    assert splits.train.labels.dtype == np.int32
    # val is carved from the end of train, in upstream order; test stays apart.
    np.testing.assert_array_equal(splits.train.images[..., 0], fake.train_images[:100])
    np.testing.assert_array_equal(splits.val.labels, fake.train_labels[100:])
    np.testing.assert_array_equal(splits.test.images[..., 0], fake.test_images)
    # normalisation statistics come from the train part only
    part = fake.train_images[:100].astype(np.float64)
    np.testing.assert_allclose(splits.mean, [part.mean()], rtol=1e-5)
    np.testing.assert_allclose(splits.std, [part.std()], rtol=1e-5)
    # once prepared, plain TFDS reads it by name, without resjax's builder code
    source = tfds.data_source("resjax_fashion_mnist", split="test", data_dir=config.dir)
    assert len(source) == 30


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_prepares_from_env_folder(offline, monkeypatch, name, classes):
    root = offline / "env"
    fake = make_cifar_dataset(root / name, classes)
    register_fake(monkeypatch, name, fake.folder)
    monkeypatch.setenv(builders.MANUAL_DIR_ENV, str(root))  # looks in $RESJAX_MANUAL_DIR/<name>

    splits = data.load_splits(data_config(offline, name, val_examples=0))

    assert splits.val is None and splits.num_classes == classes
    assert splits.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(splits.train.images, fake.train_images)  # planes -> HWC
    np.testing.assert_array_equal(splits.train.labels, fake.train_labels)
    np.testing.assert_array_equal(splits.test.images, fake.test_images)


def test_cifar_accepts_a_repacked_archive_by_its_members(offline, monkeypatch):
    fake = make_cifar_dataset(offline / "a", 10)
    register_fake(monkeypatch, "cifar10", fake.folder)
    repacked = offline / "b" / "cifar-10-python.tar.gz"
    repacked.parent.mkdir()
    with (
        tarfile.open(fake.folder / "cifar-10-python.tar.gz") as src,
        tarfile.open(repacked, "w:gz") as dst,
    ):
        for member in src.getmembers():
            member.mtime = 12345  # a different tar: different bytes, same batches
            dst.addfile(member, src.extractfile(member))
    assert repacked.read_bytes() != (fake.folder / "cifar-10-python.tar.gz").read_bytes()
    config = data_config(offline, "cifar10", manual_dir=str(repacked.parent), val_examples=0)
    np.testing.assert_array_equal(data.load_splits(config).train.images, fake.train_images)


def test_missing_sources_offline_say_how_to_get_them(offline):
    with pytest.raises(data.MissingDataError) as e:
        data.load_splits(data_config(offline, "fashion_mnist"))
    message = str(e.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "RESJAX_MANUAL_DIR" in message
    assert "network disabled in tests" in message  # why the download failed

    with pytest.raises(
        data.MissingDataError, match="cifar-10-python.tar.gz in config.data.manual_dir"
    ):
        data.load_splits(data_config(offline, "cifar10"))


def test_corrupt_source_names_the_file_and_leaves_nothing(offline, monkeypatch):
    fake = make_idx_dataset(offline / "manual")
    bad = fake.folder / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated download
    config = data_config(offline, "fashion_mnist", manual_dir=str(fake.folder))
    with pytest.raises(data.CorruptSourceError, match=str(bad)):
        data.load_splits(config)
    _no_partial_output(Path(config.dir), "fashion_mnist")

    # A file that passes the digest check but fails while TFDS writes: the temporary folder
    # goes, and nothing that looks prepared stays.
    register_fake(monkeypatch, "fashion_mnist", fake.folder, content=False)
    with pytest.raises(data.CorruptSourceError, match=f"{bad}.*truncated"):
        data.load_splits(config)
    _no_partial_output(Path(config.dir), "fashion_mnist")


_PREPARE_IN_CHILD = """
import dataclasses, json, sys
from pathlib import Path
from resjax.data import builders
args = json.loads(sys.argv[1])
cls = builders.BUILDERS["fashion_mnist"]
files = {r: dataclasses.replace(f, archive_digest=args["digests"][r], content_digests={})
         for r, f in cls.SPEC.files.items()}
cls.SPEC = dataclasses.replace(cls.SPEC, files=files)
builders.prepare("fashion_mnist", Path(args["data_dir"]), args["manual_dir"])
"""


def test_two_processes_preparing_at_once_both_succeed(offline):
    fake = make_idx_dataset(offline / "manual")
    digests = {
        role: _sha256((fake.folder / f.filename).read_bytes())
        for role, f in builders.BUILDERS["fashion_mnist"].SPEC.files.items()
    }
    data_dir = offline / "tfds"
    args = json.dumps(
        {"digests": digests, "data_dir": str(data_dir), "manual_dir": str(fake.folder)}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), builders.MANUAL_DIR_ENV: ""}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE_IN_CHILD, args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [c.communicate(timeout=120) for c in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    assert sum("preparing fashion_mnist" in err for _, err in outputs) == 1, outputs
    splits = data.load_splits(data_config(offline, "fashion_mnist", val_examples=0))
    assert len(splits.train) == 120


# --- errors ---


def test_unknown_dataset_lists_known_names(offline):
    with pytest.raises(data.UnknownDatasetError) as e:
        data.load_splits(data_config(offline, "fashon_mnist"))
    message = str(e.value)
    assert "\n" not in message
    assert "cifar10, cifar100, fashion_mnist, mnist" in message
    assert "did you mean fashion_mnist" in message
    assert data.dataset_names()[:4] == ["cifar10", "cifar100", "fashion_mnist", "mnist"]


def test_bad_split_and_val_examples_are_clear_errors(offline, monkeypatch):
    fake = make_idx_dataset(offline / "manual")
    register_fake(monkeypatch, "mnist", fake.folder)
    config = data_config(offline, "mnist", manual_dir=str(fake.folder), val_examples=10)
    config.train_split = "trian"
    with pytest.raises(data.SplitError, match=r"bad split 'trian'.*available: train, test"):
        data.load_splits(config)
    config.train_split = "train[abc]"
    with pytest.raises(data.SplitError, match=r"train\[:90%\]"):
        data.load_splits(config)
    config.train_split = "train[:50%]"
    assert len(data.load_splits(config).train) == 50
    config.train_split = "train"
    config.val_examples = 120
    with pytest.raises(data.DataError, match=r"val_examples must be in \[0, 120\).*got 120"):
        data.load_splits(config)


def test_stock_tfds_dataset_not_prepared_names_the_tf_extra(offline):
    with pytest.raises(data.MissingDataError, match=r"pip install 'resjax\[tf\]'.*tfds build"):
        data.load_splits(data_config(offline, "svhn_cropped"))


# --- a large dataset read from disk (JPEG bytes in array_record, ImageNet-style) ---


class ResjaxTestJpegs(tfds.core.GeneratorBasedBuilder):
    """A tiny ImageNet stand-in: JPEG bytes of varying sizes, 'train' and 'validation' only."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # validation labels come out in the order written
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, 12),
            "validation": self._generate_examples(1, 5),
        }

    def _generate_examples(self, seed, n):
        from PIL import Image

        rng = np.random.default_rng(seed)
        for i in range(n):
            buffer = io.BytesIO()
            size = (40 + 7 * i, 60 - 2 * i, 3)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(buffer, "JPEG")
            yield i, {"image": buffer.getvalue(), "label": i % 3}


def test_large_dataset_streams_with_imagenet_preprocessing(offline):
    data_dir = offline / "tfds"
    ResjaxTestJpegs(data_dir=data_dir, file_format="array_record").download_and_prepare(
        file_format="array_record"
    )
    config = data_config(offline, "resjax_test_jpegs", val_examples=2, workers=0)
    splits = data.load_splits(config)
    assert not splits.in_memory and splits.image_shape == (224, 224, 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 5)  # test=validation

    it = data.TrainIterator(splits, global_batch_size=4, seed=0, data_config=config)
    batch = next(it)
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    again = data.TrainIterator(splits, global_batch_size=4, seed=0, data_config=config)
    np.testing.assert_array_equal(next(again)["image"], batch["image"])

    batches = list(data.eval_batches(splits.test, splits, global_batch_size=4, data_config=config))
    assert len(batches) == 2 and batches[1]["mask"].tolist() == [1, 0, 0, 0]
    assert [int(x) for b in batches for x in b["label"][b["mask"] > 0]] == [0, 1, 2, 0, 1]


# --- the real Fashion-MNIST from Debian's package ---


@pytest.mark.slow
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    if not (builders.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs `apt-get install dataset-fashion-mnist` (.ci/run installs it)")
    monkeypatch.delenv(builders.MANUAL_DIR_ENV, raising=False)
    monkeypatch.setattr(builders, "_download", None)  # must not be needed
    splits = data.load_splits(data_config(tmp_path, "fashion_mnist", val_examples=0))
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    assert np.bincount(splits.train.labels).tolist() == [6_000] * 10
    assert np.bincount(splits.test.labels).tolist() == [1_000] * 10
    assert splits.train.images.shape == (60_000, 28, 28, 1)
    np.testing.assert_allclose(splits.mean, [72.94], atol=0.01)  # 0.2860 * 255
    np.testing.assert_allclose(splits.std, [90.02], atol=0.01)  # 0.3530 * 255


def test_dataset_stored_as_tfrecord_names_the_tf_extra(offline):
    data_dir = offline / "tfds"
    builder = ResjaxTestJpegs(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    info = builder.data_path / "dataset_info.json"  # as if TFDS had written TFRecord files
    info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
    with pytest.raises(data.NeedsTensorFlowError, match=r"stored as tfrecord.*resjax\[tf\]"):
        data.load_splits(data_config(offline, "resjax_test_jpegs"))
