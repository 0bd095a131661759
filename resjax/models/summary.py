"""Shapes before FLOPs: parameter counts and variable shapes via jax.eval_shape, no allocation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def default_input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """A one-image NHWC input of the size the network was designed for (224² or 32²)."""
    return (1, 224, 224, 3) if getattr(model, "stem", "cifar") == "imagenet" else (1, 32, 32, 3)


def init_shapes(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> Any:
    """The model's variables as jax.ShapeDtypeStructs (params, batch_stats, ...), nothing allocated."""
    shape = input_shape or default_input_shape(model)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count_params(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Trainable parameters (BN scale/bias and biases included; BN running statistics not)."""
    params = init_shapes(model, input_shape)["params"]
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
