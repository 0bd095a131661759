"""The training loop: `train_and_evaluate(config, workdir)`, resumable, step by named step.

    results = train_and_evaluate(config, "runs/r20")   # also written to runs/r20/results.json

Resumes automatically from the latest checkpoint in the workdir that restores (a damaged newer
one is moved aside, with a warning); a finished run returns its results without training. A
SIGTERM/SIGINT at any moment saves a checkpoint and raises Preempted (exit status 0). What the
workdir holds: resjax.workdir.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.experimental.compilation_cache import compilation_cache

from resjax import checkpoint, data, models, optim, xla_flags
from resjax.models.conv import use_cpu_convs
from resjax.training import parallel as parallelism
from resjax.training.metric_writer import MetricWriter, Progress
from resjax.training.step import TrainState, create_train_state
from resjax.workdir import CONFIG, RESULTS, write_json


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops without saving the broken state."""


class Preempted(SystemExit):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run stopped. Exits 0 when
    uncaught, so that a scheduler requeues the job and the rerun resumes."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`; returns the final results (also written to results.json).

    Resumes automatically from the latest checkpoint in `workdir`; a finished run returns its
    results without training. Final-step numbers are reported (not the best test epoch); the
    validation split is what any selection (the best checkpoint) uses.
    """
    workdir = Path(workdir)
    check_workdir(workdir)
    _use_compilation_cache(config)
    # From the start: a signal while the data load, the restore or the first compile run is a
    # request to stop too, not a traceback (SIGINT) or a kill without a word (SIGTERM).
    watch = checkpoint.PreemptionWatch()
    try:
        run = _Run.prepare(config, workdir)
        finished = run.finished_results()
        if finished is not None:
            return finished
        state = run.initial_state()
        run.record_start(int(state.step))
        state, history = run.train(state, watch)
        return run.finish(state, history, watch)
    finally:
        watch.close()


def check_workdir(workdir: Path) -> None:
    """Fails before training when the workdir cannot be written (probe file, then removed)."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe_{jax.process_index()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise OSError(f"workdir {workdir} is not writable: {e.strerror or e}") from e


# Compilations faster than this are not worth a file in the cache (JAX's own default).
CACHE_MIN_COMPILE_SECS = 1.0


def _use_compilation_cache(config: ml_collections.ConfigDict) -> None:
    folder = config.get("compilation_cache_dir")
    if not folder:
        return
    if jax.config.jax_compilation_cache_dir != str(folder):
        # JAX opens its cache folder once per process; a run in a process that has
        # already compiled with another folder would otherwise write there.
        compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECS)


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


