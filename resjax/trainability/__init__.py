"""Why residual networks train: instruments that look at a trained (or initial) network.

- `directions`: filter-normalised random directions in weight space (Li et al. 2018).
- `landscape`: loss and error on a line or plane of weights, points spread over devices,
  resumable grid files.
- `curvature`: Hessian-vector products, Lanczos with full reorthogonalisation, Hutchinson's
  trace, stochastic Lanczos quadrature (Ghorbani et al. 2019).
- `gradient_correlation`: shattered gradients at initialisation (Balduzzi et al. 2017).
- `runs`: the weights and the fixed training examples an instrument measures.
- `instruments`, `plots`: whole jobs writing JSON + CSV + PNG; `python -m resjax.trainability`.
"""
