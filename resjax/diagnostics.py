"""Per-block diagnostics of a ResNet: gradient flow, residual-branch size, lesions.

Pure functions of (model, variables, batch); `resjax.diagnose` is the CLI and draws the figures,
and resjax.workdir reads what training logged of them.

    diag = jax.jit(make_block_diagnostics(model))       # model as built for training
    metrics = diag(state.params, state.batch_stats, batch)   # {'diag/stage1_block1/grad_norm': ...}

Every quantity is per block, named as in the unrolled parameter tree (`stage{i}_block{j}`), also
for a scanned model (blocks 2..n of a stage are read along the scanned leading axis):

  grad_norm        ‖∂L/∂θ_block‖: L2 norm of the mean-batch loss gradient over the block's
                   parameters (the loss only: weight decay is the optimizer's).
  input_grad_norm  ‖∂ℓ/∂x‖ for one example's loss ℓ and the block's input x: the per-example
                   L2 norm (B·∂L/∂x_i, L the batch mean), averaged over the batch.
  branch_ratio     ‖F(x)‖/‖shortcut(x)‖ (residual), ‖F(x)‖/‖x‖ (plain): per-example L2 norms,
                   each averaged over the batch. F(x) is the branch output before the addition.
  branch_std       std of F(x) over the batch, pixels and channels (He et al. 2015, Fig. 7).
  last_bn_gamma    mean |γ| of the branch's last BatchNorm.

BatchNorm uses batch statistics, as in a train step (running averages are not updated);
drop-path is off, so that the numbers describe the whole network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resjax.loss import cross_entropy
from resjax.models import ResNet
from resjax.models.blocks import _Block
from resjax.workdir import flatten_diagnostics

Tree = Any


# --- reading per-block values out of (possibly scanned) collections ---


def block_groups(model: ResNet) -> list[tuple[list[str], tuple[str, ...], bool]]:
    """(block names, path in a variable collection, scanned) for each group of blocks.

    Unrolled: one group per block. Scanned: `stage{i}_block1` alone, then blocks 2..n under
    `stage{i}_scan/block`, whose leaves carry a leading axis of n-1.
    """
    groups = []
    for i, n in enumerate(model.stage_sizes, start=1):
        unrolled = 1 if model.scan else n
        for j in range(1, unrolled + 1):
            groups.append(([f"stage{i}_block{j}"], (f"stage{i}_block{j}",), False))
        if n > unrolled:
            names = [f"stage{i}_block{j}" for j in range(2, n + 1)]
            groups.append((names, (f"stage{i}_scan", "block"), True))
    return groups


def _get(tree: Tree, path: tuple[str, ...]) -> Tree:
    for key in path:
        tree = tree[key]
    return tree


def per_block(model: ResNet, tree: Tree, fn: Callable[[Tree], jax.Array]) -> dict[str, jax.Array]:
    """{block name: fn(block's subtree)[k]}: `fn` maps a subtree whose leaves have a leading
    block axis (1 for an unrolled block, n-1 for a scanned group) to a [blocks] array."""
    out = {}
    for names, path, scanned in block_groups(model):
        sub = _get(tree, path)
        if not scanned:
            sub = jax.tree.map(lambda x: x[None], sub)
        values = fn(sub)
        for k, name in enumerate(names):
            out[name] = values[k]
    return out


def _tree_norm(sub: Tree) -> jax.Array:
    """[blocks] L2 norm over all leaves of each block (leading axis = block)."""
    squares = [
        jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=-1)
        for x in jax.tree.leaves(sub)
    ]
    return jnp.sqrt(sum(squares))


def _per_example_norm(x: jax.Array) -> jax.Array:
    """[blocks, B, ...] -> [blocks]: per-example L2 norm, averaged over the batch."""
    x = x.astype(jnp.float32).reshape(x.shape[0], x.shape[1], -1)
    return jnp.mean(jnp.sqrt(jnp.sum(x * x, axis=-1)), axis=-1)


def _last_bn_gamma(sub: Tree) -> jax.Array:
    last = max((k for k in sub if k.startswith("bn")), key=lambda k: int(k[2:]))
    return jnp.mean(jnp.abs(sub[last]["scale"]), axis=-1)


def _sown(name: str) -> Callable[[Tree], jax.Array]:
    return lambda sub: sub[name][0]  # sow keeps a tuple of the values it was given


# --- the training hook ---


def _probe(model: ResNet) -> ResNet:
    """The model with input perturbations, no lesions, no drop-path and no pmap axis name."""
    return model.clone(perturb_inputs=True, lesion=(), drop_path_rate=0.0, axis_name=None)


def _zero_perturbations(probe: ResNet, images: jax.Array) -> Tree:
    shapes = jax.eval_shape(lambda x: probe.init(jax.random.key(0), x, train=True), images)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])


def make_block_diagnostics(
    model: ResNet, *, label_smoothing: float = 0.0
) -> Callable[[Tree, Tree, dict[str, jax.Array]], dict[str, jax.Array]]:
    """A pure, jit-able fn(params, batch_stats, batch) -> {'diag/{block}/{metric}': f32 scalar}.

    `model` is the network as trained (unrolled or scanned, residual or plain, any ordering);
    the function adds the input perturbations itself. `batch` is {'image': [B,H,W,C],
    'label': [B]}; one forward and backward pass of the whole batch, BatchNorm on batch
    statistics. Metrics: see the module docstring (`resjax.workdir.BLOCK_METRICS`).
    """
    probe = _probe(model)

    def diagnostics(params, batch_stats, batch):
        images, labels = batch["image"], batch["label"]
        perturbations = _zero_perturbations(probe, images)

        def loss_fn(params, perturbations):
            logits, state = probe.apply(
                {"params": params, "batch_stats": batch_stats, "perturbations": perturbations},
                images,
                train=True,
                mutable=["batch_stats", "diagnostics"],
            )
            return cross_entropy(logits, labels, label_smoothing).mean(), state["diagnostics"]

        (_, sown), (param_grads, input_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(params, perturbations)
        batch_size = images.shape[0]
        branch = per_block(model, sown, _sown("branch_norm"))
        base = per_block(model, sown, _sown("shortcut_norm" if model.residual else "input_norm"))
        values = {
            "grad_norm": per_block(model, param_grads, _tree_norm),
            "input_grad_norm": per_block(
                model, input_grads, lambda s: batch_size * _per_example_norm(s["input"])
            ),
            "branch_ratio": {k: branch[k] / base[k] for k in branch},
            "branch_std": per_block(model, sown, _sown("branch_std")),
            "last_bn_gamma": per_block(model, params, _last_bn_gamma),
        }
        return flatten_diagnostics(values)

    return diagnostics


# --- at initialisation: the signal from input to output ---


def signal_profile(
    model: ResNet, variables: Tree, batch: dict[str, jax.Array]
) -> dict[str, jax.Array]:
    """Forward and backward signal through every block, on one batch (BN on batch statistics).

    Returns [num_blocks] arrays in block order (input to output):
      output_std       std of each block's output (the signal the next block receives),
      input_grad_norm  per-example ‖∂ℓ/∂x‖ at each block's input,
      grad_norm        ‖∂L/∂θ‖ of each block's parameters,
      branch_ratio     ‖F(x)‖/‖shortcut(x)‖ (plain: ‖F(x)‖/‖x‖),
    and 'loss', 'stem_grad_norm' (scalars). Jit-able; `model` may be scanned.
    """
    probe = _probe(model)
    images, labels = batch["image"], batch["label"]
    perturbations = _zero_perturbations(probe, images)

    def loss_fn(params, perturbations):
        logits, state = probe.apply(
            {
                "params": params,
                "batch_stats": variables["batch_stats"],
                "perturbations": perturbations,
            },
            images,
            train=True,
            mutable=["batch_stats", "diagnostics", "intermediates"],
            capture_intermediates=lambda mdl, method: (
                isinstance(mdl, _Block) and method == "__call__"
            ),
        )
        return cross_entropy(logits, labels).mean(), (state["diagnostics"], state["intermediates"])

    (loss, (sown, inter)), (param_grads, input_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(variables["params"], perturbations)

    def std(sub):
        y = sub["__call__"][0].astype(jnp.float32)
        return jnp.std(y.reshape(y.shape[0], -1), axis=-1)

    names = model.block_names()
    branch = per_block(model, sown, _sown("branch_norm"))
    base = per_block(model, sown, _sown("shortcut_norm" if model.residual else "input_norm"))
    columns = {
        "output_std": per_block(model, inter, std),
        "input_grad_norm": per_block(
            model, input_grads, lambda s: images.shape[0] * _per_example_norm(s["input"])
        ),
        "grad_norm": per_block(model, param_grads, _tree_norm),
        "branch_ratio": {k: branch[k] / base[k] for k in branch},
    }
    out = {k: jnp.stack([v[n] for n in names]) for k, v in columns.items()}
    out["loss"] = loss
    out["stem_grad_norm"] = _tree_norm(jax.tree.map(lambda x: x[None], param_grads["stem_conv"]))[0]
    return out


def at_depth(model: ResNet, depth: int, residual: bool) -> ResNet:
    """`model` with `depth` weighted layers (equal stages of basic blocks: depth = 2 + 2·n·stages)."""
    stages = len(model.stage_sizes)
    per_block_layers = 3 if model.block == "bottleneck" else 2
    step = per_block_layers * stages
    if depth < 2 + step or (depth - 2) % step:
        raise ValueError(
            f"depth must be 2 + {step}·n for {stages} stages of {model.block} blocks "
            f"(e.g. {', '.join(str(2 + step * n) for n in (1, 3, 9, 18))}); got {depth}"
        )
    n = (depth - 2) // step
    return model.clone(stage_sizes=(n,) * stages, residual=residual)


# --- lesion study (Veit et al. 2016) ---


def unscan_variables(model: ResNet, variables: Tree) -> Tree:
    """Variables of a scanned `model` rearranged into the unrolled layout (`stage{i}_block{j}`)."""
    if not model.scan:
        return variables
    out = {}
    for collection, tree in variables.items():
        tree = dict(tree)
        for names, path, scanned in block_groups(model):
            if not scanned or path[0] not in tree:
                continue
            stacked = tree.pop(path[0])[path[1]]
            for k, name in enumerate(names):
                tree[name] = jax.tree.map(lambda x, k=k: x[k], stacked)
        out[collection] = tree
    return out


def _error_fn(model: ResNet) -> Callable:
    @jax.jit
    def counts(variables, batch):
        logits = model.apply(variables, batch["image"], train=False)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
        wrong = (jnp.argmax(logits, -1) != batch["label"]) * mask
        return jnp.sum(wrong), jnp.sum(mask)

    return counts


def error_rate(model: ResNet, variables: Tree, batches: Iterable[dict[str, Any]]) -> float:
    """Top-1 error of `model` (eval mode) over `batches` ({'image', 'label'[, 'mask']})."""
    counts = _error_fn(model)
    wrong = total = 0.0
    for batch in batches:
        w, n = counts(variables, batch)
        wrong, total = wrong + float(w), total + float(n)
    return wrong / total


def lesion_study(
    model: ResNet,
    variables: Tree,
    eval_batches: Callable[[], Iterator[dict[str, Any]]],
    *,
    ks: Sequence[int] = (),
    trials: int = 5,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Test error with each block removed in turn, and with `k` random blocks removed.

    Removing a block (`ResNet.lesion`) leaves its shortcut: residual blocks output
    shortcut(x), plain blocks pass x through (option A subsamples and zero-pads at a shape
    change). BatchNorm is in eval mode (running statistics).

    Args:
      model: the network as trained (scanned models are unrolled here).
      variables: {'params', 'batch_stats'} of `model`.
      eval_batches: returns a fresh iterator of {'image', 'label'[, 'mask']} batches.
      ks: numbers of blocks removed at random, `trials` draws each (distinct blocks per draw).
      seed: the draws derive from it.
      log: called with one line per evaluation (progress).

    Returns:
      {'baseline_error', 'blocks': [names], 'single': [{'block', 'index', 'error'}],
       'random': [{'k', 'errors', 'mean', 'std', 'blocks'}]}.
    """
    variables = unscan_variables(model, variables)
    base = model.clone(scan=False, lesion=(), perturb_inputs=False, axis_name=None)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    names = base.block_names()
    say = log or (lambda s: None)

    def error(removed: Sequence[str]) -> float:
        return error_rate(base.clone(lesion=tuple(removed)), variables, eval_batches())

    baseline = error(())
    say(f"baseline error {baseline:.4f}")
    single = []
    for index, name in enumerate(names):
        single.append({"block": name, "index": index, "error": error([name])})
        say(f"without {name}: {single[-1]['error']:.4f}")
    random = []
    for k in ks:
        if not 0 < k <= len(names):
            raise ValueError(f"k must be in 1..{len(names)} (the blocks); got {k}")
        draws = [
            sorted(np.random.default_rng([seed, k, t]).choice(len(names), k, replace=False))
            for t in range(trials)
        ]
        errors = [error([names[i] for i in d]) for d in draws]
        random.append(
            {
                "k": int(k),
                "errors": errors,
                "mean": float(np.mean(errors)),
                "std": float(np.std(errors)),
                "blocks": [[names[i] for i in d] for d in draws],
            }
        )
        say(f"{k} random blocks removed: {random[-1]['mean']:.4f} ± {random[-1]['std']:.4f}")
    return {"baseline_error": baseline, "blocks": names, "single": single, "random": random}
