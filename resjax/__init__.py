"""resjax: residual networks in JAX/Flax, for studying depth.

`resjax.models` (blocks and networks) imports only jax, flax and numpy, so that another Flax
project can use a block without pulling in the trainer, TFDS or Orbax.
"""

import importlib.metadata

# The version is written once, in pyproject.toml; the installed package's metadata carries it.
try:
    __version__ = importlib.metadata.version("resjax")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "unknown"

# Before any backend starts: XLA reads XLA_FLAGS once (resjax/xla_flags.py says which and why).
from resjax import xla_flags as _xla_flags  # noqa: E402

_xla_flags.apply_defaults()
