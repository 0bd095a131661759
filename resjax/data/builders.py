"""resjax's own TFDS builders for the datasets its configs use, prepared without TensorFlow.

The stock TFDS builders of mnist, fashion_mnist, cifar10 and cifar100 need TensorFlow to extract
and encode (PNG images). These read the upstream archives with Python's gzip/tarfile, store raw
uint8 tensors as array_record, and register under their own names (`resjax_fashion_mnist`, ...)
so that they never collide with a stock dataset in the same data dir. Once prepared,
`tfds.data_source('resjax_fashion_mnist', data_dir=...)` reads them with no resjax code at all.

Source files come from, in order: `config.data.manual_dir`, $RESJAX_MANUAL_DIR (the folder itself
or its `<name>/` subfolder), Debian's dataset-fashion-mnist folder (fashion_mnist only), and last
TFDS's download manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from resjax.data import archives
from resjax.data.archives import SourceFile
from resjax.data.errors import CorruptSourceError, MissingDataError

MANUAL_DIR_ENV = "RESJAX_MANUAL_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What resjax knows about one dataset it builds itself.

    Attributes:
      name: resjax's name (`config.data.name`).
      files: source archives by role ('train_images', ..., or 'archive' for CIFAR).
      image_shape: (H, W, C).
      num_classes: number of labels.
      class_names: label names, when known without reading the sources.
      num_examples: {'train': n, 'test': n} of the upstream release.
      debian_package: the Debian package that installs the sources, if any.
    """

    name: str
    files: Mapping[str, SourceFile]
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...] | None
    num_examples: Mapping[str, int]
    debian_package: str | None = None

    @property
    def tfds_name(self) -> str:
        """The name the builder registers in TFDS (and its folder in the data dir)."""
        return f"resjax_{self.name}"


def _idx_files(url: str, digests: Mapping[str, tuple[str, str | None]]) -> dict[str, SourceFile]:
    roles = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    files = {}
    for role, filename in roles.items():
        archive, content = digests[filename]
        files[role] = SourceFile(
            filename, url + filename, archive, {"": content} if content else {}
        )
    return files


