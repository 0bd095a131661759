"""resjax: residual networks in JAX/Flax, for studying depth.

`resjax.models` (blocks and networks) imports only jax, flax and numpy, so that another Flax
project can use a block without pulling in the trainer, TFDS or Orbax.
"""

__version__ = "0.1.0"
