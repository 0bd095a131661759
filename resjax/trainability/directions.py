"""Directions in weight space for loss landscapes (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets").

A random Gaussian direction is meaningless on its own in a network whose layers are (nearly)
scale invariant: a step of 1 moves a small filter much further, relatively, than a large one.
Li et al. rescale the direction filter by filter to the norm of the same filter of the weights,
so that a coordinate of 1 means "one filter norm" everywhere and landscapes of different nets
(plain vs residual, sharp vs flat minima) can be compared on the same axes.

Flax kernels are HWIO for convolutions and (in, out) for dense layers: a filter, the weights
of one output channel, is a slice of the *last* axis (PyTorch's filters are the first axis).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Tree = Any


def gaussian_like(key: jax.Array, tree: Tree) -> Tree:
    """Independent N(0, 1) entries with the shapes and dtypes of `tree`'s leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
            for k, x in zip(keys, leaves, strict=False)
        ],
    )


def filter_normalize(direction: Tree, weights: Tree, *, include_1d: bool = False) -> Tree:
    """`direction` with each filter rescaled to the norm of the same filter of `weights`.

    Leaves with two or more axes (conv and dense kernels): filter j is `leaf[..., j]`, and its
    norm is taken over all the other axes. Leaves with fewer axes (biases, BatchNorm γ and β) get
    a zero direction, as Li et al.'s `--xignore biasbn`; with `include_1d` they get the weights
    themselves (what Li et al. do without that flag: a 1-D leaf is one "filter" per entry, and
    |w| rescales any direction to w up to sign).
    """

    def one(d: jax.Array, w: jax.Array) -> jax.Array:
        if jnp.ndim(w) <= 1:
            return jnp.asarray(w) if include_1d else jnp.zeros_like(w)
        axes = tuple(range(jnp.ndim(w) - 1))
        w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        # A filter of zeros in the weights (pruned, or never trained) stays zero.
        return d * jnp.where(d_norm > 0, w_norm / jnp.where(d_norm > 0, d_norm, 1.0), 0.0)

    return jax.tree.map(one, direction, weights)


def random_directions(
    key: jax.Array, weights: Tree, count: int, *, include_1d: bool = False
) -> list[Tree]:
    """`count` independent filter-normalised Gaussian directions around `weights` (params only:
    BatchNorm running statistics are not a direction, they stay the run's own)."""
    keys = jax.random.split(key, count)
    return [
        filter_normalize(gaussian_like(k, weights), weights, include_1d=include_1d) for k in keys
    ]


def difference(start: Tree, end: Tree) -> Tree:
    """end - start, leaf by leaf: the direction of the straight line from `start` to `end`."""
    return jax.tree.map(lambda a, b: jnp.asarray(b) - jnp.asarray(a), start, end)


def filter_norms(tree: Tree) -> Tree:
    """Per-filter norms of every leaf with two or more axes (shape: its last axis); None for
    the others. For tests and for a record that wants to show the normalisation held."""

    def one(x):
        if jnp.ndim(x) <= 1:
            return None
        return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(jnp.ndim(x) - 1))))

    return jax.tree.map(one, tree)
