"""Joining a multi-process JAX run, the same way for every command that spreads work over
processes (training, the loss landscape's grid)."""

from __future__ import annotations

import os

import jax


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run when launched as one: flags, JAX's env vars, or SLURM (srun).

    Must run before any other JAX call. A single process (no flags, no env) does nothing.
    """
    if coordinator_address or num_processes:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, ...
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
        jax.distributed.initialize()  # JAX's SLURM cluster detection (srun, one task per host)
