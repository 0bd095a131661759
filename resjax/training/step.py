"""The pure functions of training: the TrainState, one SGD step, one eval step, initialisation.

Nothing here knows about devices: `resjax.training.parallel` jits or maps these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Sharding

from resjax import models
from resjax.loss import cross_entropy

Normalize = Callable[[jax.Array], jax.Array]  # uint8 images -> float32 network input


class TrainState(struct.PyTreeNode):
    """Everything a step needs and a restart must restore (the data position is kept beside it).

    `rng` is raw uint32 key data, so that the whole state is plain arrays (checkpointable);
    a step's randomness is `fold_in(rng, step)`.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


def empty_metrics() -> dict[str, jax.Array]:
    """The on-device accumulator that train steps add to; fetched every `log_every_steps`."""
    return {
        "loss": jnp.zeros((), jnp.float32),
        "error": jnp.zeros((), jnp.float32),
        "steps": jnp.zeros((), jnp.int32),
        "nonfinite_step": jnp.full((), -1, jnp.int32),  # first step whose loss was NaN/Inf
    }


def network_input(images: jax.Array, normalize_images: Normalize | None) -> jax.Array:
    """The images a network sees: uint8 ones normalised by `normalize_images` (the data's
    `Splits.normalize_images`), here on the device; float ones as they come."""
    if images.dtype != jnp.uint8:
        return images
    if normalize_images is None:
        raise ValueError(
            "uint8 images reached the step without the dataset's normalisation: pass "
            "normalize_images=splits.normalize_images (e.g. to "
            "parallel.compile_train_step(config, mesh, splits.normalize_images))"
        )
    return normalize_images(images)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    metrics: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    normalize_images: Normalize | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on `batch` ({'image': [B,H,W,C], 'label': [B]}); adds to `metrics`.

    Pure: the caller jits it (global arrays) or maps it (`axis_name` names the device axis under
    pmap/shard_map, over which gradients, BN running statistics and metrics are averaged).
    uint8 images are normalised with `normalize_images` as the step's first op (a quarter of
    float32's bytes cross from the host; the same bits as normalising there).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # different drop-path masks on each device
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    images = network_input(batch["image"], normalize_images)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    error = jnp.mean(jnp.argmax(logits, -1) != batch["label"])
    if axis_name is not None:
        grads, batch_stats, loss, error = jax.lax.pmean(
            (grads, batch_stats, loss, error), axis_name
        )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    bad = ~jnp.isfinite(loss) & (metrics["nonfinite_step"] < 0)
    metrics = {
        "loss": metrics["loss"] + loss,
        "error": metrics["error"] + error,
        "steps": metrics["steps"] + 1,
        "nonfinite_step": jnp.where(bad, state.step.astype(jnp.int32), metrics["nonfinite_step"]),
    }
    return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], normalize_images: Normalize | None = None
) -> dict[str, jax.Array]:
    """Masked sums over one eval batch: loss, top-1 and top-5 correct, example count (uint8
    images normalised first, as in `train_step`)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return eval_sums(state.apply_fn, variables, batch, normalize_images)


def sum_over_batches(
    eval_fn: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
    state: Any,
    batches: Any,
) -> dict[str, np.ndarray]:
    """`eval_fn(state, batch)`'s sums (e.g. a compiled `eval_step`) added over `batches`,
    fetched to the host once at the end: {'loss', 'correct', 'correct5', 'count'}."""
    totals = None
    for batch in batches:
        sums = eval_fn(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("no evaluation batches: the split has no examples")
    return jax.device_get(totals)


def eval_sums(
    apply_fn,
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    normalize_images: Normalize | None = None,
) -> dict[str, jax.Array]:
    """`eval_step` for any network's `apply` and variables (e.g. a portable weights file)."""
    logits = apply_fn(variables, network_input(batch["image"], normalize_images), train=False)
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"])
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(loss * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "correct5": jnp.sum(jnp.any(top5 == batch["label"][:, None], -1) * mask),
        "count": jnp.sum(mask),
    }


def create_train_state(
    config: ml_collections.ConfigDict,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    sharding: Sharding | None = None,
) -> TrainState:
    """Initialises parameters and optimizer state from `config.seed`, replicated on `sharding`."""
    root = jax.random.PRNGKey(config.seed)  # raw uint32[2]: plain array, checkpointable
    init_rng, train_rng = jax.random.split(root)

    def init():
        variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=train_rng,
            apply_fn=model.apply,
            tx=tx,
        )

    return jax.jit(init, out_shardings=sharding)()
