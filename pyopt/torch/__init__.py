"""pyopt for PyTorch training loops: drop-in optimizers and batch-norm/dropout modules.

``pyopt.torch.optim`` holds ``torch.optim.Optimizer`` subclasses (SGD, Adam, AdamW,
Adagrad, RMSprop, Adadelta) that update params on pyopt's fused kernels;
``pyopt.torch.nn`` holds ``BatchNorm1d/2d/3d`` and ``Dropout`` modules over pyopt's
kernels, with autograd; :func:`replace_modules` swaps torch's modules for them in a model.
CPU tensors reach the kernels as zero-copy NumPy views, CUDA tensors through
``__cuda_array_interface__`` on torch's current stream. Importing this package imports
torch; ``import pyopt`` alone never does.
"""

import importlib
from typing import Any

__all__ = ["functional", "nn", "optim", "replace_modules"]


def __getattr__(name: str) -> Any:
    # The submodules load on first use: ``import pyopt.torch.optim`` loads no modules.
    if name in ("functional", "nn", "optim"):
        return importlib.import_module(f"pyopt.torch.{name}")
    if name == "replace_modules":
        return importlib.import_module("pyopt.torch.nn").replace_modules
    raise AttributeError(f"module 'pyopt.torch' has no attribute {name!r}")