@dataclasses.dataclass
class _Run:
    """One call of train_and_evaluate: what `prepare` builds, and the steps that use it."""

    config: ml_collections.ConfigDict
    workdir: Path
    splits: data.Splits
    parallel: parallelism.Jit
    model: models.ResNet
    train_iter: data.TrainIterator
    steps_per_epoch: int
    total_steps: int
    schedule: optax.Schedule
    config_json: dict[str, Any]
    init_state: Callable[[], TrainState]  # a new state at step 0
    abstract: TrainState  # its shapes: jax.eval_shape(init_state)
    param_shapes: dict[str, list[int]]
    num_params: int
    ckpt: checkpoint.Checkpointer
    lead: bool  # process 0: writes the files and the console report
    hook: _TestHook  # RESJAX_TEST_HOOK: a fault at a named moment, for tests
    # Set by the steps below, in order.
    resume_changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    start_step: int = 0
    writer: MetricWriter | None = None
    progress: Progress | None = None
    history: dict[str, Any] = dataclasses.field(default_factory=dict)  # the latest numbers
    run_start: float = 0.0
    window: tuple[float, int] = (0.0, 0)  # (time, step) where the current log window began

    @classmethod
    def prepare(cls, config: ml_collections.ConfigDict, workdir: Path) -> _Run:
        """Data, parallelism, model, optimiser, the abstract state and the checkpointer."""
        splits = data.load_splits(
            config.data, train_split=config.data.train_split, test_split=config.data.test_split
        )
        par = parallelism.for_config(config, splits=splits)  # uint8 batches, normalised on device
        model = par.build_model(config, splits.num_classes)
        train_iter = data.TrainIterator(
            splits,
            global_batch_size=config.batch_size,
            seed=config.seed,
            data_config=config.data,
            mesh=par.data_mesh,
            normalize_on_host=False,
        )
        steps_per_epoch = train_iter.steps_per_epoch
        total_steps = optim.steps_from(config, steps_per_epoch)
        boundaries = optim.decay_boundaries(config.optim, steps_per_epoch)
        schedule = optim.learning_rate_schedule(config.optim, total_steps, boundaries)
        tx = optim.make_optimizer(config.optim, schedule)

        def init_state():
            return create_train_state(config, model, tx, splits.image_shape, par.replicated)

        abstract = jax.eval_shape(init_state)  # shapes before FLOPs: nothing allocated yet
        param_shapes = checkpoint.shapes_of(abstract.params)
        ckpt = checkpoint.Checkpointer(
            workdir, keep=config.keep_checkpoints, track_best=splits.val is not None
        )
        return cls(
            config=config,
            workdir=workdir,
            splits=splits,
            parallel=par,
            model=model,
            train_iter=train_iter,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            schedule=schedule,
            config_json=json.loads(config.to_json_best_effort()),
            init_state=init_state,
            abstract=abstract,
            param_shapes=param_shapes,
            num_params=sum(int(np.prod(s)) for s in param_shapes.values()),
            ckpt=ckpt,
            lead=jax.process_index() == 0,
            hook=_TestHook.from_environment(),
        )

    # --- start: finished, resumed or new ---

    def finished_results(self) -> dict[str, Any] | None:
        """The results of a run that already finished here; None when it has training to do.
        A checkpoint of another model or an incompatible config is refused first."""
        latest = self.ckpt.latest_step()
        if latest is None:
            return None
        try:
            meta = self.ckpt.read_meta(latest)
        except checkpoint.CheckpointUnreadableError:
            return None  # initial_state falls back to an older step and says why
        self._check_meta(meta)
        results_file = self.workdir / RESULTS
        if latest < self.total_steps or not results_file.exists():
            return None
        self.ckpt.close()
        self.train_iter.close()
        if self.lead:
            print(f"{self.workdir}: already finished at step {latest}; results in {results_file}")
        return json.loads(results_file.read_text())

    def _check_meta(self, meta: dict[str, Any]) -> None:
        self.resume_changes = checkpoint.check_compatible(
            meta, self.param_shapes, self.config_json, self.workdir
        )

    def initial_state(self) -> TrainState:
        """The state, data position and latest numbers of the newest checkpoint that restores
        (newer ones that do not are moved aside, each with a warning), or a new state at 0."""
        restored = self.ckpt.restore(self.abstract, self.parallel.replicated, self._check_meta)
        if restored is not None:
            if self.lead:
                for skipped in restored.skipped:
                    print(f"warning: {skipped.describe(restored.step)}", file=sys.stderr)
            state = self.abstract.replace(**restored.state)
            self.train_iter.set_state(restored.meta["data"])
            # The numbers results.json reports come from the last log window and evaluation;
            # a run resumed at its last step has neither left to run.
            self.history = dict(restored.meta.get("history", {}))
            checkpoint.record_resume(self.workdir, restored.step, self.resume_changes)
        else:
            state = self.init_state()
            self.train_iter.set_state({"batches_consumed": 0})
        step = int(state.step)
        if self.train_iter.get_state()["batches_consumed"] != step:
            raise checkpoint.CheckpointMismatchError(
                f"{self.workdir}: checkpoint at step {step} has data position "
                f"{self.train_iter.get_state()}; expected one batch per step"
            )
        return state

    def record_start(self, start_step: int) -> None:
        """config.json, a line of environment.jsonl, and the run's one-line description."""
        self.writer = MetricWriter(self.workdir)
        if self.lead:
            (self.workdir / CONFIG).write_text(self.config.to_json_best_effort(indent=2))
            with (self.workdir / "environment.jsonl").open("a") as f:  # per start or resume
                f.write(json.dumps({"start_step": start_step, **environment(self.model)}) + "\n")
        self.start_step = start_step
        self.progress = Progress(self.total_steps, start_step)
        c, model, splits = self.config, self.model, self.splits
        self.progress.message(
            f"{c.model.name} ({'residual' if model.residual else 'plain'}, depth {model.depth}) "
            f"{self.num_params:,} params | {splits.name} {splits.image_shape} | global batch "
            f"{c.batch_size} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"{jax.process_count()} process(es), {c.parallelism} | {self.total_steps} steps "
            f"({self.steps_per_epoch}/epoch)"
            + (f" | resumed at step {start_step}" if start_step else "")
        )

    # --- training ---

    def train(
        self, state: TrainState, watch: checkpoint.PreemptionWatch
    ) -> tuple[TrainState, dict[str, Any]]:
        """Steps from the state's step to total_steps: logs, evaluates and checkpoints on their
        schedules; a SIGTERM/SIGINT saves a checkpoint (or reuses the save of that step) and
        raises Preempted."""
        self.run_start = time.perf_counter()
        try:
            self.hook("start", self.start_step)
            if not watch.multiprocess and watch.requested(self.start_step):
                raise Preempted(self._stopped_before_training(watch))
            state = self.parallel.device_state(state)
            state = self._steps(state, watch)
        except BaseException:
            self.ckpt.close()  # a save already under way still completes: never leave it half-done
            raise
        finally:
            self.train_iter.close()
            self.progress.close()
        return state, self.history

    def _stopped_before_training(self, watch: checkpoint.PreemptionWatch) -> str:
        kept = (
            f"the checkpoint at step {self.start_step} is kept"
            if self.start_step
            else "no checkpoint yet, the rerun starts afresh"
        )
        return (
            f"{watch.signal_name}: stopped before the first step, nothing new to save ({kept}); "
            "rerun the same command to resume"
        )

    def _steps(self, state: TrainState, watch: checkpoint.PreemptionWatch) -> TrainState:
        c = self.config
        metrics = self.parallel.empty_metrics()
        self.window = (time.perf_counter(), self.start_step)
        self.hook.arm_compile()
        for step in range(self.start_step, self.total_steps):
            batch = next(self.train_iter)
            state, metrics = self.parallel.step(state, batch, metrics)
            done = step + 1
            self.hook("step", done)
            if done % c.log_every_steps == 0 or done == self.total_steps:
                self._log_train_window(step, metrics)
                metrics = self.parallel.empty_metrics()
            if c.diagnostics_every_steps and done % c.diagnostics_every_steps == 0:
                self.writer.write(done, self.parallel.diagnostics(self.model, state, batch))
            if done == self.total_steps:
                if watch.requested(done):  # before the final evaluation, which the rerun runs
                    self._preempt(state, done, watch)
                break  # the final evaluation and checkpoint follow the loop
            if c.eval_every_steps and done % c.eval_every_steps == 0:
                self._evaluate(state, done)
                self.window = (time.perf_counter(), self.window[1])
            if c.checkpoint_every_steps and done % c.checkpoint_every_steps == 0:
                self._save(state)
            if watch.requested(done):
                self._preempt(state, done, watch)
        return state

    def _preempt(self, state: TrainState, step: int, watch: checkpoint.PreemptionWatch) -> None:
        """Saves `step` (a save of it already under way is waited for, not repeated) and stops."""
        self._save(state, wait=True)
        raise Preempted(
            f"{watch.signal_name}: saved a checkpoint at step {step} in {self.workdir}; "
            "rerun the same command to resume"
        )

    def _log_train_window(self, step: int, metrics) -> None:
        """Training loss, error, learning rate and speed since the last window; stops the run
        at a non-finite loss."""
        done = step + 1
        values = self.parallel.fetch_metrics(metrics)
        if values["nonfinite_step"] >= 0:
            raise NonFiniteLossError(
                f"training loss became non-finite at step {int(values['nonfinite_step'])}"
                f"; stopped, results logged before it are kept in {self.workdir}"
            )
        window_start, window_step = self.window
        elapsed = time.perf_counter() - window_start
        n = int(values["steps"])
        train = {
            "train_loss": float(values["loss"]) / n,
            "train_error": float(values["error"]) / n,
            "learning_rate": float(self.schedule(step)),
            "images_per_s": (done - window_step) * self.config.batch_size / elapsed,
            "epoch": done / self.steps_per_epoch,
        }
        self.writer.write(done, train)
        self.history.update(train)
        self.progress.update(
            done,
            loss=train["train_loss"],
            err=train["train_error"],
            img_s=round(train["images_per_s"]),
        )
        self.window = (time.perf_counter(), done)

    def _evaluate(self, state: TrainState, step: int, final: bool = False) -> None:
        """Every split there is (val, test), logged and kept in the history; at the end also
        the training examples when `config.eval_train_at_end` ('train_eval_error')."""
        self.hook("final_eval" if final else "eval", step)
        out = {}
        names = {"val": "val", "test": "test"}
        if final and self.config.eval_train_at_end:
            names = {"train": "train_eval", **names}
        for split, name in names.items():
            source = getattr(self.splits, split)
            if source is not None:
                result = self.parallel.evaluate(state, source, self.splits, self.config)
                out.update({f"{name}_{k}": v for k, v in result.items()})
        self.writer.write(step, out)
        self.history.update(out)
        parts = [
            f"{k} {self.history[k]:.4f}"
            for k in ("val_error", "test_error", "test_loss")
            if k in self.history
        ]
        self.progress.message(f"eval @ {step}: " + ", ".join(parts))

    def _save(self, state: TrainState, wait: bool = False, kind: str = "save") -> None:
        """Checkpoints `state` (asynchronously unless `wait`); `kind` names the moments around
        it for the test hook: before_save, during_save, after_save (or ..._final_save)."""
        meta = {
            "data": self.train_iter.get_state(),
            "model_description": checkpoint.describe_model(self.config_json),
            "param_shapes": self.param_shapes,
            "config": self.config_json,
            "history": self.history,
        }
        host = self.parallel.host_state(state)
        step = int(jax.device_get(host.step))
        self.hook(f"before_{kind}", step)
        self.ckpt.save(host, meta, self.history.get("val_error"))
        self.hook(f"during_{kind}", step)
        if wait or self.hook.wants(f"after_{kind}", step):  # "after": once it is on disk
            self.ckpt.wait()
        self.hook(f"after_{kind}", step)

    # --- the end ---

    def finish(
        self, state: TrainState, history: dict[str, Any], watch: checkpoint.PreemptionWatch
    ) -> dict[str, Any]:
        """The final evaluation and checkpoint, then results.json (which means "finished").

        A signal that arrives now is not a reason to stop: the run is done once they are
        written, and says so."""
        # Usually total_steps; more when a run checkpointed past a total_steps lowered on resume.
        final_step = int(jax.device_get(self.parallel.host_state(state).step))
        try:
            self._evaluate(state, final_step, final=True)
            self._save(state, wait=True, kind="final_save")  # not again when already saved
        finally:
            self.ckpt.close()
        results_file = self.workdir / RESULTS
        wall = time.perf_counter() - self.run_start
        if self.start_step and results_file.exists():  # a run extended on resume: time adds up
            wall += json.loads(results_file.read_text()).get("wall_time_s", 0.0)
        c, model = self.config, self.model
        results = {
            "model": c.model.name,
            "residual": bool(model.residual),
            "depth": model.depth,
            "params": self.num_params,
            "dataset": self.splits.name,
            "steps": final_step,
            "epochs": final_step / self.steps_per_epoch,
            "seed": c.seed,
            "wall_time_s": wall,
            **{k: v for k, v in history.items() if k not in ("learning_rate", "epoch")},
        }
        if self.lead:
            write_json(results_file, results)
        self.writer.close()
        if watch.arrived_here and self.lead:
            print(
                f"{watch.signal_name} arrived while the run was finishing; it finished at step "
                f"{final_step} (results in {results_file})",
                file=sys.stderr,
            )
        return results


