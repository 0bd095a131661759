"""Curvature of a loss: Hessian-vector products, Lanczos, Hutchinson's trace and the spectral
density by stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao 2019).

Everything here works on one flat float32 vector of parameters and a `matvec` v -> Hv, so the
algorithms are tested on a quadratic whose Hessian is known and then run unchanged on a
network. `network_hvp` builds the matvec of a network's mean training loss over a fixed set of
examples: forward-over-reverse (`jax.jvp` of `jax.grad`), one batch at a time, BatchNorm in
evaluation mode (the network is a fixed function of its parameters, as in the landscape).

Numbers that the algorithms return (eigenvalues, densities) are float64 numpy: the
tridiagonal matrices are tiny and their eigendecomposition is done on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from resjax.loss import cross_entropy
from resjax.training.step import Normalize, network_input

MatVec = Callable[[jax.Array], jax.Array]  # flat [n] float32 -> flat [n] float32


# --- the Hessian of a network's loss, as a matvec ---


def network_hvp(
    apply_fn: Callable,
    params: Any,
    batch_stats: Any,
    batches: Sequence[dict[str, Any]],
    normalize_images: Normalize | None = None,
) -> tuple[MatVec, int]:
    """(v -> Hv, n): the Hessian of the mean cross-entropy over every example of `batches`
    (masked rows excluded), with respect to the flattened `params`; BatchNorm in evaluation
    mode with `batch_stats`. Batches are summed on the host, so any number of examples fits.
    Images are normalised once, here; the compiled product is shared by every call with the
    same `apply_fn` (pass one model's `apply` for all checkpoints of a run)."""
    flat, _ = ravel_pytree(params)
    count = float(sum(np.sum(b["mask"]) for b in batches))
    batches = [{**b, "image": network_input(b["image"], normalize_images)} for b in batches]

    def matvec(v: jax.Array) -> jax.Array:
        total = None
        for batch in batches:
            hv = _batch_hvp(apply_fn, params, batch_stats, v, batch)
            total = hv if total is None else total + hv
        return total / count

    return matvec, int(flat.size)


@functools.partial(jax.jit, static_argnums=0)
def _batch_hvp(apply_fn, params, batch_stats, v, batch):
    """H v of the summed loss of one batch: forward-over-reverse, on flat vectors."""
    flat, unravel = ravel_pytree(params)

    def loss_sum(flat_params):
        variables = {"params": unravel(flat_params), "batch_stats": batch_stats}
        logits = apply_fn(variables, batch["image"], train=False)
        return jnp.sum(cross_entropy(logits, batch["label"]) * batch["mask"])

    return jax.jvp(jax.grad(loss_sum), (flat,), (v,))[1]


# --- Lanczos ---


@dataclasses.dataclass(frozen=True)
class Lanczos:
    """m steps of Lanczos from one start vector: the tridiagonal T = V^T H V.

    Attributes:
      alphas: float64 [m], T's diagonal.
      betas: float64 [m], T's off-diagonal (first m-1) and the norm of the residual after the
        last step (betas[-1]), which bounds how far Ritz pairs are from eigenpairs.
      ritz_values: float64 [m], eigenvalues of T, ascending.
      ritz_weights: float64 [m], squared first components of T's eigenvectors: the quadrature
        weights of the start vector's spectral measure (they sum to 1).
      residuals: float64 [m], |betas[-1] * last component| of each Ritz vector: ||Hy - θy||
        for Ritz pair (θ, y), an a-posteriori error bound on θ.
    """

    alphas: np.ndarray
    betas: np.ndarray
    ritz_values: np.ndarray
    ritz_weights: np.ndarray
    residuals: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.alphas)


