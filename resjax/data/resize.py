"""A JPEG dataset re-encoded with its shorter side at a chosen size: fewer pixels to decode per
training image, prepared once.

    python -m resjax.data.resize --dataset=imagenet2012 --short_side=160 [--data_dir=DIR]
    python -m resjax.train ... --config.data.short_side=160   # then trains from it

Fast ImageNet training setups decode smaller JPEGs than the originals (~500x375 on average):
a shorter side of 256 keeps everything the 224-pixel crops use at scale 1; 160 trades
resolution for speed. Every split of the dataset (prepared as array_record in the data dir) is
written to a new TFDS dataset, `imagenet2012_short160` for the example above, in the same
record order with the same labels; each image is scaled (bicubic, antialiased) so that its
shorter side is `short_side` and stored as a JPEG of the given quality. An image whose shorter
side is already at most that, or that does not decode, is kept byte for byte (then
`config.data.corrupt_images` decides in training). Decoding and encoding run in worker
processes, one per CPU by default.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ml_collections
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from resjax.data import augment, sources
from resjax.data.errors import DataError
from resjax.data.workers import cpu_count

_CHUNK = 64  # images per task of a worker (a window holds 4 per worker: bounded memory)


def reencode(image: bytes, short_side: int, quality: int) -> tuple[bytes, str]:
    """(JPEG bytes with the shorter side at `short_side`, 'resized'), or the input as it is with
    'kept' (already small enough) or 'undecodable'."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            width, height = im.size
            if min(width, height) <= short_side:
                return image, "kept"
            if im.mode not in ("RGB", "L"):  # CMYK, palette, alpha: JPEG as the decoder sees it
                im = im.convert("RGB")
            if width <= height:
                size = (short_side, round(height * short_side / width))
            else:
                size = (round(width * short_side / height), short_side)
            out = io.BytesIO()
            im.resize(size, Image.BICUBIC).save(out, "JPEG", quality=quality)
            return out.getvalue(), "resized"
    except augment.UNDECODABLE:
        return image, "undecodable"


def _reencode_chunk(args: tuple[list[bytes], int, int]) -> list[tuple[bytes, str]]:
    images, short_side, quality = args
    return [reencode(image, short_side, quality) for image in images]


def _resized_builder(
    source: tfds.core.DatasetBuilder,
    out_name: str,
    short_side: int,
    quality: int,
    map_chunks: Callable,
) -> type[tfds.core.GeneratorBasedBuilder]:
    """A builder class (not registered: the written dataset is read from its files) that
    writes `source` re-encoded."""
    image_key, label_key = source.info.supervised_keys or ("image", "label")
    labels = source.info.features[label_key]

    class Resized(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = out_name
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    f"{source.name} re-encoded with its shorter side at {short_side} px "
                    f"(JPEG quality {quality}) by resjax.data.resize"
                ),
                features=tfds.features.FeaturesDict(
                    {
                        image_key: tfds.features.Image(encoding_format="jpeg"),
                        label_key: tfds.features.ClassLabel(names=labels.names),
                    }
                ),
                supervised_keys=(image_key, label_key),
                disable_shuffling=True,  # record i is the source's record i
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in source.info.splits}

        def _generate_examples(self, split):
            rows = source.as_data_source(split, decoders={image_key: tfds.decode.SkipDecoding()})
            counts = {"resized": 0, "kept": 0, "undecodable": []}
            for start, chunk in _read_chunks(
                rows, image_key, label_key, map_chunks, short_side, quality
            ):
                for k, ((image, status), label) in enumerate(chunk):
                    if status == "undecodable":
                        counts[status].append(start + k)
                    else:
                        counts[status] += 1
                    yield start + k, {image_key: image, label_key: label}
            bad = counts["undecodable"]
            logging.warning(
                "%s %s: %d images re-encoded, %d kept (shorter side <= %d px), %d kept that do "
                "not decode%s",
                out_name,
                split,
                counts["resized"],
                counts["kept"],
                short_side,
                len(bad),
                f" (records {', '.join(map(str, bad[:10]))})" if bad else "",
            )

    return Resized


def _read_chunks(rows, image_key, label_key, map_chunks, short_side, quality) -> Iterator:
    """(first record, [((bytes, status), label), ...]) per chunk, in order; a window of chunks
    at a time, so that memory stays bounded on a dataset of any size."""
    window = _CHUNK * 4 * cpu_count()
    for first in range(0, len(rows), window):
        records = rows.__getitems__(list(range(first, min(first + window, len(rows)))))
        images = [r[image_key] for r in records]
        labels = [int(r[label_key]) for r in records]
        jobs = [
            (images[i : i + _CHUNK], short_side, quality) for i in range(0, len(images), _CHUNK)
        ]
        done = [pair for chunk in map_chunks(_reencode_chunk, jobs) for pair in chunk]
        yield first, list(zip(done, labels, strict=True))


def prepare_resized(
    name: str,
    data_dir: str | Path,
    short_side: int,
    *,
    data_dir_out: str | Path | None = None,
    quality: int = 90,
    workers: int | None = None,
) -> str:
    """Writes dataset `name` (prepared in `data_dir`) re-encoded at `short_side` into
    `data_dir_out` (default: `data_dir`); returns the new dataset's name. `workers`: processes
    (None: one per CPU; 0: this process only)."""
    if short_side <= 0:
        raise DataError(f"short_side must be a positive number of pixels; got {short_side}")
    if not 1 <= quality <= 95:  # Pillow: above 95 grows files for no visible gain
        raise DataError(f"JPEG quality must be in [1, 95]; got {quality}")
    data_dir = Path(data_dir).expanduser()
    source = sources.tfds_builder(name, data_dir)
    image_key, _ = source.info.supervised_keys or ("image", "label")
    if not isinstance(source.info.features[image_key], tfds.features.Image):
        raise DataError(
            f"resjax.data.resize re-encodes datasets whose images are tfds.features.Image "
            f"(JPEG/PNG bytes); {name}'s {image_key!r} is {source.info.features[image_key]}"
        )
    out_name = sources.resized_name(name, short_side)
    workers = cpu_count() if workers is None else workers
    with _chunk_mapper(workers) as map_chunks:
        builder_class = _resized_builder(source, out_name, short_side, quality, map_chunks)
        builder = builder_class(
            data_dir=Path(data_dir_out or data_dir).expanduser(), file_format="array_record"
        )
        builder.download_and_prepare(file_format="array_record")
    return out_name


@contextlib.contextmanager
def _chunk_mapper(workers: int) -> Iterator[Callable]:
    """map() over chunks: in a spawned process pool (JAX's threads make forking unsafe), or the
    builtin map for workers=0."""
    if workers == 0:
        yield map
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool.map


def main(argv: Sequence[str] | None = None) -> int:
    """Prepares the re-encoded dataset; bad input is one `error:` line and exit status 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="TFDS name, prepared as array_record")
    parser.add_argument("--short_side", type=int, required=True, help="pixels, e.g. 256 or 160")
    parser.add_argument("--data_dir", help="where it is prepared (default: $TFDS_DATA_DIR)")
    parser.add_argument("--out_dir", help="where to write (default: the data dir)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--workers", type=int, help="processes (default: one per CPU)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or sources.data_dir_of(ml_collections.ConfigDict())
    try:
        name = prepare_resized(
            args.dataset,
            data_dir,
            args.short_side,
            data_dir_out=args.out_dir,
            quality=args.quality,
            workers=args.workers,
        )
    except DataError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"wrote {name} to {args.out_dir or data_dir}; train from it with --config.data.short_side={args.short_side}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
