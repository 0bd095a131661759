"""XLA flags resjax sets by default, before JAX initialises its backends.

XLA reads `XLA_FLAGS` once, when the first backend starts, so these are added to the
environment when `resjax` is imported; importing resjax after a JAX computation has already run
leaves them out (and says so in `status()`).

CPU_DEFAULTS, measured on the 2-core CPU machine (ResNet-20 train step, batch 128, fp32;
benchmarks/README.md):

* ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: run convolutions with
  XLA's Eigen kernels instead of YNNPACK's. Eigen's weight- and input-gradient convolutions at
  16-64 channels are 1.1-2.7x faster here (benchmarks/conv_layers.py), +15-20% on the whole
  step.

Re-measured in December 2026 on jaxlib 0.11.2 (Python 3.12) and 0.12.0.1 (Python 3.13), same
step, ``python -m resjax.bench --model=resnet20 --batch=128 --devices=1 --windows=5`` with and
without the flag in alternating pairs: with it the step ran at 0.49-1.08x (median 0.78x, 5 of 6
pairs slower) of the speed without it, so from jaxlib 0.11 on XLA's own choice (YNNPACK) is
kept (JAXLIB_NO_GAIN). The machine was loaded by other jobs, so only ratios of adjacent runs
mean anything, and they scatter: jaxlib 0.10's control pairs in the same session gave 1.03x and
0.92x where the quiet machine gave 1.15-1.2x. A gain of that size on 0.11/0.12 would have been
hidden too; a quiet rerun could still add them to JAXLIB_TESTED.

The flags are XLA:CPU's and do nothing on GPU or TPU. Unknown flags make XLA abort, and
experimental ones come and go between releases, so they are added only for the jaxlib versions
they were measured to help on (JAXLIB_TESTED). To opt out, set ``RESJAX_XLA_DEFAULTS=0``; a flag
the user already put in `XLA_FLAGS` is never overridden.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

CPU_DEFAULTS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
JAXLIB_TESTED = ((0, 10),)  # (major, minor) releases the defaults were measured to help on
JAXLIB_NO_GAIN = ((0, 11), (0, 12))  # measured too: the defaults made the step slower there
OPT_OUT = "RESJAX_XLA_DEFAULTS"

_status = "not applied yet"


def _jaxlib_release() -> tuple[int, int] | None:
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the probe: assume not started
        return False


def apply_defaults(environ: dict[str, str] | None = None) -> str:
    """Adds CPU_DEFAULTS to XLA_FLAGS where allowed; returns what it did, in words."""
    global _status
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "1") == "0":
        _status = f"off ({OPT_OUT}=0)"
    elif _jaxlib_release() in JAXLIB_NO_GAIN:
        _status = f"off (jaxlib {_jaxlib_release()}: measured, the defaults slow the step there)"
    elif _jaxlib_release() not in JAXLIB_TESTED:
        _status = f"off (jaxlib {_jaxlib_release()} is not one of {JAXLIB_TESTED})"
    elif environ is None and _backends_started():
        _status = "off (JAX backends had started before resjax was imported)"
    else:
        current = env.get("XLA_FLAGS", "")
        names = {f.split("=", 1)[0] for f in current.split()}
        added = [f for f in CPU_DEFAULTS if f.split("=", 1)[0] not in names]
        if added:
            env["XLA_FLAGS"] = " ".join([current, *added]).strip()
        _status = f"added {' '.join(added)}" if added else "off (set by the user in XLA_FLAGS)"
    return _status


def status() -> str:
    """What `apply_defaults` did when resjax was imported."""
    return _status
