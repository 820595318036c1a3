"""Argument checks shared by the public layer. Each error names the offending argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from pyopt._backend import dtype_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(name: str, arr: Any) -> np.dtype:
    """The dtype of ``arr``, which must be float32 or float64."""
    dtype = dtype_of(arr)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


def same_dtype(name: str, arr: Any, dtype: np.dtype, other: str) -> None:
    """``arr`` must have exactly ``dtype`` (that of ``other``): no silent promotion."""
    got = dtype_of(arr)
    if got != dtype:
        raise TypeError(f"{name} has dtype {got} but {other} has dtype {dtype}; they must match")


def shape_is(name: str, arr: Any, shape: tuple[int, ...], why: str) -> None:
    got = tuple(arr.shape)
    if got != shape:
        raise ValueError(f"{name} must have shape {shape} ({why}), got {got}")


def normalize_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an input of rank {ndim}")
    return int(axis) % ndim


def real_scalar(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def positive(name: str, value: Any) -> float:
    value = real_scalar(name, value)
    if not (0.0 < value < math.inf):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def in_unit_interval(name: str, value: Any) -> float:
    value = real_scalar(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value