@jax.jit
def _orthogonalize(basis: jax.Array, w: jax.Array) -> jax.Array:
    """w minus its projection on the rows of `basis` (rows not yet filled are zero), twice:
    classical Gram-Schmidt repeated once is as accurate as modified Gram-Schmidt ("twice is
    enough", Giraud et al. 2005) and is two matrix-vector products."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos(matvec: MatVec, start: jax.Array, steps: int) -> Lanczos:
    """`steps` iterations of Lanczos with full reorthogonalisation against every earlier
    vector: without it, rounding makes converged eigenvalues reappear as spurious copies
    ("ghosts") after a few dozen steps. Stops early if the Krylov space becomes invariant."""
    n = int(start.size)
    steps = min(steps, n)
    basis = jnp.zeros((steps, n), jnp.float32)
    v = start / jnp.linalg.norm(start)
    alphas, betas = [], []
    for j in range(steps):
        basis = basis.at[j].set(v)
        w = matvec(v)
        alpha = float(jnp.vdot(w, v))
        w = _orthogonalize(basis, w)
        beta = float(jnp.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        # Relative to the scale of T: an invariant subspace has been found exactly.
        if beta <= 1e-6 * max(abs(a) for a in alphas) or j == steps - 1:
            break
        v = w / beta
    return _tridiagonal(np.array(alphas), np.array(betas))


def _tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> Lanczos:
    m = len(alphas)
    t = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    values, vectors = np.linalg.eigh(t)
    return Lanczos(
        alphas=alphas,
        betas=betas,
        ritz_values=values,
        ritz_weights=vectors[0] ** 2,
        residuals=np.abs(betas[-1] * vectors[-1]),
    )


def top_eigenvalues(matvec: MatVec, n: int, k: int, steps: int, key: jax.Array) -> dict[str, Any]:
    """The k largest (algebraic) eigenvalues of H by Lanczos from a Gaussian start vector.

    Extreme eigenvalues converge first; `steps` of 2k + 20 or more is usually plenty (the
    residuals say whether they have: each bounds |θ - λ| for some eigenvalue λ of H).
    """
    run = lanczos(matvec, jax.random.normal(key, (n,), jnp.float32), steps)
    order = np.argsort(run.ritz_values)[::-1][:k]
    return {
        "eigenvalues": run.ritz_values[order].tolist(),
        "residuals": run.residuals[order].tolist(),
        "lanczos_steps": run.steps,
        "hvps": run.steps,
    }


# --- trace and density ---


def hutchinson_trace(matvec: MatVec, n: int, probes: int, key: jax.Array) -> dict[str, Any]:
    """tr(H) ≈ mean of zᵀHz over Rademacher vectors z (Hutchinson 1989): unbiased, with the
    smallest variance of the usual probe distributions (2 Σ_{i≠j} H_ij² per probe)."""
    samples = []
    for k in jax.random.split(key, probes):
        z = jax.random.rademacher(k, (n,), jnp.float32)
        samples.append(float(jnp.vdot(z, matvec(z))))
    samples = np.array(samples)
    stderr = float(samples.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan")
    return {"trace": float(samples.mean()), "stderr": stderr, "probes": probes, "hvps": probes}


def spectral_density(
    matvec: MatVec, n: int, steps: int, probes: int, key: jax.Array
) -> dict[str, Any]:
    """Stochastic Lanczos quadrature: for each of `probes` Gaussian start vectors, the Ritz
    values of `steps` Lanczos steps are the nodes and the squared first components of T's
    eigenvectors the weights of a Gauss quadrature of the spectral measure seen from that
    vector; averaged over probes they estimate the eigenvalue density (Ghorbani et al. 2019,
    sec. 2; Lin, Saad and Yang 2016). Returns the nodes and weights (a density is drawn from
    them by `smooth_density`), the trace they imply (n Σ w θ, averaged over probes) and the
    Lanczos runs' residuals."""
    nodes, weights, traces, residuals = [], [], [], []
    for k in jax.random.split(key, probes):
        run = lanczos(matvec, jax.random.normal(k, (n,), jnp.float32), steps)
        nodes.append(run.ritz_values.tolist())
        weights.append(run.ritz_weights.tolist())
        traces.append(float(n * np.sum(run.ritz_weights * run.ritz_values)))
        residuals.append(run.residuals.tolist())
    return {
        "nodes": nodes,
        "weights": weights,
        "trace": float(np.mean(traces)),
        "steps": steps,
        "probes": probes,
        "residuals": residuals,
        "hvps": sum(len(x) for x in nodes),
    }


def smooth_density(
    nodes: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    grid: np.ndarray,
    sigma: float | None = None,
) -> tuple[np.ndarray, float]:
    """(density on `grid`, σ): the quadrature's point masses, each a Gaussian of width σ,
    averaged over probes; integrates to 1. σ defaults to √1e-5 × the nodes' range, the width
    Ghorbani et al. use (σ² = 1e-5 on a spectrum normalised to [-1, 1])."""
    flat = np.concatenate([np.asarray(x, np.float64) for x in nodes])
    if sigma is None:
        span = float(flat.max() - flat.min()) or 1.0
        sigma = np.sqrt(1e-5) * span
    density = np.zeros_like(grid, dtype=np.float64)
    for theta, w in zip(nodes, weights, strict=False):
        theta, w = np.asarray(theta)[:, None], np.asarray(w)[:, None]
        density += np.sum(w * np.exp(-0.5 * ((grid[None] - theta) / sigma) ** 2), axis=0)
    density /= len(nodes) * sigma * np.sqrt(2 * np.pi)
    return density, float(sigma)
