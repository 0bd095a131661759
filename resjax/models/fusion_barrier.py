"""A fusion barrier: make XLA compute an activation (or its gradient) once, into one buffer.

Why. XLA:CPU lowers a convolution's weight gradient to a convolution over transposed copies of
the layer's input ([C, H, W, N]) and of the output gradient ([H, W, N, C]). Its fusion pass
treats the BN-apply / ReLU / residual-add that produce those tensors as cheap, so it fuses them
into every transposed copy instead of reading the buffer the forward pass already wrote, and it
does so through the residual stream, recomputing up to three blocks' worth of elementwise work
in a cache-hostile transposed order. On the 2-core machine this was ~40-50% of a ResNet-20 train
step (benchmarks/README.md has the profile). `lax.optimization_barrier` does not help: XLA:CPU
removes it before fusion.

How. XLA never duplicates an *expensive* instruction into several consumers, and a
floating-point divide by a non-constant is expensive to it. `x / ones` with an all-ones tensor
XLA cannot constant-fold is therefore computed once and materialised, and every consumer (the
forward conv and the transposed copy) reads that buffer. Dividing by exactly 1.0 is exact for
every float, including infinities, NaNs and signed zeros, so results are unchanged.

Cost: one elementwise pass per barrier, fused with the producers it cuts off. The fusion
problem is XLA:CPU's, so `resjax.models.conv.Conv` applies barriers only in its CPU form
(`ResNet.cpu_convs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _unfoldable_ones(x: jax.Array) -> jax.Array:
    """All ones of x's shape and dtype, computed from x's bits so XLA cannot fold it to 1."""
    uint = _UINT[x.dtype.itemsize]
    one_bits = lax.bitcast_convert_type(jnp.ones((), x.dtype), uint)
    bits = lax.bitcast_convert_type(x, uint)
    # (b | ONE) & ONE == ONE for every b; XLA has no rule that sees it.
    return lax.bitcast_convert_type((bits | one_bits) & one_bits, x.dtype)


def fusion_barrier(x: jax.Array) -> jax.Array:
    """x, bit for bit, as an instruction XLA will not duplicate into its consumers."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x / _unfoldable_ones(x)
