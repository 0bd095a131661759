"""JAX/Flax CIFAR ResNet train-step benchmark, the counterpart of torch_resnet.py.

    python benchmarks/jax_resnet.py --batch_size=128
    python benchmarks/jax_resnet.py --bn=onepass --json

XLA flags must be in the environment before `import jax`:
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/jax_resnet.py

Model: the same CIFAR ResNet-(6n+2) as torch_resnet.py (269,722 parameters at depth 20), NHWC,
fp32, BN in train mode; SGD momentum 0.9, lr 0.1, wd 1e-4 through optax; the whole step is one
jit with the state donated; the host synchronises only at window edges. Switches select the
formulations compared in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax import lax

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_KINDS = ("flax", "flax_two_pass", "onepass")


class OnePassBatchNorm(nn.Module):
    """Train-mode BN over all axes but the last: E[x] and E[x^2] in one pass, then one FMA.

    Same parameters and batch_stats as nn.BatchNorm (scale, bias; mean, var), momentum as flax.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = scale * lax.rsqrt(var + self.epsilon)
        return x * mul + (bias - mean * mul)


def make_bn(kind: str, name: str) -> nn.Module:
    """Train-mode BN of the given formulation (momentum 0.9 = PyTorch's 0.1)."""
    if kind == "onepass":
        return OnePassBatchNorm(name=name)
    return nn.BatchNorm(
        use_running_average=False, momentum=0.9, use_fast_variance=kind == "flax", name=name
    )


def make_conv(features: int, strides: int, name: str) -> nn.Module:
    """3x3 conv, padding 1 on each side (as PyTorch; SAME would pad 0/1 at stride 2), no bias."""
    return nn.Conv(
        features,
        (3, 3),
        strides,
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=conv_init,
        name=name,
    )


class Block(nn.Module):
    """Post-activation basic block with an option-A shortcut (He et al. 2015)."""

    features: int
    strides: int = 1
    bn: str = "flax"

    def _conv(self, strides: int, name: str):
        return make_conv(self.features, strides, name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(make_bn(self.bn, "bn1")(self._conv(self.strides, "conv1")(x)))
        y = make_bn(self.bn, "bn2")(self._conv(1, "conv2")(y))
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        if x.shape[-1] != self.features:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        out = nn.relu(y + x)
        return out


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2), NHWC: [N, 32, 32, 3] -> [N, num_classes] logits."""

    depth: int = 20
    num_classes: int = 10
    bn: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {self.depth}"
            )
        n = (self.depth - 2) // 6
        x = make_conv(16, 1, "stem_conv")(x)
        x = nn.relu(make_bn(self.bn, "stem_bn")(x))
        for stage, width in enumerate((16, 32, 64)):
            for j in range(n):
                x = Block(
                    width,
                    2 if stage > 0 and j == 0 else 1,
                    bn=self.bn,
                    name=f"stage{stage + 1}_block{j + 1}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def make_train_step(depth: int = 20, batch_size: int = 128, bn: str = "flax"):
    """Returns (run, n_params, compile_s): `run(k)` does k jitted train steps, then syncs."""
    model = CifarResNet(depth, bn=bn)
    rng = jax.random.PRNGKey(0)
    x = jax.random.normal(rng, (batch_size, 32, 32, 3), jnp.float32)
    y = jax.random.randint(rng, (batch_size,), 0, 10)
    variables = model.init(rng, x[:2])
    params, batch_stats = variables["params"], variables["batch_stats"]
    n_params = sum(v.size for v in jax.tree.leaves(params))
    # He et al. 2015, sec. 4.2: SGD, momentum 0.9, lr 0.1, weight decay 1e-4 (coupled, as torch).
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))

    def train_step(params, batch_stats, opt_state, x, y):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    state = [params, batch_stats, tx.init(params)]
    t0 = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(*state, x, y).compile()
    compile_s = time.perf_counter() - t0

    def run(k: int) -> float:
        loss = None
        for _ in range(k):
            state[0], state[1], state[2], loss = step(*state, x, y)
        return float(jax.block_until_ready(loss))

    return run, n_params, compile_s


def make_resjax_step(depth: int = 20, batch_size: int = 128):
    """resjax's own train step for `resnet{depth}`, as `python -m resjax.train` runs it.

    Same contract as make_train_step. Uses resjax's defaults: its BatchNorm, `cpu_convs` on
    the CPU, and its XLA flags (effective only if `resjax.xla_flags.apply_defaults()` ran before any
    JAX computation). Optimiser: He et al.'s SGD (momentum 0.9, lr 0.1, L2 1e-4).
    """
    import numpy as np
    from jax.sharding import Mesh

    from resjax import bench
    from resjax.config import base_config

    config = base_config()
    config.model.name = f"resnet{depth}"
    config.batch_size = batch_size
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    train_step, state, batch, _ = bench.prepare(config, mesh, (32, 32, 3), 10)
    n_params = sum(v.size for v in jax.tree.leaves(state.params))
    metrics = train_step.empty_metrics()
    t0 = time.perf_counter()
    train_step.run.lower(state, batch, metrics).compile()
    compile_s = time.perf_counter() - t0
    box = [train_step.step_state(state), metrics]

    def run(k: int) -> float:
        for _ in range(k):
            box[0], box[1] = train_step.run(box[0], batch, box[1])
        return float(jax.block_until_ready(box[1]["loss"]))

    return run, n_params, compile_s


def time_window(run, steps: int, batch_size: int) -> float:
    """(images/s, cpu share) over one window of `steps` train steps (one sync at the end).

    cpu share = process CPU time / (wall time x cores): near 1 when no other process took cores.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    run(steps)
    wall = time.perf_counter() - t0
    return steps * batch_size / wall, (time.process_time() - c0) / wall / os.cpu_count()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--bn", default="flax", choices=BN_KINDS)
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--window_steps", type=int, default=10)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    run, n_params, compile_s = make_train_step(args.depth, args.batch_size, args.bn)
    run(args.warmup_steps)
    windows = [time_window(run, args.window_steps, args.batch_size) for _ in range(args.windows)]
    rates = [r for r, _ in windows]
    result = {
        "framework": "jax",
        "jax": jax.__version__,
        "depth": args.depth,
        "params": int(n_params),
        "batch_size": args.batch_size,
        "bn": args.bn,
        "compile_s": round(compile_s, 2),
        "img_per_s": round(statistics.median(rates), 1),
        "img_per_s_windows": [round(r, 1) for r in rates],
    }
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
