"""Where the steps run, chosen by the config: how the pure steps of `step.py` are compiled and
how the state and a batch are laid out for them. Nothing else differs between the choices.

    config.parallelism  config.bn_stats
    'jit' (default)     'global' (default)  train_step jitted over global arrays on a Mesh of
                                            every device: batch sharded along 'data', state
                                            replicated and donated; BatchNorm over the whole
                                            batch, as on one device
    'jit'               'per_device'        the same step under shard_map: each device
                                            normalises its own slice ("ghost" BN)
    'pmap'              either              train_step pmapped over the local devices: state
                                            stacked per device, host-local numpy batches split
                                            over them; global BN through pmap's axis

The loop, evaluation, diagnostics and checkpoints all see one replicated global copy of the
state (`TrainStep.global_state`); only `TrainStep.run` sees the step's own layout.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax import models
from resjax.config import model_overrides
from resjax.diagnostics import make_block_diagnostics
from resjax.models.blocks import check_choice
from resjax.training import step as steps

PARALLELISMS = ("jit", "pmap")
BN_STATS = ("global", "per_device")
PMAP_AXIS = "batch"

Metrics = dict[str, jax.Array]


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis 'data'. Its axis type is JAX's
    default (Auto): shardings are given to jit and propagated by the compiler."""
    return Mesh(np.array(jax.devices()), ("data",))


def bn_axis_name(config: ml_collections.ConfigDict) -> str | None:
    """The axis a model's BatchNorms average their batch moments over: pmap's, for global
    statistics under pmap; None otherwise (jit over global arrays computes global statistics
    itself, and per-device statistics need no axis in the model)."""
    check_choice("config.parallelism", config.parallelism, PARALLELISMS)
    check_choice("config.bn_stats", config.bn_stats, BN_STATS)
    return PMAP_AXIS if config.parallelism == "pmap" and config.bn_stats == "global" else None


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
    """The network `config` names, its BatchNorms averaging over the parallelism's axis."""
    overrides = model_overrides(config, num_classes)
    return models.get_model(config.model.name, **overrides, axis_name=bn_axis_name(config))


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The compiled train step and the layout it wants.

    Attributes:
      name: which choice this is ('jit', 'jit+shard_map', 'pmap'), for messages and tests.
      run: (state, batch, metrics) -> (state, metrics), state and metrics donated; the state
        and metrics in the layout `step_state` / `empty_metrics` give, the batch as
        `data.TrainIterator(mesh=data_mesh)` yields it.
      data_mesh: where training batches are placed (None: host numpy batches, which pmap
        splits over the local devices).
      step_state: a replicated global state -> the state as `run` takes it.
      global_state: a state as `run` returns it -> one replicated global copy.
      empty_metrics: a fresh on-device accumulator for `run`.
      read_metrics: `run`'s accumulator -> host values.
    """

    name: str
    run: Callable[[Any, dict[str, Any], Metrics], tuple[Any, Metrics]]
    data_mesh: Mesh | None
    step_state: Callable[[Any], Any]
    global_state: Callable[[Any], Any]
    empty_metrics: Callable[[], Metrics]
    read_metrics: Callable[[Metrics], dict[str, Any]]


def compile_train_step(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    normalize_images: steps.Normalize | None = None,
) -> TrainStep:
    """`step.train_step` wrapped as `config.parallelism` and `config.bn_stats` ask, on `mesh`.

    `normalize_images` (the data's `Splits.normalize_images`) turns uint8 batches into the
    network's input on the device, as the step's first op; without it the step takes float
    images as they come."""
    bn_axis_name(config)  # the choices are checked
    train_step = functools.partial(
        steps.train_step,
        label_smoothing=config.optim.label_smoothing,
        normalize_images=normalize_images,
    )
    replicated = NamedSharding(mesh, P())
    if config.parallelism == "pmap":
        return _pmap(train_step, replicated)
    if config.bn_stats == "per_device":
        mapped = jax.shard_map(
            functools.partial(train_step, axis_name="data"),
            mesh=mesh,
            in_specs=(P(), P("data"), P()),
            out_specs=(P(), P()),
            check_vma=False,
        )
        name, run = "jit+shard_map", jax.jit(mapped, donate_argnums=(0, 2))
    else:
        name, run = (
            "jit",
            jax.jit(
                train_step,
                in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
                out_shardings=(replicated, replicated),
                donate_argnums=(0, 2),
            ),
        )
    return TrainStep(
        name=name,
        run=run,
        data_mesh=mesh,
        step_state=lambda state: state,  # already global and replicated
        global_state=lambda state: state,
        empty_metrics=lambda: jax.device_put(steps.empty_metrics(), replicated),
        read_metrics=jax.device_get,
    )


def _pmap(train_step: Callable, replicated: NamedSharding) -> TrainStep:
    n = jax.local_device_count()
    run = jax.pmap(
        functools.partial(train_step, axis_name=PMAP_AXIS),
        axis_name=PMAP_AXIS,
        donate_argnums=(0, 2),
    )

    def stacked(tree):
        # Host copies: pmap splits a host array over its devices; a device array would have to
        # carry pmap's own sharding already.
        return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *x.shape)), tree)

    def split(batch):  # host-local numpy batch -> [local devices, B / devices, ...]
        return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

    return TrainStep(
        name="pmap",
        run=lambda state, batch, metrics: run(state, split(batch), metrics),
        data_mesh=None,
        step_state=stacked,
        global_state=lambda state: jax.tree.map(lambda x: jax.device_put(x[0], replicated), state),
        empty_metrics=lambda: stacked(steps.empty_metrics()),
        # The replicas hold the same (pmean'd) values: the first one is read.
        read_metrics=lambda metrics: jax.tree.map(lambda x: x[0], jax.device_get(metrics)),
    )


def compile_eval_step(
    mesh: Mesh, normalize_images: steps.Normalize | None = None
) -> Callable[[Any, dict[str, Any]], Metrics]:
    """`step.eval_step` jitted on `mesh`: a replicated global state, a batch sharded along
    'data' (as `data.eval_batches(mesh=mesh)` yields it) -> masked sums, replicated."""
    return jax.jit(
        functools.partial(steps.eval_step, normalize_images=normalize_images),
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
        out_shardings=NamedSharding(mesh, P()),
    )


def compile_diagnostics(
    model: models.ResNet,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    normalize_images: steps.Normalize | None = None,
) -> Callable[[Any, dict[str, Any]], dict[str, float]]:
    """(global state, training batch) -> per-block gradient flow and branch sizes
    (resjax.diagnostics) as host floats; the batch in any of TrainStep's layouts."""
    fn = make_block_diagnostics(
        model.clone(axis_name=None), label_smoothing=config.optim.label_smoothing
    )
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def on_network_input(params, batch_stats, batch):
        image = steps.network_input(batch["image"], normalize_images)
        return fn(params, batch_stats, {**batch, "image": image})

    compiled = jax.jit(
        on_network_input, in_shardings=(replicated, replicated, sharded), out_shardings=replicated
    )

    def diagnose(state, batch):
        batch = jax.device_put(batch, sharded)  # pmap's host batch; a no-op for jit's
        values = compiled(state.params, state.batch_stats, batch)
        return {k: float(v) for k, v in jax.device_get(values).items()}

    return diagnose
