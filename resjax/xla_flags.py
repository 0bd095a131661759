"""XLA flags resjax's commands set by default, before JAX initialises its backends.

XLA reads `XLA_FLAGS` once, when the first backend starts. Every `python -m resjax.<command>`
calls `apply_defaults()` first thing (resjax.cli.run); importing resjax sets nothing, so a
library user who wants the same speed calls it once, before the first JAX computation:

    import resjax.xla_flags
    resjax.xla_flags.apply_defaults()   # returns what it did, in words; also status()

Called after a JAX computation has already run, it leaves them out and says so.

CPU_DEFAULTS, measured on the 2-core CPU machine (ResNet-20 train step, batch 128, fp32;
benchmarks/README.md):

* ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: run convolutions with
  XLA's Eigen kernels instead of YNNPACK's. Eigen's weight- and input-gradient convolutions at
  16-64 channels are 1.1-2.7x faster here (benchmarks/conv_layers.py), +15-20% on the whole
  step.

Re-measured on 3 December 2026 on the quiet machine, same step, in alternating pairs with and
without the flag (``python benchmarks/xla_flag_pairs.py``, 5 timed windows a run), with/without:

* jaxlib 0.10.2 (Python 3.11): 1.463, 1.487 (503 vs 344, 485 vs 326 img/s);
* jaxlib 0.11.2 (Python 3.12): 1.181, 1.002, 1.033: a smaller gain, but no pair slower;
* jaxlib 0.12.0.1 (Python 3.13): 1.011, 0.987, 1.019: no gain beyond the scatter, so XLA's own
  choice (YNNPACK convolutions) is kept there (JAXLIB_NO_GAIN).

(An earlier measurement on a machine loaded by other jobs had 0.11 and 0.12 at 0.49-1.08x; the
quiet pairs replace it.)

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
JAXLIB_TESTED = ((0, 10), (0, 11))  # (major, minor) releases the defaults were measured to help on
JAXLIB_NO_GAIN = ((0, 12),)  # measured too: no gain there
OPT_OUT = "RESJAX_XLA_DEFAULTS"

_status = "not applied (resjax.xla_flags.apply_defaults() not called)"


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
        _status = f"off (jaxlib {_jaxlib_release()}: measured, the defaults do not help there)"
    elif _jaxlib_release() not in JAXLIB_TESTED:
        _status = f"off (jaxlib {_jaxlib_release()} is not one of {JAXLIB_TESTED})"
    elif environ is None and _backends_started():
        _status = "off (JAX backends had started before apply_defaults() was called)"
    else:
        current = env.get("XLA_FLAGS", "")
        names = {f.split("=", 1)[0] for f in current.split()}
        added = [f for f in CPU_DEFAULTS if f.split("=", 1)[0] not in names]
        if added:
            env["XLA_FLAGS"] = " ".join([current, *added]).strip()
        _status = f"added {' '.join(added)}" if added else "off (set by the user in XLA_FLAGS)"
    return _status


def status() -> str:
    """What the last `apply_defaults` call did (or that it was not called)."""
    return _status
