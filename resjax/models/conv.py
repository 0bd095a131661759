"""The convolution layer of every resjax network, with a backward pass written for XLA:CPU.

`Conv` has `flax.linen.Conv`'s parameters (`kernel` [kh, kw, in, out], optional `bias`), its
initialisation and its numbers; it pads symmetrically (k // 2 on each side, as PyTorch).

With `cpu=True` its gradient is a hand-written `custom_vjp` that fixes two ways XLA:CPU loses
time on a ResNet train step (benchmarks/README.md has the profiles):

1. Fusion barriers (models/fusion_barrier.py) on the layer input and on the output gradient, so
   the BN/ReLU/residual-add producing them are computed once instead of being fused into, and
   recomputed inside, the transposed copies the weight gradient reads (with 2., +26% on a
   ResNet-20 step alone, +40% together with resjax's XLA flag).
2. Both backward convolutions written in XLA:CPU's canonical form (batch-major input,
   HWIO kernel, NHWC output), with the transposes explicit. JAX's own transpose rule gives the
   weight gradient as a convolution with batch and feature swapped; outside loops XLA rewrites
   it, but inside `lax.scan` (`ResNet(scan=True)`) it does not, and the convolution falls back
   to a naive loop: a scanned ResNet-20 step was ~45x slower than the unrolled one.

The gradients equal JAX's to float32 rounding (tested for strided, odd-sized, 1×1 and 7×7
cases, and inside `scan`). On GPU/TPU the plain convolution and JAX's gradient are used
(`cpu=False`), which cuDNN and the TPU compiler lay out themselves.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from resjax.models.fusion_barrier import fusion_barrier

_NHWC = ("NHWC", "HWIO", "NHWC")

# He et al. initialise convolutions as in "Delving deep into rectifiers"; torchvision uses the
# fan-out form, which keeps the backward signal's variance.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_NHWC
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def cpu_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """`_conv` with the XLA:CPU backward pass described in the module docstring."""
    return _conv(x, kernel, stride, pad)


def _cpu_conv_fwd(x, kernel, stride, pad):
    x = fusion_barrier(x)
    return _conv(x, kernel, stride, pad), (x, kernel)


def _cpu_conv_bwd(stride, pad, residuals, g):
    x, kernel = residuals
    g = fusion_barrier(g)
    kh, kw = kernel.shape[:2]
    (h, w), (ho, wo) = x.shape[1:3], g.shape[1:3]
    # Input gradient: correlate the stride-dilated g with the flipped, in/out-swapped kernel.
    # Padding: kernel - 1 - pad before; after, whatever makes the output exactly h (w) wide.
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    lo_h, lo_w = kh - 1 - pad, kw - 1 - pad
    hi_h = h + kh - 1 - (ho - 1) * stride - 1 - lo_h
    hi_w = w + kw - 1 - (wo - 1) * stride - 1 - lo_w
    dx = lax.conv_general_dilated(
        g,
        flipped,
        (1, 1),
        ((lo_h, hi_h), (lo_w, hi_w)),
        lhs_dilation=(stride, stride),
        dimension_numbers=_NHWC,
    )
    # Kernel gradient: a convolution of x as [C_in, H, W, N] ("batch" C_in, "features" N)
    # with g as an [H_out, W_out, N, C_out] kernel dilated by the stride; the output is
    # [C_in, kh, kw, C_out]. Rows of x the forward pass never reached are cut by a negative
    # trailing pad.
    unused_h = h + 2 * pad - (ho - 1) * stride - kh
    unused_w = w + 2 * pad - (wo - 1) * stride - kw
    dk = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),
        jnp.transpose(g, (1, 2, 0, 3)),
        (1, 1),
        ((pad, pad - unused_h), (pad, pad - unused_w)),
        rhs_dilation=(stride, stride),
        dimension_numbers=_NHWC,
    )
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def use_cpu_convs(setting: bool | None) -> bool:
    """A model's `cpu_convs` field: None means on exactly when JAX's default backend is CPU."""
    return jax.default_backend() == "cpu" if setting is None else bool(setting)


class Conv(nn.Module):
    """Square k×k convolution, stride s, padding k // 2 on every side, NHWC, no groups."""

    features: int
    kernel_size: int
    strides: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32  # computation dtype; parameters are float32
    kernel_init: Any = conv_init
    cpu: bool = False  # the XLA:CPU backward pass (module docstring)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        conv = cpu_conv if self.cpu else _conv
        y = conv(x, kernel, self.strides, k // 2)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
