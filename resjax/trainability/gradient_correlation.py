"""Shattered gradients (Balduzzi et al. 2017, "The Shattered Gradients Problem: If resnets are
the answer, then what is the question?").

A ReLU network with BatchNorm in evaluation mode is piecewise linear in its input, so the
gradient of an output with respect to the input is piecewise constant. How often, and how far,
it changes between nearby inputs is what Balduzzi et al. call shattering: in a deep plain net
the gradients of neighbouring inputs are nearly uncorrelated (white noise, correlation decaying
like 2^-L with depth L), in a residual net they stay correlated (decaying like 1/√L). Noise-like
gradients carry little information about the loss surface, which is their explanation of why
plain nets train badly.

Here: gradients at inputs along a straight line between two training images (Balduzzi et al.
use 256 points of a 1-D input), the Pearson correlation of each gradient with its neighbour's,
and the autocorrelation of the directional derivative along the line (the 1-D function
Balduzzi et al. plot); and the correlation between the gradients of pairs of nearby training
images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resjax.loss import cross_entropy

OUTPUTS = ("logit", "loss")  # the scalar differentiated: the label's logit, or the loss


def calibrated_batch_stats(model: Any, variables: dict[str, Any], images: jax.Array) -> Any:
    """BatchNorm statistics of `images` (network input) at every layer: at initialisation the
    running statistics are still their initial (0, 1), which a deep net's activations are far
    from; these are what training-mode BN would use on this batch. Uses the model with BN
    momentum 0, so the "running" average is exactly this batch's."""
    _, updates = model.clone(bn_momentum=0.0).apply(
        variables, images, train=True, mutable=["batch_stats"]
    )
    return updates["batch_stats"]


def scalar_fn(
    apply_fn: Callable, variables: dict[str, Any], of: str = "logit"
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, label) for one input x [H, W, C]: the label's logit (`of`='logit', the network's
    output as in Balduzzi et al.) or its cross-entropy ('loss'). BatchNorm in evaluation mode,
    so f depends on x alone."""
    if of not in OUTPUTS:
        raise ValueError(f"gradient of {of!r}? choose one of {', '.join(OUTPUTS)}")

    def f(x, label):
        logits = apply_fn(variables, x[None], train=False)[0]
        if of == "logit":
            return logits[label]
        return cross_entropy(logits[None], label[None])[0]

    return f


def input_gradients(f: Callable, inputs: jax.Array, labels: jax.Array) -> jax.Array:
    """∂f/∂x at each of `inputs` [N, H, W, C] (labels [N]): [N, H, W, C]."""
    return jax.jit(jax.vmap(jax.grad(f)))(inputs, labels)


def line(start: jax.Array, end: jax.Array, points: int) -> jax.Array:
    """[points, ...] inputs evenly spaced on the segment from `start` to `end`, both included."""
    t = jnp.linspace(0.0, 1.0, points).reshape((points,) + (1,) * start.ndim)
    return start[None] + t * (end - start)[None]


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of a[i] and b[i], each flattened: [N]. A constant vector (no
    variance) has no correlation: NaN."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(a * b, axis=1) / denom, np.nan)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of the angle between a[i] and b[i], each flattened: [N] (1 for equal vectors,
    whatever they hold: the measure a constant gradient is sure to pass)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(a * b, axis=1) / denom, np.nan)


def autocorrelation(series: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelation of a 1-D series at lags 0..max_lag (1 at lag 0; the series' mean
    removed, normalised by its variance). A constant series has none: NaN beyond lag 0."""
    x = np.asarray(series, np.float64)
    x = x - x.mean()
    var = np.sum(x * x)
    out = np.full(max_lag + 1, np.nan)
    out[0] = 1.0
    if var > 0:
        for k in range(1, max_lag + 1):
            out[k] = np.sum(x[:-k] * x[k:]) / var
    return out


def along_line(
    f: Callable, start: jax.Array, end: jax.Array, label: int, points: int, max_lag: int
) -> dict[str, Any]:
    """Gradients at `points` inputs from `start` to `end` (label fixed), and how they change:
    'neighbour_correlation' / 'neighbour_cosine' between consecutive points' gradients [points-1],
    'directional' the derivative along the line (g · (end - start)) [points], and its
    'autocorrelation' at lags 0..max_lag."""
    inputs = line(start, end, points)
    grads = np.asarray(input_gradients(f, inputs, jnp.full((points,), label, jnp.int32)))
    step = np.asarray(end - start, np.float64).ravel()
    directional = grads.reshape(points, -1).astype(np.float64) @ step
    return {
        "neighbour_correlation": correlations(grads[:-1], grads[1:]),
        "neighbour_cosine": cosines(grads[:-1], grads[1:]),
        "directional": directional,
        "autocorrelation": autocorrelation(directional, max_lag),
    }


def nearest_pairs(images: np.ndarray) -> np.ndarray:
    """For each image, the index of its nearest other image (Euclidean, in network input)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    sq = np.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    return np.argmin(d, axis=1)


def pair_correlation(
    f: Callable, images: jax.Array, labels: jax.Array, partners: np.ndarray
) -> np.ndarray:
    """Correlation between the gradient at each image and at its partner image, both with the
    first image's label (so that they differ only by the input): [N]."""
    grads = np.asarray(input_gradients(f, images, labels))
    partner_grads = np.asarray(input_gradients(f, images[partners], labels))
    return correlations(grads, partner_grads)
