"""Generated datasets that stand in for ones that cannot be had here: ImageNet-like JPEGs.

`generated_jpegs(data_dir, images)` prepares `resjax_bench_jpegs`, a TFDS dataset in
imagenet2012's format (`tfds.features.Image` JPEG bytes, array_record) whose images cost what
ImageNet's cost to decode: ~500x375 pixels, ~100 KB. `python -m resjax.data.bench
--dataset=jpegs` measures the input pipeline on it.

A module of its own, so that worker processes, which unpickle a data source together with its
builder, find the builder by its module's name.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def photo_like_jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    """A JPEG with roughly a photo's entropy: smooth colour fields at four scales plus fine
    noise, quality 90 (~100 KB at 500x375, as ImageNet's training images average ~110 KB)."""
    pixels = np.full((height, width, 3), 120.0, np.float32)
    for cells, amplitude in ((3, 60), (12, 35), (48, 22), (160, 14)):
        grid_h = max(2, cells * height // max(height, width))
        grid_w = max(2, cells * width // max(height, width))
        grid = rng.normal(0, amplitude, (grid_h, grid_w, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(grid[..., c]).resize((width, height), Image.BICUBIC)
            pixels[..., c] += np.asarray(layer)
    pixels += rng.normal(0, 18, pixels.shape)  # sets the size: ~99 KB on average
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


class ResjaxBenchJpegs(tfds.core.GeneratorBasedBuilder):
    """ImageNet-like JPEGs in imagenet2012's format: 500x375, 375x500 or 500x333 pixels."""

    VERSION = tfds.core.Version("1.0.0")
    SIZES = ((375, 500), (500, 375), (333, 500))  # (height, width), ImageNet's commonest

    def __init__(self, *, images: int = 3000, **kwargs):
        self._images = images
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, self._images),
            "validation": self._generate_examples(1, max(50, self._images // 10)),
        }

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        for i in range(n):
            height, width = self.SIZES[i % len(self.SIZES)]
            yield i, {"image": photo_like_jpeg(rng, height, width), "label": i % 10}


def generated_jpegs(data_dir: Path, images: int) -> None:
    """Prepares the stand-in with `images` training JPEGs in `data_dir` (once)."""
    builder = ResjaxBenchJpegs(images=images, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        print(f"generating {images:,} JPEGs in {data_dir} (once; ~25 ms each)...", flush=True)
        builder.download_and_prepare(file_format="array_record")
