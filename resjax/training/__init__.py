"""The training loop and what it is made of; the sweep runner and `python -m resjax.train` sit
above it, models, data, checkpoints and the optimiser below it.

    step.py          TrainState, train_step, eval_step, create_train_state: pure functions
    parallel.py      where the steps run (jit on a Mesh, or pmap), chosen once per config
    loop.py          train_and_evaluate(config, workdir): resume, train, evaluate, checkpoint
    metric_writer.py metrics.jsonl, TensorBoard and the console
"""

from resjax.training.loop import NonFiniteLossError, Preempted, train_and_evaluate
from resjax.training.parallel import for_config, make_mesh
from resjax.training.step import TrainState, create_train_state, eval_step, train_step

__all__ = [
    "NonFiniteLossError",
    "Preempted",
    "TrainState",
    "create_train_state",
    "eval_step",
    "for_config",
    "make_mesh",
    "train_and_evaluate",
    "train_step",
]
