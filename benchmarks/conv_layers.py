"""One 3×3 convolution layer, forward and each backward pass, XLA:CPU vs PyTorch channels_last.

    python benchmarks/conv_layers.py                          # XLA's default (YNNPACK) kernels
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \\
        python benchmarks/conv_layers.py                      # Eigen kernels (resjax's default)

Batch 128, stride 1, padding 1, fp32, at the three CIFAR ResNet stage shapes. JAX times are the
forward conv, the input gradient and the weight gradient (with XLA's transposes), each its own
jit; PyTorch times are the forward (no grad) and forward + backward. Milliseconds per call,
mean of 20 after one warm-up call. Does not import resjax, so XLA_FLAGS is exactly as given.
Without torch installed (another stack's interpreter) it prints the XLA columns only.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
    import torch
except ImportError:  # another stack's interpreter: XLA's columns only
    torch = None

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = ((16, 32), (32, 16), (64, 8))  # (channels, height = width)


def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def jax_ms(fn, *args, n=20):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3


def torch_ms(fn, n=20):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda a: conv(a, k), x)[1](g)[0])
    dw = jax.jit(lambda x, k, g: jax.vjp(lambda b: conv(x, b), k)[1](g)[0])
    print(f"jax {jax.__version__}")
    for c, hw in SHAPES:
        x, g = (jnp.asarray(rng.normal(size=(128, hw, hw, c)), jnp.float32) for _ in range(2))
        k = jnp.asarray(0.1 * rng.normal(size=(3, 3, c, c)), jnp.float32)
        xla = (
            f"{c:3d} ch at {hw:2d}²: XLA fwd {jax_ms(fwd, x, k):5.2f}  input-grad "
            f"{jax_ms(dx, x, k, g):5.2f}  weight-grad {jax_ms(dw, x, k, g):5.2f} ms"
        )
        if torch is None:
            print(xla)
            continue
        layer = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        layer = layer.to(memory_format=torch.channels_last)
        tx = torch.randn(128, c, hw, hw).to(memory_format=torch.channels_last).requires_grad_()
        tg = torch.randn(128, c, hw, hw).to(memory_format=torch.channels_last)

        def torch_fwd(layer=layer, tx=tx):
            with torch.no_grad():
                layer(tx)

        def torch_fwd_bwd(layer=layer, tx=tx, tg=tg):
            layer(tx).backward(tg)

        print(
            f"{xla} | PyTorch fwd {torch_ms(torch_fwd):5.2f}  "
            f"fwd+bwd {torch_ms(torch_fwd_bwd):5.2f} ms"
        )


if __name__ == "__main__":
    main()
