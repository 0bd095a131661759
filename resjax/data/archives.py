"""Upstream source archives: how to recognise them and how to read them without TensorFlow.

Two formats: the IDX files of (Fashion-)MNIST, each gzipped on its own, and the python-pickle
tar.gz of CIFAR-10/100. A file is accepted when either its archive bytes match the upstream
digest, or its decompressed content does: Debian's `dataset-fashion-mnist` rewrote only the gzip
header, so its archives differ from upstream while their content is identical.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resjax.data.errors import CorruptSourceError

_CHUNK_BYTES = 1 << 20
# Errors that Python's gzip/tarfile raise on truncated or damaged archives.
_READ_ERRORS = (EOFError, OSError, zlib.error, tarfile.TarError, gzip.BadGzipFile)


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One upstream archive of a dataset.

    Digests are written 'algorithm:hex' (sha256 or md5, whichever upstream or TFDS publishes).

    Attributes:
      filename: the name upstream gives the file; offline folders must use this name.
      url: where TFDS's download manager fetches it from.
      archive_digest: digest of the archive bytes as upstream serves them.
      content_digests: digests of the decompressed content: for a single gzipped file the key
        is '' ; for a tar.gz each key is a member path. Empty when unknown.
    """

    filename: str
    url: str
    archive_digest: str
    content_digests: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _hasher(digest: str):
    algorithm, _, _ = digest.partition(":")
    if algorithm not in ("sha256", "md5"):
        raise ValueError(f"digest must be 'sha256:...' or 'md5:...'; got {digest!r}")
    return hashlib.new(algorithm)


def _digest_of_stream(stream, digest: str) -> str:
    h = _hasher(digest)
    while chunk := stream.read(_CHUNK_BYTES):
        h.update(chunk)
    return f"{h.name}:{h.hexdigest()}"


def _corrupt(path: Path, spec: SourceFile, why: str) -> CorruptSourceError:
    return CorruptSourceError(
        f"source file {path} is not the upstream {spec.filename}: {why}; "
        f"delete it and fetch it again from {spec.url}"
    )


def verify(path: Path, spec: SourceFile) -> str:
    """Checks that `path` is the upstream archive `spec`, by its bytes or its content.

    Returns:
      'archive' or 'content': which of the two matched (for the progress message).

    Raises:
      CorruptSourceError: naming the file, when it is truncated, corrupt or a different file.
    """
    with open(path, "rb") as f:
        got = _digest_of_stream(f, spec.archive_digest)
    if got == spec.archive_digest:
        return "archive"
    if not spec.content_digests:
        raise _corrupt(path, spec, f"its {got.split(':')[0]} differs from upstream's")
    try:
        if spec.filename.endswith(".tar.gz"):
            _verify_tar_members(path, spec)
        else:
            with gzip.open(path, "rb") as f:
                content = _digest_of_stream(f, spec.content_digests[""])
            if content != spec.content_digests[""]:
                raise _corrupt(path, spec, "neither its bytes nor its decompressed content match")
    except _READ_ERRORS as e:
        raise _corrupt(path, spec, f"truncated or corrupt ({type(e).__name__}: {e})") from e
    return "content"


def _verify_tar_members(path: Path, spec: SourceFile) -> None:
    with tarfile.open(path, "r:gz") as tar:
        for member, want in spec.content_digests.items():
            try:
                f = tar.extractfile(member)
            except KeyError:
                f = None
            if f is None:
                raise _corrupt(path, spec, f"it has no member {member}")
            if _digest_of_stream(f, want) != want:
                raise _corrupt(path, spec, f"its member {member} differs from upstream's")


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (the (Fashion-)MNIST format) into a uint8 array.

    The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32 (http://yann.lecun.com/exdb/mnist/). Read here
    rather than by a library: TFDS's own MNIST reader needs TensorFlow (tf.io.gfile), and the
    PyPI readers of the format (idx2numpy, python-mnist) were last released in 2020.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except _READ_ERRORS as e:
        raise CorruptSourceError(
            f"source file {path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
        raise CorruptSourceError(f"source file {path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(dims) != ndim or len(raw) != header + int(np.prod(dims)):
        raise CorruptSourceError(
            f"source file {path} holds {len(raw) - header} bytes of data, its header says "
            f"{dims} ({int(np.prod(dims))} bytes): truncated"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches contain: dicts, lists, bytes and numpy arrays.

    The batches are pickles; this refuses any other global, so a foreign file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar(path: Path, members: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads CIFAR python batches from the upstream tar.gz.

    Args:
      path: cifar-10-python.tar.gz or cifar-100-python.tar.gz.
      members: member paths to concatenate, in order (e.g. the five training batches).
      label_key: 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).

    Returns:
      images uint8 [N, 32, 32, 3] (the batches store planes: N x 3 x 32 x 32) and labels int32 [N].
    """
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in members:
                f = tar.extractfile(member)
                if f is None:
                    raise CorruptSourceError(f"source file {path} has no member {member}")
                batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[label_key.encode()], dtype=np.int32))
    except CorruptSourceError:
        raise
    except KeyError as e:
        raise CorruptSourceError(f"source file {path}: missing member or key {e}") from e
    except (*_READ_ERRORS, pickle.UnpicklingError, ValueError) as e:
        raise CorruptSourceError(
            f"source file {path} is truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    return np.concatenate(images), np.concatenate(labels)
