"""The training loop: `train_and_evaluate(config, workdir)`, one function read top to bottom.

    results = train_and_evaluate(config, "runs/r20")   # also written to runs/r20/results.json

data -> model -> the state's shapes -> restore or initialise -> the loop (step, log, evaluate,
save, preemption) -> final evaluation, final checkpoint and results. Resumes automatically from
the newest checkpoint in the workdir that restores (a damaged newer one is moved aside, with a
warning); a finished run returns its results without training. A SIGTERM/SIGINT at any moment
saves a checkpoint and raises Preempted (the commands exit 0). What the workdir holds:
resjax.workdir.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from resjax import checkpoint, data, hyperparameters, models, optim, resume, xla_flags
from resjax.models.conv import use_cpu_convs
from resjax.training import parallel
from resjax.training.metric_writer import MetricWriter, Progress
from resjax.training.preemption import Preempted, PreemptionWatch
from resjax.training.step import TrainState, create_train_state, sum_over_batches
from resjax.workdir import CONFIG, ENVIRONMENT, RESULTS, check_run_dir, check_writable, write_json


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops without saving the broken state."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`; returns the final results (also written to results.json).

    Final-step numbers are reported (not the best test epoch); the validation split is what any
    selection (the best checkpoint) uses.
    """
    workdir = Path(workdir)
    check_run_dir(workdir)  # a user's own folder of results is not written over
    check_workdir(workdir)
    use_compilation_cache(config.get("compilation_cache_dir"))
    lead = jax.process_index() == 0
    # From the start: a signal while the data load, the restore or the first compile run is a
    # request to stop too, not a traceback (SIGINT) or a kill without a word (SIGTERM).
    with PreemptionWatch() as watch, contextlib.ExitStack() as cleanup:
        # Data, model and the compiled steps. Batches leave the host as uint8 and are
        # normalised on the device, as the steps' first op.
        splits = data.load_splits(config.data)
        mesh = parallel.make_mesh()
        model = parallel.build_model(config, splits.num_classes)
        train_step = parallel.compile_train_step(config, mesh, splits.normalize_images)
        eval_step = parallel.compile_eval_step(mesh, splits.normalize_images)
        train_iter = data.TrainIterator(
            splits,
            global_batch_size=config.batch_size,
            seed=config.seed,
            data_config=config.data,
            mesh=train_step.data_mesh,
            normalize_on_host=False,
        )
        cleanup.callback(train_iter.close)
        steps_per_epoch = train_iter.steps_per_epoch
        # Lengths in epochs are only comparable with the run now; a given total_steps was
        # checked with its schedule by the command (and may cut a longer schedule short).
        hyperparameters.check(config, steps_per_epoch, truncated=config.total_steps is not None)
        total_steps = optim.steps_from(config, steps_per_epoch)
        log_every, eval_every, checkpoint_every, diagnostics_every = (
            every_steps(config, name, steps_per_epoch)
            for name in ("log", "eval", "checkpoint", "diagnostics")
        )
        boundaries = optim.decay_boundaries(config.optim, steps_per_epoch)
        schedule = optim.learning_rate_schedule(config.optim, total_steps, boundaries)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        tx = optim.make_optimizer(config.optim, schedule)
        init = functools.partial(
            create_train_state, config, model, tx, splits.image_shape, replicated
        )

        # The state's shapes before any FLOPs; then a finished run, a restore, or step 0.
        abstract = jax.eval_shape(init)
        config_json = json.loads(config.to_json_best_effort())
        param_shapes = resume.shapes_of(abstract.params)
        ckpt = cleanup.enter_context(
            checkpoint.Checkpointer(
                workdir, keep=config.keep_checkpoints, track_best=splits.val is not None
            )
        )
        changes: dict[str, Any] = {}

        def check_meta(meta):  # another model or an unsafe config change is refused
            changes.update(resume.check_compatible(meta, param_shapes, config_json, workdir))

        finished = finished_results(ckpt, check_meta, workdir, total_steps)
        if finished is not None:
            return finished
        state, history = restore_or_initialize(
            ckpt, abstract, init, replicated, check_meta, train_iter
        )
        start_step = int(state.step)
        if start_step:
            resume.record_resume(workdir, start_step, changes)
        writer = MetricWriter(workdir)
        if lead:
            record_start(workdir, config, start_step, model)
        progress = Progress(total_steps, start_step)
        cleanup.callback(progress.close)
        num_params = sum(int(np.prod(s)) for s in param_shapes.values())
        progress.message(
            describe_run(config, model, num_params, splits, total_steps)
            + f" ({steps_per_epoch}/epoch)"
            + (f" | resumed at step {start_step}" if start_step else "")
        )

        def save(state, wait=False):
            meta = {
                "data": train_iter.get_state(),
                "model_description": resume.describe_model(config_json),
                "param_shapes": param_shapes,
                "config": config_json,
                "history": history,
            }
            ckpt.save(train_step.global_state(state), meta, history.get("val_error"), wait=wait)

        def evaluate(state, step, final=False):
            out = evaluate_splits(eval_step, state, splits, config, mesh, final=final)
            writer.write(step, out)
            history.update(out)
            shown = [k for k in ("val_error", "test_error", "test_loss") if k in history]
            progress.message(f"eval @ {step}: " + ", ".join(f"{k} {history[k]:.4f}" for k in shown))

        def preempt(state, step):  # a save of this step already under way is reused
            save(state, wait=True)
            raise Preempted(
                f"{watch.signal_name}: saved a checkpoint at step {step} in {workdir}; "
                "rerun the same command to resume"
            )

        # The loop.
        run_start = time.perf_counter()
        if not watch.multiprocess and watch.requested(start_step):
            raise Preempted(stopped_before_training(watch.signal_name, start_step))
        diagnose = None
        if diagnostics_every:
            diagnose = parallel.compile_diagnostics(model, config, mesh, splits.normalize_images)
        state = train_step.step_state(state)
        metrics = train_step.empty_metrics()
        window = (time.perf_counter(), start_step)  # where the current log window began
        for step in range(start_step, total_steps):
            batch = next(train_iter)
            state, metrics = train_step.run(state, batch, metrics)
            done = step + 1
            if done % log_every == 0 or done == total_steps:
                values = train_step.read_metrics(metrics)
                if values["nonfinite_step"] >= 0:
                    raise NonFiniteLossError(
                        f"training loss became non-finite at step {int(values['nonfinite_step'])}"
                        f"; stopped, results logged before it are kept in {workdir}"
                    )
                train = log_window(values, window, done, float(schedule(step)), config.batch_size)
                train["epoch"] = done / steps_per_epoch
                writer.write(done, train)
                history.update(train)
                progress.update(
                    done,
                    loss=train["train_loss"],
                    err=train["train_error"],
                    img_s=round(train["images_per_s"]),
                )
                metrics = train_step.empty_metrics()
                window = (time.perf_counter(), done)
            if diagnose and done % diagnostics_every == 0:
                writer.write(done, diagnose(train_step.global_state(state), batch))
            if done == total_steps:
                if watch.requested(done):  # before the final evaluation, which the rerun runs
                    preempt(state, done)
                break  # the final evaluation and checkpoint follow the loop
            if eval_every and done % eval_every == 0:
                evaluate(train_step.global_state(state), done)
                window = (time.perf_counter(), window[1])  # evaluation is not training speed
            if checkpoint_every and done % checkpoint_every == 0:
                save(state)
            if watch.requested(done):
                preempt(state, done)
        train_iter.close()
        progress.close()

        # The end: once the final evaluation and checkpoint are written the run is done, so a
        # signal that arrives now does not stop it.
        final_state = train_step.global_state(state)
        final_step = int(jax.device_get(final_state.step))  # > total_steps if lowered on resume
        evaluate(final_state, final_step, final=True)
        save(state, wait=True)  # not again when already saved
        ckpt.close()
        wall = time.perf_counter() - run_start
        results_file = workdir / RESULTS
        if start_step and results_file.exists():  # a run extended on resume: time adds up
            wall += json.loads(results_file.read_text()).get("wall_time_s", 0.0)
        results = {
            **describe_results(config, model, num_params, splits.name),
            "steps": final_step,
            "epochs": final_step / steps_per_epoch,
            "seed": config.seed,
            "wall_time_s": wall,
            **{k: v for k, v in history.items() if k not in ("learning_rate", "epoch")},
        }
        if lead:
            write_json(results_file, results)
            if watch.arrived_here:
                print(
                    f"{watch.signal_name} arrived while the run was finishing; it finished at "
                    f"step {final_step} (results in {results_file})",
                    file=sys.stderr,
                )
        return results


