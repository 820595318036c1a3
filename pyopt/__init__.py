"""pyopt: fast batch normalization, fused optimizers and training utilities on NumPy and
CUDA arrays.

NumPy arrays run on Numba CPU kernels; CUDA arrays (CuPy, Numba device arrays, torch CUDA
tensors) run on Numba CUDA kernels, zero-copy. Semantics follow PyTorch.
"""

from pyopt import functional, init, nn, optim
from pyopt._backend import backends
from pyopt._clip import clip_grad_norm_, clip_grad_value_
from pyopt._io import load, save
from pyopt._random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backends",
    "clip_grad_norm_",
    "clip_grad_value_",
    "functional",
    "init",
    "load",
    "manual_seed",
    "nn",
    "optim",
    "save",
]
