"""The training loop and what it is made of; the sweep runner and `python -m resjax.train` sit
above it, models, data, checkpoints and the optimiser below it.

    step.py          TrainState, train_step, eval_step, create_train_state: pure functions
    parallel.py      how the steps are compiled and the state laid out (jit on a Mesh,
                     shard_map for per-device BatchNorm, or pmap), chosen by the config
    preemption.py    SIGTERM/SIGINT -> checkpoint and stop (Preempted)
    loop.py          train_and_evaluate(config, workdir): one function, top to bottom
    metric_writer.py metrics.jsonl, TensorBoard and the console
"""

from resjax.training.loop import NonFiniteLossError, train_and_evaluate
from resjax.training.parallel import build_model, compile_train_step, make_mesh
from resjax.training.preemption import Preempted
from resjax.training.step import TrainState, create_train_state, eval_step, train_step

__all__ = [
    "NonFiniteLossError",
    "Preempted",
    "TrainState",
    "build_model",
    "compile_train_step",
    "create_train_state",
    "eval_step",
    "make_mesh",
    "train_and_evaluate",
    "train_step",
]