# Archive sha256s are TFDS's registered checksums (tensorflow_datasets/url_checksums/). Content
# sha256s of Fashion-MNIST were computed from Debian's files, whose deflate payload is upstream's.
_FASHION_MNIST_FILES = _idx_files(
    _FASHION_URL,
    {
        "train-images-idx3-ubyte.gz": (
            "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels-idx1-ubyte.gz": (
            "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
)
# No MNIST copy was at hand to compute content digests: only the upstream archives are accepted.
_MNIST_FILES = _idx_files(
    _MNIST_URL,
    {
        "train-images-idx3-ubyte.gz": (
            "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            None,
        ),
        "train-labels-idx1-ubyte.gz": (
            "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            None,
        ),
        "t10k-images-idx3-ubyte.gz": (
            "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            None,
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            None,
        ),
    },
)
# md5s as torchvision publishes them (the archive and each pickled batch inside it).
_CIFAR10_FILES = {
    "archive": SourceFile(
        "cifar-10-python.tar.gz",
        _CIFAR_URL + "cifar-10-python.tar.gz",
        "md5:c58f30108f718f92721af3b95e74349a",
        {
            "cifar-10-batches-py/data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
            "cifar-10-batches-py/data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
            "cifar-10-batches-py/data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
            "cifar-10-batches-py/data_batch_4": "md5:634d18415352ddfa80567beed471001a",
            "cifar-10-batches-py/data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
            "cifar-10-batches-py/test_batch": "md5:40351d587109b95175f43aff81a1287e",
        },
    )
}
_CIFAR100_FILES = {
    "archive": SourceFile(
        "cifar-100-python.tar.gz",
        _CIFAR_URL + "cifar-100-python.tar.gz",
        "md5:eb9058c3a382ffc7106e4002c42a8d85",
        {
            "cifar-100-python/train": "md5:16019d7e3df5f24257cddd939b257f8d",
            "cifar-100-python/test": "md5:f0ef6b0ae62326f3e7ffdfab6717acfc",
        },
    )
}

SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        _FASHION_MNIST_FILES,
        (28, 28, 1),
        10,
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        {"train": 60_000, "test": 10_000},
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        "mnist",
        _MNIST_FILES,
        (28, 28, 1),
        10,
        tuple(str(d) for d in range(10)),
        {"train": 60_000, "test": 10_000},
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        _CIFAR10_FILES,
        (32, 32, 3),
        10,
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        {"train": 50_000, "test": 10_000},
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        _CIFAR100_FILES,
        (32, 32, 3),
        100,
        None,  # fine labels; names are in the archive's `meta` member
        {"train": 50_000, "test": 10_000},
    ),
}


def _read_split(spec: DatasetSpec, paths: Mapping[str, Path], split: str):
    """Returns (images uint8 [N,H,W,C], labels int32 [N]) of one split from the sources."""
    if "archive" in paths:
        members = list(spec.files["archive"].content_digests)
        prefix = members[0].split("/")[0]
        if spec.name == "cifar10":
            names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            label_key = "labels"
        else:
            names, label_key = [split], "fine_labels"
        return archives.read_cifar(paths["archive"], [f"{prefix}/{n}" for n in names], label_key)
    images = archives.read_idx(paths[f"{split}_images"])
    labels = archives.read_idx(paths[f"{split}_labels"]).astype(np.int32)
    if images.ndim != 3 or images.shape[1:] != spec.image_shape[:2] or len(images) != len(labels):
        raise CorruptSourceError(
            f"source file {paths[f'{split}_images']} holds images {images.shape} with "
            f"{len(labels)} labels; {spec.name} needs [N, {spec.image_shape[0]}, "
            f"{spec.image_shape[1]}] and one label per image"
        )
    return images[..., None], labels


class _SourceBuilder:
    """Mixin: a TFDS builder that writes raw uint8 images read from verified source paths.

    The paths are resolved and verified before TFDS opens its temporary folder, so a bad file
    fails before anything is written.
    """

    SPEC: DatasetSpec
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw uint8 tensors read from the upstream archives without TF."}
    # No checksums.tsv lies beside this module (sources are verified by `archives.verify`), and
    # TFDS's search for one fails when `resjax` is a namespace or editable-installed package.
    code_path = None

    def __init__(self, *, source_paths: Mapping[str, Path] | None = None, **kwargs):
        self._source_paths = source_paths
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.SPEC
        label = (
            tfds.features.ClassLabel(names=list(spec.class_names))
            if spec.class_names
            else tfds.features.ClassLabel(num_classes=spec.num_classes)
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{spec.name}, prepared by resjax from the upstream archives without TF.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=spec.image_shape, dtype=np.uint8),
                    "label": label,
                }
            ),
            supervised_keys=("image", "label"),
            # Keep upstream order, so that a validation split carved from the end of train is
            # the same examples as other frameworks' 'last 5k' splits.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # sources were resolved (and downloaded, if need be) beforehand
        if self._source_paths is None:
            raise MissingDataError(
                f"{self.SPEC.name}: prepare with resjax.data.load_splits, which finds the sources"
            )
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        images, labels = _read_split(self.SPEC, self._source_paths, split)
        print(f"  {self.SPEC.name} {split}: writing {len(images)} examples", flush=True)
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i])}


