"""Torch tensors as the arrays pyopt's public layer takes, zero-copy, and back.

A CPU tensor is handed over as a NumPy view of its memory (``tensor.numpy()``); a CUDA
tensor as itself, detached: the public layer reads its ``__cuda_array_interface__`` and
queues its kernels on torch's current stream. Results come back as tensors over the same
memory (``torch.from_numpy``; the CUDA backend already returns torch tensors for torch
inputs). A bfloat16 tensor, which NumPy cannot describe, is handed over as
an ``ml_dtypes.bfloat16`` view of its memory on the CPU (through its uint16 view), and as
itself on CUDA (the public layer reads it through its uint16 view).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch

# The dtypes pyopt's kernels take (float16 and bfloat16 computed in float32).
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_array(tensor: torch.Tensor) -> Any:
    """The array pyopt's public layer takes for ``tensor``, sharing its memory."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        return tensor
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def as_tensor(array: Any) -> torch.Tensor:
    """A tensor over the memory of an array the public layer returned (no copy)."""
    if not isinstance(array, np.ndarray):
        return array
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def check_float_tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` when it is a dense, real float32/float64/float16/bfloat16 tensor; else a
    ``TypeError`` naming ``name`` and what it is."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__module__}."
            f"{type(value).__qualname__}"
        )
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.dtype not in FLOAT_DTYPES:
        kind = "complex" if value.is_complex() else "floating" if value.is_floating_point() else ""
        hint = f" (a {kind} dtype pyopt's kernels do not support)" if kind else ""
        raise TypeError(
            f"{name} must be float32, float64, float16 or bfloat16, got {value.dtype}{hint}"
        )
    if value.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{name} must be on the CPU or a CUDA device, got {value.device}")
    return value
