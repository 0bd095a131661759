"""Residual blocks: basic (two 3×3) and bottleneck (1×1-3×3-1×1), in every ordering and shortcut.

A block computes ``out = F(x) + shortcut(x)``. What varies between the papers is a field, not a
class, so that each variation is one switch in an ablation:

* ``residual=False`` drops the shortcut: He et al. 2015's *plain* block, same layers.
* ``ordering``: where BN and ReLU sit around each convolution —
  ``'post'``  conv→BN→ReLU, ReLU after the addition (He et al. 2015);
  ``'pre'``   BN→ReLU→conv, nothing after the addition (He et al. 2016, "Identity Mappings");
  ``'relu_bn_conv'``  ReLU→BN→conv, the order of the formula Conv2(BN(ReLU(Conv1(BN(ReLU(x)))))).
* ``shortcut``: what the skip connection does —
  ``'A'``  parameter-free: stride-2 subsampling + zero-padded channels when the shape changes;
  ``'B'``  1×1 conv + BN only when the shape changes (torchvision);
  ``'C'``  1×1 conv + BN on every block;
  ``'conv'`` 1×1 strided conv with bias and no BN, only when the shape changes.

Inputs and outputs are NHWC. Parameters are float32; ``dtype`` sets the computation dtype.

The fields every block of a network shares are declared once, in `BlockOptions`: the blocks
inherit them, and so does `resjax.models.ResNet`, which hands its values to each of its blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from resjax.models.batchnorm import BatchNorm
from resjax.models.conv import Conv, use_cpu_convs

ORDERINGS = ("post", "pre", "relu_bn_conv")
SHORTCUTS = ("A", "B", "C", "conv")


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raises ValueError naming the allowed values when `value` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_block_fields(block: str, ordering: str, shortcut: str) -> None:
    """Raises ValueError, saying what is allowed, for a block kind ('basic', 'bottleneck'),
    ordering or shortcut that does not exist, or a shortcut the block kind cannot have. Every
    block checks its own, and `ResNet` its blocks' before it builds any."""
    check_choice("block kind", block, tuple(BLOCKS))
    check_choice("ordering", ordering, ORDERINGS)
    check_choice("shortcut kind", shortcut, SHORTCUTS)
    if block == "bottleneck" and shortcut == "A":
        raise ValueError(
            "shortcut 'A' (zero-padding) is defined for basic blocks only; a bottleneck "
            "block needs a projection: use 'B', 'C' or 'conv'"
        )


def _norm(x: jax.Array) -> jax.Array:
    """Per-example L2 norm, averaged over the batch, in float32."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    return jnp.mean(jnp.sqrt(jnp.sum(x * x, axis=-1)))


class BlockOptions(nn.Module, kw_only=True):
    """The fields a network shares with each of its blocks (keyword-only)."""

    residual: bool = True  # False: He et al. 2015's plain block, same layers, no shortcut
    shortcut: str = "B"  # see the module docstring (ResNet's default is 'A')
    ordering: str = "post"
    zero_init_last_bn: bool = False  # Goyal et al. 2017: each block starts as the identity
    drop_path_rate: float = 0.0  # stochastic depth (Huang et al. 2016); needs the 'dropout' RNG
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9  # = PyTorch's momentum 0.1
    bn_epsilon: float = 1e-5
    axis_name: str | None = None  # None: runs under plain jax.jit (BN over the global batch)
    cpu_convs: bool | None = None  # models/conv.py's XLA:CPU backward; None: on for the CPU

    def block_options(self) -> dict[str, Any]:
        """{field: value} of these fields: what a block built with the same options is given."""
        return {name: getattr(self, name) for name in BLOCK_OPTIONS}

    def _bn(self, train: bool, name: str, zero_scale: bool = False) -> BatchNorm:
        """The BatchNorm of a block or of the network's stem and head, from these options."""
        return BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=jnp.dtype(self.dtype),
            axis_name=self.axis_name,
            scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
            name=name,
        )


BLOCK_OPTIONS = tuple(
    f.name for f in dataclasses.fields(BlockOptions) if f.name not in ("parent", "name")
)