# --- what the loop is made of: functions of explicit inputs ---


def check_workdir(workdir: Path) -> None:
    """Fails before training when the workdir cannot be written."""
    try:
        check_writable(workdir, str(jax.process_index()))
    except OSError as e:
        raise OSError(f"workdir {workdir} is not writable: {e.strerror or e}") from e


# Compilations faster than this are not worth a file in the cache (JAX's own default).
CACHE_MIN_COMPILE_SECS = 1.0


def use_compilation_cache(folder: str | None) -> None:
    """Points JAX's persistent compilation cache at `folder` (None: leaves JAX's setting)."""
    if not folder:
        return
    if jax.config.jax_compilation_cache_dir != str(folder):
        # JAX opens its cache folder once per process; a run in a process that has
        # already compiled with another folder would otherwise write there.
        compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECS)


def every_steps(config: ml_collections.ConfigDict, name: str, steps_per_epoch: int) -> int:
    """How often, in steps, to log / evaluate / checkpoint / run diagnostics (0: never):
    `{name}_every_steps` when set (it wins, as total_steps does), else `{name}_every_epochs`
    converted once (at least 1 step)."""
    steps = config.get(f"{name}_every_steps")
    if steps is not None:
        return int(steps)
    epochs = config.get(f"{name}_every_epochs")
    return max(1, round(epochs * steps_per_epoch)) if epochs else 0