class ResjaxFashionMnist(_SourceBuilder, tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (Xiao et al. 2017): 28x28x1, 10 classes, 60k train / 10k test."""

    SPEC = SPECS["fashion_mnist"]


class ResjaxMnist(_SourceBuilder, tfds.core.GeneratorBasedBuilder):
    """MNIST (LeCun et al. 1998): 28x28x1, 10 classes, 60k train / 10k test."""

    SPEC = SPECS["mnist"]


class ResjaxCifar10(_SourceBuilder, tfds.core.GeneratorBasedBuilder):
    """CIFAR-10 (Krizhevsky 2009): 32x32x3, 10 classes, 50k train / 10k test."""

    SPEC = SPECS["cifar10"]


class ResjaxCifar100(_SourceBuilder, tfds.core.GeneratorBasedBuilder):
    """CIFAR-100 (Krizhevsky 2009): 32x32x3, 100 fine classes, 50k train / 10k test."""

    SPEC = SPECS["cifar100"]


BUILDERS: dict[str, type[_SourceBuilder]] = {
    cls.SPEC.name: cls for cls in (ResjaxFashionMnist, ResjaxMnist, ResjaxCifar10, ResjaxCifar100)
}


def source_folders(spec: DatasetSpec, manual_dir: str | None) -> list[Path]:
    """Folders searched for the source files, in order."""
    folders = []
    for root in (manual_dir, os.environ.get(MANUAL_DIR_ENV)):
        if root:
            root = Path(root).expanduser()
            folders += [root / spec.name, root]
    if spec.debian_package == "dataset-fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST_DIR)
    return folders


def _check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Raises OSError fast when the host of `url` cannot be reached: TFDS's downloader retries
    with back-off for minutes before it gives up on a machine without internet."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    socket.create_connection((parts.hostname, port), timeout=timeout_s).close()


def _download(spec: DatasetSpec, download_dir: Path) -> dict[str, Path]:
    """Fetches the sources with TFDS's download manager (no TF needed to download, only to
    extract, which resjax does itself)."""
    for f in spec.files.values():
        _check_reachable(f.url)
    manager = tfds.download.DownloadManager(download_dir=download_dir, dataset_name=spec.tfds_name)
    paths = manager.download({role: f.url for role, f in spec.files.items()})
    return {role: Path(os.fspath(p)) for role, p in paths.items()}


def how_to_get(spec: DatasetSpec, manual_dir: str | None) -> str:
    """One sentence on how to make the sources available offline."""
    names = ", ".join(f.filename for f in spec.files.values())
    where = f"config.data.manual_dir or ${MANUAL_DIR_ENV}/{spec.name}"
    ways = [f"put {names} in {where}"]
    if spec.debian_package:
        ways.insert(0, f"`apt-get update && apt-get install {spec.debian_package}`")
    return "offline: " + ", or ".join(ways)


def locate_sources(
    spec: DatasetSpec,
    manual_dir: str | None,
    download_dir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Finds and verifies the source archives: local folders first, then a download.

    Raises:
      CorruptSourceError: a source file is there but is not the upstream file.
      MissingDataError: not found locally and the download failed.
    """
    folders = source_folders(spec, manual_dir)
    for folder in folders:
        paths = {role: folder / f.filename for role, f in spec.files.items()}
        if all(p.is_file() for p in paths.values()):
            how = {archives.verify(paths[role], f) for role, f in spec.files.items()}
            log(f"resjax.data: {spec.name} sources in {folder} (verified by {'/'.join(how)})")
            return paths
    try:
        paths = _download(spec, download_dir)
    except Exception as e:  # noqa: BLE001 - any failure to download means: say how to get it
        looked = ", ".join(str(f) for f in folders) or "no folder configured"
        raise MissingDataError(
            f"{spec.name}: source files not found (looked in: {looked}) and the download failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"{how_to_get(spec, manual_dir)}"
        ) from e
    for role, f in spec.files.items():
        archives.verify(paths[role], f)
    log(f"resjax.data: {spec.name} sources downloaded to {download_dir}")
    return paths


@contextlib.contextmanager
def _exclusive(lock_path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Holds an exclusive lock on `lock_path`, so that two processes (two sweep points) never
    prepare the same dataset at once; the OS drops it if the holder dies."""
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"resjax.data: waiting for another process holding {lock_path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(
    name: str,
    data_dir: Path,
    manual_dir: str | None = None,
    log: Callable[[str], None] = _stderr,
) -> tfds.core.DatasetBuilder:
    """Returns resjax's builder of `name`, preparing it into `data_dir` on first use.

    Preparation is atomic (TFDS writes into a temporary folder and renames it) and serialised
    between processes by a lock file in `data_dir`.
    """
    cls = BUILDERS[name]
    builder = cls(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir / f".{cls.SPEC.tfds_name}.lock", log):
        builder = cls(data_dir=data_dir, file_format="array_record")
        if builder.is_prepared():  # another process finished while this one waited
            return builder
        # Holding the lock, any temporary folder left here is from a preparation that was killed.
        for stale in (data_dir / cls.SPEC.tfds_name).glob("incomplete.*"):
            log(f"resjax.data: removing {stale}, left by an interrupted preparation")
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        log(f"resjax.data: preparing {name} into {builder.data_path} (first use)")
        paths = locate_sources(cls.SPEC, manual_dir, data_dir / "downloads", log)
        builder = cls(data_dir=data_dir, file_format="array_record", source_paths=paths)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP
            ),
        )
        log(f"resjax.data: prepared {name} in {time.perf_counter() - start:.1f} s")
    return cls(data_dir=data_dir, file_format="array_record")