class _Block(BlockOptions):
    """What basic and bottleneck blocks share: shortcut, ordering, diagnostics, drop-path.

    Subclasses say which convolutions the residual branch stacks (`_convs`).
    """

    features: int  # the branch's base width; the block outputs features * expansion channels
    strides: int = 1
    lesioned: bool = False  # test-time removal of the branch (Veit et al. 2016): out = shortcut
    perturb_input: bool = False  # adds a zero 'perturbations' variable: grads w.r.t. the input

    kind = "basic"  # its key in BLOCKS
    expansion = 1

    def __post_init__(self):
        check_block_fields(self.kind, self.ordering, self.shortcut)
        super().__post_init__()

    def _convs(self) -> list[tuple[int, int, int]]:
        """(kernel size, output channels, stride) of each convolution in the branch."""
        raise NotImplementedError

    def _conv(self, features: int, kernel: int, strides: int, name: str, bias: bool = False):
        return Conv(
            features,
            kernel,
            strides,
            use_bias=bias,
            dtype=self.dtype,
            cpu=use_cpu_convs(self.cpu_convs),
            name=name,
        )

    def _needs_projection(self, in_features: int) -> bool:
        shape_changes = self.strides != 1 or in_features != self.features * self.expansion
        if self.shortcut == "C":
            return True
        return self.shortcut in ("B", "conv") and shape_changes

    def _shortcut(self, x: jax.Array, train: bool) -> jax.Array:
        out_features = self.features * self.expansion
        if self._needs_projection(x.shape[-1]):
            bias = self.shortcut == "conv"
            y = self._conv(out_features, 1, self.strides, "shortcut_conv", bias=bias)(x)
            return y if bias else self._bn(train, "shortcut_bn")(y)
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        if x.shape[-1] != out_features:  # option A: zero-pad the new channels
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_features - x.shape[-1])))
        return x

    def _drop_path(self, branch: jax.Array, train: bool, rate: Any) -> jax.Array:
        if not train or self.drop_path_rate == 0.0:
            return branch
        keep = 1.0 - (self.drop_path_rate if rate is None else rate)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (branch.shape[0], 1, 1, 1))
        return branch * mask.astype(branch.dtype) / keep

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True, drop_path_rate: Any = None) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H/strides, W/strides, features * expansion].

        `drop_path_rate` overrides the field's rate with a (possibly traced) value; the field
        still decides whether drop-path is on at all (the scanned form passes per-block rates).
        """
        x = x.astype(self.dtype)
        if self.perturb_input:  # d loss / d perturbation = d loss / d (block input)
            x = self.perturb("input", x)
        convs = self._convs()
        shortcut_input = x
        y = x
        for i, (kernel, features, strides) in enumerate(convs, start=1):
            last = i == len(convs)
            conv = self._conv(features, kernel, strides, f"conv{i}")
            bn = self._bn(train, f"bn{i}", zero_scale=last and self.zero_init_last_bn)
            if self.ordering == "post":
                y = bn(conv(y))
                y = y if last else nn.relu(y)
            elif self.ordering == "pre":
                y = nn.relu(bn(y))
                if i == 1 and self._needs_projection(x.shape[-1]):
                    # He et al. 2016: a projection sees the same pre-activated input as the branch.
                    shortcut_input = y
                y = conv(y)
            else:  # relu_bn_conv
                y = conv(bn(nn.relu(y)))
        # Recorded only when the caller makes 'diagnostics' mutable: no cost otherwise.
        record = self.is_mutable_collection("diagnostics") and not self.is_initializing()
        if record:
            self.sow("diagnostics", "input_norm", _norm(x))
            self.sow("diagnostics", "branch_norm", _norm(y))
            self.sow("diagnostics", "branch_std", jnp.std(y.astype(jnp.float32)))
        if not self.residual:
            if self.lesioned:  # no branch to remove: the block is skipped (Veit et al.'s VGG)
                if self._needs_projection(x.shape[-1]):
                    raise ValueError(
                        "a lesioned plain block is skipped, which needs a parameter-free "
                        f"shortcut where the shape changes: use shortcut 'A', not {self.shortcut!r}"
                    )
                y = self._shortcut(x, train)
            return nn.relu(y) if self.ordering == "post" else y

        skip = self._shortcut(shortcut_input, train)
        if record:
            self.sow("diagnostics", "shortcut_norm", _norm(skip))
        if self.lesioned:
            y = jnp.zeros_like(y)
        y = self._drop_path(y, train, drop_path_rate)
        out = y + skip
        return nn.relu(out) if self.ordering == "post" else out


class ResidualBlock(_Block):
    """The basic block: two 3×3 convolutions (He et al. 2015, Fig. 2). Stride on the first."""

    def _convs(self):
        return [(3, self.features, self.strides), (3, self.features, 1)]


class BottleneckBlock(_Block):
    """1×1 reduce → 3×3 → 1×1 expand (×4); stride on the 3×3 (ResNet v1.5, torchvision)."""

    kind = "bottleneck"
    expansion = 4

    def _convs(self):
        return [
            (1, self.features, 1),
            (3, self.features, self.strides),
            (1, self.features * self.expansion, 1),
        ]


BLOCKS = {"basic": ResidualBlock, "bottleneck": BottleneckBlock}