def finished_results(
    ckpt: checkpoint.Checkpointer, check_meta, workdir: Path, total_steps: int
) -> dict[str, Any] | None:
    """The results of a run that already finished in `workdir`; None when it has training to
    do. A checkpoint of another model or an incompatible config is refused first."""
    latest = ckpt.latest_step()
    if latest is None:
        return None
    try:
        meta = ckpt.read_meta(latest)
    except checkpoint.CheckpointUnreadableError:
        return None  # restore_or_initialize falls back to an older step and says why
    check_meta(meta)
    results_file = workdir / RESULTS
    if latest < total_steps or not results_file.exists():
        return None
    if jax.process_index() == 0:
        print(f"{workdir}: already finished at step {latest}; results in {results_file}")
    return json.loads(results_file.read_text())


def restore_or_initialize(
    ckpt: checkpoint.Checkpointer,
    abstract: TrainState,
    init: Callable[[], TrainState],
    sharding: jax.sharding.Sharding,
    check_meta: Callable[[dict[str, Any]], None],
    train_iter: data.TrainIterator,
) -> tuple[TrainState, dict[str, Any]]:
    """(state, latest logged numbers) of the newest checkpoint that restores (newer ones that
    do not are moved aside, each with a warning), with the data position set; or a new state
    at step 0. The numbers results.json reports come from the last log window and evaluation,
    which a run resumed at its last step has none left to run."""
    restored = ckpt.restore(abstract, sharding, check_meta)
    if restored is None:
        train_iter.set_state({"batches_consumed": 0})
        return init(), {}
    if jax.process_index() == 0:
        for skipped in restored.skipped:
            print(f"warning: {skipped.describe(restored.step)}", file=sys.stderr)
    state = abstract.replace(**restored.state)
    train_iter.set_state(restored.meta["data"])
    if train_iter.get_state()["batches_consumed"] != restored.step:
        raise resume.CheckpointMismatchError(
            f"{ckpt.directory.parent}: checkpoint at step {restored.step} has data position "
            f"{train_iter.get_state()}; expected one batch per step"
        )
    return state, dict(restored.meta.get("history", {}))


