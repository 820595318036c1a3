"""pyopt: fast batch normalization and fused optimizers on NumPy and CUDA arrays.

NumPy arrays run on Numba CPU kernels; CUDA arrays (CuPy, Numba device arrays, torch CUDA
tensors) run on Numba CUDA kernels, zero-copy. Semantics follow PyTorch.
"""

from pyopt import functional, nn, optim
from pyopt._backend import backends
from pyopt._io import load, save

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "functional", "load", "nn", "optim", "save"]
