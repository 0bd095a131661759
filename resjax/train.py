"""Training: the TrainState, a pure train step, evaluation, and `train_and_evaluate`.

    python -m resjax.train --config=configs/fashion_mnist_resnet.py --workdir=/tmp/r20
    python -m resjax.train --config=configs/depth_sweep.py:depth=56,plain=1 --workdir=runs/p56

The step runs under `jax.jit` over global arrays on a 1-D `Mesh` of every device (batch sharded
along 'data', state replicated, state donated), or under `jax.pmap` with
`config.parallelism='pmap'`. BatchNorm statistics are global over the batch by default; with
`config.bn_stats='per_device'` each device normalises its own slice ("ghost" BN), under
`shard_map` (jit) or pmap without a BN axis name.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax import checkpoint, data, models, optim, xla_flags
from resjax.metric_writer import MetricWriter, Progress
from resjax.models.conv import use_cpu_convs

PARALLELISMS = ("jit", "pmap")
BN_STATS = ("global", "per_device")
PMAP_AXIS = "batch"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops without saving the broken state."""


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


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    metrics: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on `batch` ({'image': [B,H,W,C], 'label': [B]}); adds to `metrics`.

    Pure: the caller jits it (global arrays) or maps it (`axis_name` names the device axis under
    pmap/shard_map, over which gradients, BN running statistics and metrics are averaged).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # different drop-path masks on each device
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
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


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Masked sums over one eval batch: loss, top-1 and top-5 correct, example count."""
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"], 0.0)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(loss * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "correct5": jnp.sum(jnp.any(top5 == batch["label"][:, None], -1) * mask),
        "count": jnp.sum(mask),
    }


def model_overrides(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """The `get_model` overrides a config asks for (what export records beside the weights)."""
    overrides = {k: v for k, v in config.model.overrides.items() if v is not None}
    overrides.setdefault("num_classes", num_classes)
    overrides["dtype"] = config.dtype
    return overrides


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
    """The configured network; under pmap with global BN its BatchNorms get the pmap axis."""
    _check_choice("config.parallelism", config.parallelism, PARALLELISMS)
    _check_choice("config.bn_stats", config.bn_stats, BN_STATS)
    overrides = model_overrides(config, num_classes)
    if config.parallelism == "pmap" and config.bn_stats == "global":
        overrides["axis_name"] = PMAP_AXIS
    return models.get_model(config.model.name, **overrides)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis 'data' (FIELD_NOTES: Auto axes)."""
    return Mesh(np.array(jax.devices()), ("data",))