def log_window(
    values: dict[str, Any],
    window: tuple[float, int],
    done: int,
    learning_rate: float,
    batch_size: int,
) -> dict[str, float]:
    """Mean training loss and error, learning rate and speed of the log window that began at
    `window` (time, step) and ends after step `done`, from the step's accumulated `values`."""
    window_start, window_step = window
    elapsed = time.perf_counter() - window_start
    n = int(values["steps"])
    return {
        "train_loss": float(values["loss"]) / n,
        "train_error": float(values["error"]) / n,
        "learning_rate": learning_rate,
        "images_per_s": (done - window_step) * batch_size / elapsed,
    }


def evaluate_splits(
    eval_step,
    state: TrainState,
    splits: data.Splits,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    final: bool = False,
) -> dict[str, float]:
    """'{split}_loss', '{split}_error' (and '{split}_top5_error' for > 10 classes) of a global
    state on every split there is (val, test); at the end also the training examples when
    `config.eval_train_at_end` ('train_eval_error': BatchNorm in evaluation mode, no
    augmentation)."""
    names = {"val": "val", "test": "test"}
    if final and config.eval_train_at_end:
        names = {"train": "train_eval", **names}
    out = {}
    for split, name in names.items():
        source = getattr(splits, split)
        if source is None:
            continue
        batches = data.eval_batches(
            source,
            splits,
            global_batch_size=config.eval_batch_size,
            mesh=mesh,
            data_config=config.data,
            normalize_on_host=False,
        )
        totals = sum_over_batches(eval_step, state, batches)
        count = float(totals["count"])
        result = {"loss": totals["loss"] / count, "error": 1.0 - totals["correct"] / count}
        if splits.num_classes > 10:
            result["top5_error"] = 1.0 - totals["correct5"] / count
        out.update({f"{name}_{k}": float(v) for k, v in result.items()})
    return out


def stopped_before_training(signal_name: str, start_step: int) -> str:
    kept = (
        f"the checkpoint at step {start_step} is kept"
        if start_step
        else "no checkpoint yet, the rerun starts afresh"
    )
    return (
        f"{signal_name}: stopped before the first step, nothing new to save ({kept}); "
        "rerun the same command to resume"
    )


def record_start(
    workdir: Path, config: ml_collections.ConfigDict, start_step: int, model: models.ResNet
) -> None:
    """config.json (the resolved config, at every start) and a line of environment.jsonl."""
    (workdir / CONFIG).write_text(config.to_json_best_effort(indent=2))
    with (workdir / ENVIRONMENT).open("a") as f:  # one line per start or resume
        f.write(json.dumps({"start_step": start_step, **environment(model)}) + "\n")


def describe_results(config, model, num_params, dataset) -> dict[str, Any]:
    """What results.json says the run was, before its numbers."""
    return {
        "model": config.model.name,
        "residual": bool(model.residual),
        "depth": model.depth,
        "params": num_params,
        "dataset": dataset,
    }


def describe_run(config, model, num_params, splits, total_steps) -> str:
    """The run in one line: model, data, batch, devices, parallelism, steps."""
    return (
        f"{config.model.name} ({'residual' if model.residual else 'plain'}, depth {model.depth}) "
        f"{num_params:,} params | {splits.name} {splits.image_shape} | global batch "
        f"{config.batch_size} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es), {config.parallelism} | {total_steps} steps"
    )


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
