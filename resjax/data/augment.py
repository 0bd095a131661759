"""Augmentation and normalisation, vectorised over a batch for datasets held in RAM, per
example with Pillow for datasets read from disk (ImageNet-style).

All randomness is passed in as numbers drawn by the caller from (seed, epoch, step), so that a
resumed run reproduces its batches bit for bit.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

AUGMENTATIONS = ("pad_crop_flip", "pad_crop", "none")
# What Pillow raises for bytes that are not a decodable image: not an image at all
# (UnidentifiedImageError is an OSError), truncated data ("image file is truncated"), broken
# headers or markers (SyntaxError, ValueError, EOFError), absurd declared sizes.
UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_augment(augment: str) -> str:
    """Returns `augment` if resjax knows it, else raises a ValueError listing what is allowed."""
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"config.data.augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}"
        )
    return augment


def draw_crop_flip(
    rng: np.random.Generator, batch: int, pad_px: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random crop offsets dy, dx in [0, 2*pad_px] and flips for `batch` images (int/bool [B])."""
    dy = rng.integers(0, 2 * pad_px + 1, batch)
    dx = rng.integers(0, 2 * pad_px + 1, batch)
    flips = rng.random(batch) < 0.5 if flip else np.zeros(batch, bool)
    return dy, dx, flips


def gather_pad_crop_flip(
    images: np.ndarray,
    index: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    flip: np.ndarray,
    pad_px: int,
) -> np.ndarray:
    """Gathers images[index] zero-padded by `pad_px`, cropped back to H x W and maybe flipped.

    One flat `np.take` does the gather, pad, crop and flip together (twice as fast as indexing
    with three broadcast index arrays): a pixel that falls in the padding reads a clipped
    neighbour and is then zeroed. Zero is black in pixel units, as torchvision's RandomCrop.

    Args:
      images: uint8 [N, H, W, C], the whole split.
      index: int [B], which examples.
      dy, dx: int [B], crop offsets into the padded image, in [0, 2 * pad_px].
      flip: bool [B], flip horizontally (after the crop).
      pad_px: padding on each side (He et al. 2015: 4).

    Returns:
      uint8 [B, H, W, C].
    """
    _, h, w, c = images.shape
    rows = dy[:, None] - pad_px + np.arange(h)  # [B, H] source row of each output row
    cols = dx[:, None] - pad_px + np.arange(w)  # [B, W]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = (index[:, None, None] * h + np.clip(rows, 0, h - 1)[:, :, None]) * w + np.clip(
        cols, 0, w - 1
    )[:, None, :]
    out = np.take(images.reshape(-1, c), flat, axis=0)
    if pad_px:
        out *= inside[..., None]
    return out