def create_train_state(
    config: ml_collections.ConfigDict,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    sharding: NamedSharding | None = None,
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


class Trainer:
    """The compiled step functions for one parallelism mode, and moving state between modes.

    Keeps `train_and_evaluate` free of per-mode branches: it calls `step`, `evaluate`,
    `host_state` (the replicated state as one global copy) and `device_state`.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
        self.mode = config.parallelism
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        batch_sharding = self._batch_sharding = NamedSharding(mesh, P("data"))
        self._label_smoothing = config.optim.label_smoothing
        self._diagnostics = None  # compiled on first use
        step = functools.partial(train_step, label_smoothing=config.optim.label_smoothing)
        if self.mode == "pmap":
            self._step = jax.pmap(
                functools.partial(step, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                donate_argnums=(0, 2),
            )
            self.local_devices = jax.local_device_count()
        elif config.bn_stats == "per_device":
            mapped = jax.shard_map(
                functools.partial(step, axis_name="data"),
                mesh=mesh,
                in_specs=(P(), P("data"), P()),
                out_specs=(P(), P()),
                check_vma=False,
            )
            self._step = jax.jit(mapped, donate_argnums=(0, 2))
        else:
            self._step = jax.jit(
                step,
                in_shardings=(self.replicated, batch_sharding, self.replicated),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=(0, 2),
            )
        self._eval = jax.jit(
            eval_step, in_shardings=(self.replicated, batch_sharding), out_shardings=self.replicated
        )

    def diagnostics(self, model: models.ResNet, state: TrainState, batch) -> dict[str, float]:
        """Per-block gradient flow and branch sizes on `batch` (resjax.diagnostics), on host."""
        if self._diagnostics is None:
            from resjax.diagnostics import make_block_diagnostics

            fn = make_block_diagnostics(
                model.clone(axis_name=None), label_smoothing=self._label_smoothing
            )
            self._diagnostics = jax.jit(
                fn,
                in_shardings=(self.replicated, self.replicated, self._batch_sharding),
                out_shardings=self.replicated,
            )
        host = self.host_state(state)
        if self.mode == "pmap":  # the host-local batch, as one global array
            batch = jax.device_put(batch, self._batch_sharding)
        values = self._diagnostics(host.params, host.batch_stats, batch)
        return {k: float(v) for k, v in jax.device_get(values).items()}

    def device_state(self, state: TrainState) -> TrainState:
        """The state as the step wants it: replicated global arrays, or stacked per device."""
        if self.mode == "pmap":
            # Host copies: pmap splits a host array over its devices; a device array would have
            # to carry pmap's own sharding already.
            n = self.local_devices
            return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *x.shape)), state)
        return state

    def host_state(self, state: TrainState) -> TrainState:
        """One replicated copy of the state (for eval, checkpoints and export)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: jax.device_put(x[0], self.replicated), state)
        return state

    def empty_metrics(self):
        return (
            self.device_state(empty_metrics())
            if self.mode == "pmap"
            else jax.device_put(empty_metrics(), self.replicated)
        )

    def step(self, state, batch, metrics):
        if self.mode == "pmap":  # host-local numpy batch -> [local devices, B / devices, ...]
            n = self.local_devices
            batch = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
        return self._step(state, batch, metrics)

    def fetch_metrics(self, metrics) -> dict[str, float]:
        """Host values of the accumulator (first replica under pmap: they are pmean'd)."""
        values = jax.device_get(metrics)
        if self.mode == "pmap":
            values = jax.tree.map(lambda x: x[0], values)
        return values

    def evaluate(self, state: TrainState, source, splits, config) -> dict[str, float]:
        """Loss, top-1 error and (for > 10 classes) top-5 error over every example of `source`."""
        state = self.host_state(state)
        totals = None
        for batch in data.eval_batches(
            source, splits, global_batch_size=config.eval_batch_size, mesh=self.mesh
        ):
            sums = self._eval(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = float(totals["count"])
        result = {"loss": totals["loss"] / count, "error": 1.0 - totals["correct"] / count}
        if splits.num_classes > 10:
            result["top5_error"] = 1.0 - totals["correct5"] / count
        return {k: float(v) for k, v in result.items()}


def check_workdir(workdir: Path) -> None:
    """Fails before training when the workdir cannot be written (probe file, then removed)."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe_{jax.process_index()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise OSError(f"workdir {workdir} is not writable: {e.strerror or e}") from e


class Preempted(SystemExit):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run stopped. Exits 0 when
    uncaught, so that a scheduler requeues the job and the rerun resumes."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


def environment(model: models.ResNet) -> dict[str, Any]:
    """What a run's speed and numbers depend on beyond its config: versions, devices, flags."""
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        **versions,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "resjax_xla_defaults": xla_flags.status(),
        "cpu_convs": use_cpu_convs(model.cpu_convs),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`; returns the final results (also written to results.json).

    Resumes automatically from the latest checkpoint in `workdir`; a finished run returns its
    results without training. Final-step numbers are reported (not the best test epoch); the
    validation split is what any selection (the best checkpoint) uses.
    """
    workdir = Path(workdir)
    check_workdir(workdir)
    if config.get("compilation_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", str(config.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    splits = data.load_splits(
        config.data, train_split=config.data.train_split, test_split=config.data.test_split
    )
    model = build_model(config, splits.num_classes)
    mesh = make_mesh()
    trainer = Trainer(config, mesh)
    train_iter = data.TrainIterator(
        splits,
        global_batch_size=config.batch_size,
        seed=config.seed,
        data_config=config.data,
        mesh=None if config.parallelism == "pmap" else mesh,
    )
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = optim.steps_from(config, steps_per_epoch)
    boundaries = optim.decay_boundaries(config.optim, steps_per_epoch)
    schedule = optim.learning_rate_schedule(config.optim, total_steps, boundaries)
    tx = optim.make_optimizer(config.optim, schedule)
    lead = jax.process_index() == 0
    config_json = json.loads(config.to_json_best_effort())

    def init_state():
        return create_train_state(config, model, tx, splits.image_shape, trainer.replicated)

    abstract = jax.eval_shape(init_state)  # shapes before FLOPs: nothing allocated yet
    param_shapes = checkpoint.shapes_of(abstract.params)
    num_params = sum(int(np.prod(s)) for s in param_shapes.values())
    ckpt = checkpoint.Checkpointer(
        workdir, keep=config.keep_checkpoints, track_best=splits.val is not None
    )
    latest = ckpt.latest_step()
    if latest is not None:
        changes = checkpoint.check_compatible(
            ckpt.read_meta(latest), param_shapes, config_json, workdir
        )
        results_file = workdir / "results.json"
        if latest >= total_steps and results_file.exists():
            ckpt.close()
            if lead:
                print(f"{workdir}: already finished at step {latest}; results in {results_file}")
            return json.loads(results_file.read_text())
        arrays, meta = ckpt.restore(abstract, trainer.replicated, latest)
        state = abstract.replace(**arrays)
        train_iter.set_state(meta["data"])
        checkpoint.record_resume(workdir, latest, changes)
    else:
        state = init_state()
        train_iter.set_state({"batches_consumed": 0})
    start_step = int(state.step)
    if train_iter.get_state()["batches_consumed"] != start_step:
        raise checkpoint.CheckpointMismatchError(
            f"{workdir}: checkpoint at step {start_step} has data position "
            f"{train_iter.get_state()}; expected one batch per step"
        )

    writer = MetricWriter(workdir)
    if lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        with (workdir / "environment.jsonl").open("a") as f:  # one line per start or resume
            f.write(json.dumps({"start_step": start_step, **environment(model)}) + "\n")
    progress = Progress(total_steps, start_step)
    progress.message(
        f"{config.model.name} ({'residual' if model.residual else 'plain'}, depth {model.depth}) "
        f"{num_params:,} params | {splits.name} {splits.image_shape} | global batch "
        f"{config.batch_size} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es), {config.parallelism} | {total_steps} steps "
        f"({steps_per_epoch}/epoch)" + (f" | resumed at step {start_step}" if start_step else "")
    )

    def save(state, wait=False):
        meta = {
            "data": train_iter.get_state(),
            "model_description": checkpoint.describe_model(config_json),
            "param_shapes": param_shapes,
            "config": config_json,
        }
        ckpt.save(trainer.host_state(state), meta, history.get("val_error"), wait=wait)

    state = trainer.device_state(state)
    metrics = trainer.empty_metrics()
    history: dict[str, Any] = {}
    run_start = window_start = time.perf_counter()
    window_step = start_step
    watch = checkpoint.PreemptionWatch()
    try:
        for step in range(start_step, total_steps):
            batch = next(train_iter)
            state, metrics = trainer.step(state, batch, metrics)
            done = step + 1
            if done % config.log_every_steps == 0 or done == total_steps:
                values = trainer.fetch_metrics(metrics)
                if values["nonfinite_step"] >= 0:
                    raise NonFiniteLossError(
                        f"training loss became non-finite at step {int(values['nonfinite_step'])}"
                        f"; stopped, results logged before it are kept in {workdir}"
                    )
                elapsed = time.perf_counter() - window_start
                n = int(values["steps"])
                train = {
                    "train_loss": float(values["loss"]) / n,
                    "train_error": float(values["error"]) / n,
                    "learning_rate": float(schedule(step)),
                    "images_per_s": (done - window_step) * config.batch_size / elapsed,
                    "epoch": done / steps_per_epoch,
                }
                writer.write(done, train)
                history.update(train)
                progress.update(
                    done,
                    loss=train["train_loss"],
                    err=train["train_error"],
                    img_s=round(train["images_per_s"]),
                )
                metrics = trainer.empty_metrics()
                window_start, window_step = time.perf_counter(), done
            if config.diagnostics_every_steps and done % config.diagnostics_every_steps == 0:
                writer.write(done, trainer.diagnostics(model, state, batch))
            if done == total_steps:
                break  # the final evaluation and checkpoint follow the loop
            if config.eval_every_steps and done % config.eval_every_steps == 0:
                history.update(_evaluate_splits(trainer, state, splits, config, writer, done))
                progress.message(_eval_line(done, history))
                window_start = time.perf_counter()
            if config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
                save(state)
            if watch.requested(done):
                save(state, wait=True)
                raise Preempted(
                    f"{watch.signal_name}: saved a checkpoint at step {done} in {workdir}; "
                    "rerun the same command to resume"
                )
    except BaseException:
        ckpt.wait()  # a save already under way still completes: never leave it half-done
        ckpt.close()
        raise
    finally:
        watch.close()
        train_iter.close()
        progress.close()

    # Usually total_steps; more when a run checkpointed past a total_steps lowered on resume.
    final_step = int(jax.device_get(trainer.host_state(state).step))
    final = _evaluate_splits(trainer, state, splits, config, writer, final_step)
    history.update(final)
    progress.message(_eval_line(final_step, history))
    if ckpt.latest_step() != final_step:
        save(state, wait=True)
    ckpt.wait()
    ckpt.close()
    previous = workdir / "results.json"
    wall = time.perf_counter() - run_start
    if start_step and previous.exists():  # a run extended on resume: wall time adds up
        wall += json.loads(previous.read_text()).get("wall_time_s", 0.0)
    results = {
        "model": config.model.name,
        "residual": bool(model.residual),
        "depth": model.depth,
        "params": num_params,
        "dataset": splits.name,
        "steps": final_step,
        "epochs": final_step / steps_per_epoch,
        "seed": config.seed,
        "wall_time_s": wall,
        **{k: v for k, v in history.items() if k not in ("learning_rate", "epoch")},
    }
    if lead:
        tmp = workdir / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(workdir / "results.json")  # atomic: results.json means "finished"
    writer.close()
    return results


def _evaluate_splits(trainer, state, splits, config, writer, step) -> dict[str, float]:
    out = {}
    for name in ("val", "test"):
        source = getattr(splits, name)
        if source is None:
            continue
        out.update(
            {f"{name}_{k}": v for k, v in trainer.evaluate(state, source, splits, config).items()}
        )
    writer.write(step, out)
    return out


def _eval_line(step: int, history: dict[str, float]) -> str:
    parts = [
        f"{k} {history[k]:.4f}" for k in ("val_error", "test_error", "test_loss") if k in history
    ]
    return f"eval @ {step}: " + ", ".join(parts)


def maybe_initialize_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Joins a multi-process run when launched as one: flags, JAX's env vars, or SLURM (srun).

    Must run before any other JAX call. A single process (no flags, no env) does nothing.
    """
    import os

    if coordinator_address or num_processes:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, ...
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
        jax.distributed.initialize()  # JAX's SLURM cluster detection (srun, one task per host)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file[:ARG].", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
    flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
    flags.DEFINE_string(
        "point", None, "Run only this named point of the config's sweep (see resjax.sweep)."
    )
    flags.mark_flags_as_required(["config"])  # --workdir defaults to runs/<config>[_<arg>]


def main(argv: list[str]) -> None:
    """`python -m resjax.train --config=FILE[:ARG] --workdir=DIR [--config.key=value ...]`.

    When FILE[:ARG] names a sweep (FILE defines `sweep(ARG)`), every point runs in turn in
    DIR/<point>/ and the report is written to DIR (resjax.sweep, resjax.report).
    """
    import sys

    from absl import flags

    from resjax import sweep

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    config_file, arg = sweep.split_config_spec(f["config"].config_filename)
    workdir = f.workdir or str(sweep.default_workdir(config_file, arg))
    maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    try:
        if f.point or sweep.is_sweep(config_file, arg):
            overrides = f["config"].override_values
            raise SystemExit(
                sweep.run_from_flags(config_file, arg, overrides, workdir, point=f.point)
            )
        train_and_evaluate(f.config, workdir)
    except Preempted as e:
        print(e.message, file=sys.stderr)
        raise SystemExit(0) from None
    except (NonFiniteLossError, data.DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
