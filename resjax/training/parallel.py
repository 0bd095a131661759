"""Where the steps run, chosen once: jit over a Mesh of every device (the default), or pmap.

`for_config(config)` is the one place that reads `config.parallelism` and `config.bn_stats`.
Whatever it chooses, the training loop calls the same methods: `step`, `evaluate`,
`diagnostics`, `device_state` / `host_state` (the state as the step wants it / as one replicated
global copy, for eval, checkpoints and export), `empty_metrics` / `fetch_metrics`.

    Jit                  train_step jitted over global arrays: batch sharded along 'data',
                         state replicated and donated; BatchNorm over the whole batch
    JitPerDeviceBN       the same under shard_map: each device normalises its own slice
                         ("ghost" BN)
    Pmap                 train_step pmapped over the local devices, host-local batches; global
                         BN through the pmap axis, or per device without it
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax import data, models
from resjax.config import model_overrides
from resjax.diagnostics import make_block_diagnostics
from resjax.models.blocks import check_choice
from resjax.training import step as steps
from resjax.training.step import TrainState

PARALLELISMS = ("jit", "pmap")
BN_STATS = ("global", "per_device")
PMAP_AXIS = "batch"

Metrics = dict[str, jax.Array]


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis 'data'. Its axis type is JAX's
    default (Auto): shardings are given to jit and propagated by the compiler."""
    return Mesh(np.array(jax.devices()), ("data",))


def for_config(
    config: ml_collections.ConfigDict, mesh: Mesh | None = None, splits: data.Splits | None = None
) -> Jit:
    """The parallelism `config` asks for, on `mesh` (default: `make_mesh()`). With `splits`,
    the steps take uint8 batches and normalise them on the device with the data's statistics
    (`splits.normalize_images`); without, they take the images as they come (float)."""
    check_choice("config.parallelism", config.parallelism, PARALLELISMS)
    check_choice("config.bn_stats", config.bn_stats, BN_STATS)
    mesh = make_mesh() if mesh is None else mesh
    normalize = None if splits is None else splits.normalize_images
    global_bn = config.bn_stats == "global"
    if config.parallelism == "pmap":
        return Pmap(config, mesh, normalize, bn_axis_name=PMAP_AXIS if global_bn else None)
    cls = Jit if global_bn else JitPerDeviceBN
    return cls(config, mesh, normalize)