def draw_erase_boxes(
    rng: np.random.Generator,
    batch: int,
    height: int,
    width: int,
    probability: float,
    scale: tuple[float, float] = (0.02, 0.4),  # Zhong et al. 2017, sec. 3.1: s_l, s_h
    ratio: tuple[float, float] = (0.3, 1 / 0.3),  # their r_1, 1/r_1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random-erasing boxes (top, left, h, w), int [B] each; h = w = 0 where an image is kept.

    Each image is erased with `probability`; the box covers a uniform fraction `scale` of the
    image at an aspect ratio (h / w) drawn log-uniformly from `ratio`, and is clipped to the
    image (instead of redrawn until it fits, so every image costs the same draws).
    """
    area = rng.uniform(*scale, batch) * height * width
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), batch))
    h = np.minimum(np.sqrt(area * aspect).round().astype(np.int64), height)
    w = np.minimum(np.sqrt(area / aspect).round().astype(np.int64), width)
    erase = rng.random(batch) < probability
    h, w = np.where(erase, h, 0), np.where(erase, w, 0)
    top = (rng.random(batch) * (height - h + 1)).astype(np.int64)
    left = (rng.random(batch) * (width - w + 1)).astype(np.int64)
    return top, left, h, w


def erase(
    images: np.ndarray,
    top: np.ndarray,
    left: np.ndarray,
    h: np.ndarray,
    w: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """Replaces each image's box (from `draw_erase_boxes`) by `noise`, in place; returns images.

    Args:
      images: uint8 [B, H, W, C].
      top, left, h, w: int [B]; h = 0 or w = 0 leaves the image as it is.
      noise: uint8 [B, H, W, C], the fill (Zhong et al. fill with uniform random pixels).
    """
    _, height, width, _ = images.shape
    rows = np.arange(height)[None, :]
    cols = np.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # [B, W]
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    np.copyto(images, noise, where=box)
    return images


def random_erase(
    images: np.ndarray,
    rng: np.random.Generator,
    global_batch: int,
    mine: slice,
    probability: float,
) -> np.ndarray:
    """Random erasing of this process's rows `mine` of a global batch, in place.

    Boxes and noise are drawn for the whole global batch and sliced, as the crops are: the same
    global batch for any number of processes.

    Args:
      images: uint8 [B, H, W, C], rows `mine` of the global batch.
      rng: the batch's erase stream.
      global_batch: G, the rows over all processes.
      mine: this process's rows of the global batch (B of them).
      probability: of erasing each image (Zhong et al. 2017: 0.5).
    """
    _, height, width, channels = images.shape
    boxes = draw_erase_boxes(rng, global_batch, height, width, probability)
    noise = rng.integers(0, 256, (global_batch, height, width, channels), dtype=np.uint8)[mine]
    return erase(images, *(b[mine] for b in boxes), noise)


def normalize(images, mean: np.ndarray | None, std: np.ndarray | None):
    """uint8 [..., C] -> float32 (x - mean) / std per channel; x / 255 when mean is None.

    Works on numpy arrays (on the host) and on jax arrays (inside a jitted step), with the same
    float32 operations in the same order, so both give the same bits.
    """
    out = images.astype(np.float32)
    scale = np.float32(1 / 255) if mean is None else 1 / np.asarray(std, np.float32)
    if isinstance(out, np.ndarray):  # in place: a float32 ImageNet batch is 154 MB
        if mean is not None:
            out -= np.asarray(mean, np.float32)
        out *= scale
        return out
    if mean is not None:
        out = out - np.asarray(mean, np.float32)
    return out * scale


# --- ImageNet-style, per example (datasets read from disk) ---

EVAL_RESIZE = 256  # shorter side before the center crop (Krizhevsky et al. 2012, He et al. 2016)


def decode(image) -> np.ndarray:
    """JPEG/PNG bytes or a uint8 array -> uint8 [H, W, 3]."""
    if isinstance(image, bytes | np.bytes_):
        with Image.open(io.BytesIO(image)) as im:
            return np.asarray(im.convert("RGB"))
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.broadcast_to(image, (*image.shape[:2], 3)) if image.shape[-1] == 1 else image


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),  # Szegedy et al. 2015 ("Inception" crop)
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A crop box (top, left, h, w) covering `scale` of the area at aspect `ratio`; after 10
    misses, the largest central crop within `ratio` (torchvision's fallback)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _rgb_image(image):
    """JPEG/PNG bytes (decoded lazily, on first pixel access) or a uint8 array -> PIL RGB."""
    if isinstance(image, bytes | np.bytes_):
        im = Image.open(io.BytesIO(image))
        return im if im.mode == "RGB" else im.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(decode(image)))


def train_crop(image, rng: np.random.Generator, size: int, flip: bool) -> np.ndarray:
    """Decode, random-resized-crop to size x size (bilinear) and maybe flip: uint8 [S, S, 3].

    Pillow crops and resizes its decoded image directly (no numpy copies of the whole image in
    between); the pixels are the same as cropping the decoded array.
    """
    im = _rgb_image(image)
    top, left, h, w = random_resized_crop_box(rng, im.height, im.width)
    out = np.asarray(im.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def eval_crop(image, size: int, resize: int = EVAL_RESIZE) -> np.ndarray:
    """Decode, resize the shorter side to `resize` * size / 224, center-crop size x size."""
    im = _rgb_image(image)
    h, w = im.height, im.width
    short = round(resize * size / 224)
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]
