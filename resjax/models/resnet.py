"""ResNet: a stem, stages of residual blocks and a classifier, all described by data.

Parameter tree (unrolled, the default)::

    stem_conv, stem_bn            3×3 (CIFAR) or 7×7/2 + max-pool (ImageNet)
    stage{i}_block{j}             i, j from 1; each holds conv1, bn1, conv2, bn2 [, conv3, bn3]
                                  and, where it projects, shortcut_conv [, shortcut_bn]
    head_bn                       'pre' and 'relu_bn_conv' orderings only (final BN before pooling)
    classifier                    Dense(num_classes)

Scanned (``scan=True``): the first block of each stage changes shape and stays ``stage{i}_block1``;
blocks 2…n are identical and are stacked into ``stage{i}_scan/block/...``, every leaf with a
leading axis of n-1. Compile time then no longer grows with depth (ResNet-1202 ≈ ResNet-110).
``remat=True`` recomputes each block's activations in the backward pass (less memory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from resjax.models.blocks import BLOCKS, BlockOptions, check_block_fields, check_choice
from resjax.models.conv import Conv, use_cpu_convs

STEMS = ("cifar", "imagenet")
# Collections that a scanned stage stacks along its leading axis.
_SCANNED_COLLECTIONS = ("params", "batch_stats", "diagnostics", "perturbations", "intermediates")


class _ScanBody(nn.Module):
    """One scan step: a block applied to the carry. `train` is a field so remat needs no statics."""

    block: str
    block_kwargs: tuple[tuple[str, Any], ...]
    train: bool

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate: jax.Array) -> tuple[jax.Array, None]:
        block = BLOCKS[self.block](**dict(self.block_kwargs), name="block")
        return block(x, self.train, drop_path_rate), None


class ResNet(BlockOptions):
    """A residual (or, with ``residual=False``, plain) network of any depth.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 3, 3) for CIFAR ResNet-20, (3, 4, 6, 3) for -50.
      widths: base width of each stage (a bottleneck stage outputs 4× this).
      block: 'basic' (two 3×3) or 'bottleneck' (1×1-3×3-1×1).
      stem: 'cifar' (3×3 conv, stride 1) or 'imagenet' (7×7/2 conv + 3×3/2 max-pool).
      stem_width: channels of the stem convolution.
      num_classes: classifier outputs.
      residual, shortcut, ordering, zero_init_last_bn, bn_momentum, bn_epsilon, axis_name,
        cpu_convs: the `BlockOptions` (keyword-only), passed to every block; the shortcut
        defaults to 'A' here.
      drop_path_rate: stochastic-depth rate of the last block; block k of L gets rate·k/L.
      dtype: computation dtype (e.g. 'bfloat16'); parameters stay float32; logits are float32.
      scan: build each stage's identical blocks with nn.scan (flat compile time in depth).
      remat: recompute block activations in the backward pass (nn.remat).
      lesion: names of blocks ('stage2_block3') whose residual branch is removed at test time;
        in a plain network the whole block is skipped (its input passes through, subsampled and
        zero-padded where the shape changes, as shortcut 'A').
      perturb_inputs: give every block a zero 'perturbations' variable on its input, so that
        grads w.r.t. it are grads w.r.t. the block's input activation (diagnostics).
      cpu_convs: give every convolution the backward pass written for XLA:CPU
        (resjax.models.conv): 1.3-1.4x faster unrolled training on the CPU, and scanned stages
        that are not ~45x slower. None (default): on exactly when JAX's default backend is
        the CPU. The numbers are the same either way.
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int] = (16, 32, 64)
    block: str = "basic"
    stem: str = "cifar"
    stem_width: int = 16
    num_classes: int = 10
    scan: bool = False
    remat: bool = False
    lesion: tuple[str, ...] = ()
    perturb_inputs: bool = False
    shortcut: str = dataclasses.field(default="A", kw_only=True)  # the CIFAR nets' identity

    def __post_init__(self):
        check_block_fields(self.block, self.ordering, self.shortcut)
        check_choice("stem", self.stem, STEMS)
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} must "
                "have the same length (one width per stage)"
            )
        if any(n < 1 for n in self.stage_sizes):
            raise ValueError(f"every stage needs at least one block; got {tuple(self.stage_sizes)}")
        if self.shortcut == "A":
            channels = (self.stem_width, *self.widths)
            if any(b < a for a, b in zip(channels, channels[1:], strict=False)):
                raise ValueError(
                    "shortcut 'A' zero-pads channels, so they may only grow: stem_width "
                    f"{self.stem_width} then widths {tuple(self.widths)}; use 'B', 'C' or 'conv'"
                )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1); got {self.drop_path_rate}")
        if self.lesion:
            if self.scan:
                raise ValueError("lesion needs the unrolled form (scan=False)")
            unknown = sorted(set(self.lesion) - set(self.block_names()))
            if unknown:
                raise ValueError(
                    f"lesion names unknown blocks {unknown}; blocks are "
                    f"stage{{i}}_block{{j}}, e.g. {self.block_names()[:3]}"
                )
        super().__post_init__()

    @property
    def depth(self) -> int:
        """Weighted layers, as the papers count them: stem + convs in the branches + classifier."""
        return 2 + sum(self.stage_sizes) * (3 if self.block == "bottleneck" else 2)

    def block_names(self) -> list[str]:
        """Names of the blocks from input to output, as in the parameter tree (unrolled)."""
        return [
            f"stage{i}_block{j}"
            for i, n in enumerate(self.stage_sizes, start=1)
            for j in range(1, n + 1)
        ]

    def _block_kwargs(self) -> dict[str, Any]:
        options = self.block_options()
        return {**options, "dtype": jnp.dtype(self.dtype), "perturb_input": self.perturb_inputs}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """x: [N, H, W, C] images (any H, W ≥ the total stride) -> [N, num_classes] float32 logits."""
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        k, s = (7, 2) if self.stem == "imagenet" else (3, 1)
        x = Conv(
            self.stem_width,
            k,
            s,
            dtype=dtype,
            cpu=use_cpu_convs(self.cpu_convs),
            name="stem_conv",
        )(x)
        # Post-activation normalises the stem itself; pre-activation blocks do it on entry,
        # except after an ImageNet stem, whose max-pool wants activated input (He et al. 2016).
        if self.ordering == "post" or self.stem == "imagenet":
            x = nn.relu(self._bn(train, "stem_bn")(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        block_cls = BLOCKS[self.block]
        if self.remat:
            block_cls = nn.remat(block_cls, static_argnums=(2,))
        kwargs = self._block_kwargs()
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.stage_sizes) + 1)[1:]
        k = 0  # running block index, for the drop-path rate
        for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True), start=1):
            strides = 1 if i == 1 else 2
            unrolled = n if not self.scan else 1
            for j in range(1, unrolled + 1):
                name = f"stage{i}_block{j}"
                block = block_cls(
                    features=width,
                    strides=strides if j == 1 else 1,
                    lesioned=name in self.lesion,
                    name=name,
                    **{**kwargs, "drop_path_rate": float(rates[k])},
                )
                x = block(x, train)
                k += 1
            if n > unrolled:
                x = self._scanned_stage(x, i, width, rates[k : k + n - 1], train)
                k += n - 1

        if self.ordering == "pre":
            x = nn.relu(self._bn(train, "head_bn")(x))
        elif self.ordering == "relu_bn_conv":
            x = self._bn(train, "head_bn")(nn.relu(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=dtype, name="classifier")(x)
        return x.astype(jnp.float32)

    def _scanned_stage(self, x, stage, width, rates, train):
        body = nn.remat(_ScanBody) if self.remat else _ScanBody
        scanned = nn.scan(
            body,
            variable_axes={c: 0 for c in _SCANNED_COLLECTIONS},
            split_rngs={"params": True, "dropout": True},
            length=len(rates),
        )
        kwargs = {**self._block_kwargs(), "features": width, "strides": 1}
        if self.drop_path_rate:  # any nonzero value switches drop-path on; the rate is scanned
            kwargs["drop_path_rate"] = float(rates.max())
        stage_fn = scanned(
            block=self.block,
            block_kwargs=tuple(sorted(kwargs.items())),
            train=train,
            name=f"stage{stage}_scan",
        )
        x, _ = stage_fn(x, jnp.asarray(rates, jnp.float32))
        return x