class _TestHook:
    """Fault injection at a named moment, for tests: RESJAX_TEST_HOOK=MOMENT[@STEP]:ACTION.

    MOMENT: start (before the first step), compile (inside JAX's compilation of the first
    train step, between lowering and XLA), step (after a train step, before what follows it:
    step@TOTAL is the last one), eval and final_eval (as the evaluation starts),
    before_save, during_save (Orbax's asynchronous write under way), after_save (on disk), and
    the same three of final_save. @STEP: the first time at or after that step (default: the
    first time). ACTION: SIGTERM or SIGINT (the process signals itself, as a scheduler would),
    or pause=PATH (creates PATH and waits until it is deleted, so that a test can fill the
    disk or make it read-only at that moment). Unset: every call is a no-op.
    """

    VARIABLE = "RESJAX_TEST_HOOK"
    MOMENTS = (
        "start compile step eval final_eval before_save during_save after_save before_final_save "
        "during_final_save after_final_save"
    ).split()

    def __init__(self, moment: str | None = None, step: int = 0, action: str = ""):
        if moment is not None and moment not in self.MOMENTS:
            raise ValueError(
                f"{self.VARIABLE}: moment must be one of {self.MOMENTS}; got {moment!r}"
            )
        if (
            moment is not None
            and action not in ("SIGTERM", "SIGINT")
            and not action.startswith("pause=")
        ):
            raise ValueError(f"{self.VARIABLE}: action must be SIGTERM, SIGINT or pause=PATH")
        self.moment, self.step, self.action = moment, step, action
        self.fired = False

    @classmethod
    def from_environment(cls) -> _TestHook:
        spec = os.environ.get(cls.VARIABLE)
        if not spec:
            return cls()
        where, _, action = spec.partition(":")
        moment, _, step = where.partition("@")
        return cls(moment, int(step or 0), action)

    def wants(self, moment: str, step: int) -> bool:
        return not self.fired and moment == self.moment and step >= self.step

    def __call__(self, moment: str, step: int) -> None:
        if self.wants(moment, step):
            self.fire()

    def arm_compile(self) -> None:
        """Fires `compile` from JAX's monitoring event for the next lowering (the first train
        step's), so the signal lands while XLA compiles."""
        if self.moment != "compile" or self.fired:
            return

        def on_event(event: str, duration: float, **kwargs: Any) -> None:
            del duration, kwargs
            if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and not self.fired:
                self.fire()

        jax.monitoring.register_event_duration_secs_listener(on_event)

    def fire(self) -> None:
        self.fired = True
        if self.action.startswith("pause="):
            marker = Path(self.action.removeprefix("pause="))
            marker.touch()
            deadline = time.monotonic() + 300
            while marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            signal.raise_signal(getattr(signal, self.action))
