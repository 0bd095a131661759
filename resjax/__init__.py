"""resjax: residual networks in JAX/Flax, for studying depth.

`resjax.models` (blocks and networks) imports only jax, flax and numpy, so that another Flax
project can use a block without pulling in the trainer, TFDS or Orbax. Importing resjax changes
nothing global (environment, logging, signal handlers): the commands (`python -m resjax.train`,
...) apply resjax's XLA:CPU defaults; a library user opts in with
`resjax.xla_flags.apply_defaults()` before JAX starts (resjax/xla_flags.py).
"""

import importlib.metadata

# The version is written once, in pyproject.toml; the installed package's metadata carries it.
try:
    __version__ = importlib.metadata.version("resjax")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "unknown"