class Jit:
    """train_step under jax.jit over global arrays on `mesh`; the base of the other choices."""

    bn_axis_name: str | None = None  # the axis a model's BatchNorms average over (see Pmap)

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        normalize_images: steps.Normalize | None = None,
    ):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.label_smoothing = config.optim.label_smoothing
        # uint8 batches are normalised on the device, as each step's first op.
        self.normalize_images = normalize_images
        train_step = functools.partial(
            steps.train_step,
            label_smoothing=self.label_smoothing,
            normalize_images=normalize_images,
        )
        self.step_fn = self._compile(train_step)  # state and metrics donated
        self._eval = jax.jit(
            functools.partial(steps.eval_step, normalize_images=normalize_images),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )
        self._diagnostics = None  # compiled on first use

    def _compile(self, train_step):
        return jax.jit(
            train_step,
            in_shardings=(self.replicated, self.batch_sharding, self.replicated),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0, 2),
        )

    @property
    def data_mesh(self) -> Mesh | None:
        """The mesh that training batches are placed on (None: host numpy batches)."""
        return self.mesh

    def build_model(self, config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
        """The configured network, its BatchNorms averaging over `bn_axis_name`."""
        overrides = model_overrides(config, num_classes)
        return models.get_model(config.model.name, **overrides, axis_name=self.bn_axis_name)

    def device_state(self, state: TrainState) -> TrainState:
        """The state as the step wants it."""
        return state

    def host_state(self, state: TrainState) -> TrainState:
        """One replicated copy of the state (for eval, checkpoints and export)."""
        return state

    def empty_metrics(self) -> Metrics:
        return jax.device_put(steps.empty_metrics(), self.replicated)

    def step(self, state: TrainState, batch: dict[str, Any], metrics: Metrics):
        """One train step; returns (state, metrics), the inputs donated."""
        return self.step_fn(state, batch, metrics)

    def fetch_metrics(self, metrics: Metrics) -> dict[str, Any]:
        """Host values of the accumulator."""
        return jax.device_get(metrics)

    def global_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A training batch as one global array sharded along 'data'."""
        return batch

    def evaluate(
        self, state: TrainState, source, splits: data.Splits, config: ml_collections.ConfigDict
    ) -> dict[str, float]:
        """Loss, top-1 error and (for > 10 classes) top-5 error over every example of `source`."""
        state = self.host_state(state)
        totals = None
        for batch in data.eval_batches(
            source,
            splits,
            global_batch_size=config.eval_batch_size,
            mesh=self.mesh,
            data_config=config.data,
            normalize_on_host=self.normalize_images is None,
        ):
            sums = self._eval(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = float(totals["count"])
        result = {"loss": totals["loss"] / count, "error": 1.0 - totals["correct"] / count}
        if splits.num_classes > 10:
            result["top5_error"] = 1.0 - totals["correct5"] / count
        return {k: float(v) for k, v in result.items()}

    def diagnostics(self, model: models.ResNet, state: TrainState, batch) -> dict[str, float]:
        """Per-block gradient flow and branch sizes on `batch` (resjax.diagnostics), on host."""
        if self._diagnostics is None:
            fn = make_block_diagnostics(
                model.clone(axis_name=None), label_smoothing=self.label_smoothing
            )

            def on_network_input(params, batch_stats, batch):
                image = steps.network_input(batch["image"], self.normalize_images)
                return fn(params, batch_stats, {**batch, "image": image})

            self._diagnostics = jax.jit(
                on_network_input,
                in_shardings=(self.replicated, self.replicated, self.batch_sharding),
                out_shardings=self.replicated,
            )
        host = self.host_state(state)
        values = self._diagnostics(host.params, host.batch_stats, self.global_batch(batch))
        return {k: float(v) for k, v in jax.device_get(values).items()}


class JitPerDeviceBN(Jit):
    """Jit with each device normalising its own slice of the batch (shard_map over 'data')."""

    def _compile(self, train_step):
        mapped = jax.shard_map(
            functools.partial(train_step, axis_name="data"),
            mesh=self.mesh,
            in_specs=(P(), P("data"), P()),
            out_specs=(P(), P()),
            check_vma=False,
        )
        return jax.jit(mapped, donate_argnums=(0, 2))


class Pmap(Jit):
    """train_step under jax.pmap over the local devices: the state stacked once per device,
    batches host-local numpy split over the devices, gradients averaged over the pmap axis."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        normalize_images: steps.Normalize | None,
        bn_axis_name: str | None,
    ):
        self.bn_axis_name = bn_axis_name
        self.local_devices = jax.local_device_count()
        super().__init__(config, mesh, normalize_images)

    def _compile(self, train_step):
        return jax.pmap(
            functools.partial(train_step, axis_name=PMAP_AXIS),
            axis_name=PMAP_AXIS,
            donate_argnums=(0, 2),
        )

    @property
    def data_mesh(self) -> Mesh | None:
        return None

    def device_state(self, state: TrainState) -> TrainState:
        # Host copies: pmap splits a host array over its devices; a device array would have
        # to carry pmap's own sharding already.
        n = self.local_devices
        return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *x.shape)), state)

    def host_state(self, state: TrainState) -> TrainState:
        return jax.tree.map(lambda x: jax.device_put(x[0], self.replicated), state)

    def empty_metrics(self) -> Metrics:
        return self.device_state(steps.empty_metrics())

    def step(self, state: TrainState, batch: dict[str, Any], metrics: Metrics):
        n = self.local_devices  # host-local numpy batch -> [local devices, B / devices, ...]
        batch = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
        return self.step_fn(state, batch, metrics)

    def fetch_metrics(self, metrics: Metrics) -> dict[str, Any]:
        # The replicas hold the same (pmean'd) values: the first one is read.
        return jax.tree.map(lambda x: x[0], jax.device_get(metrics))

    def global_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return jax.device_put(batch, self.batch_sharding)
