"""Argument checks shared by the public layer. Each error names the offending argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyopt._backend import SIXTEEN_BIT, dtype_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# What optimizers update: float32/float64, and float16/bfloat16 computed in float32.
PARAM_DTYPES = (*FLOAT_DTYPES, *SIXTEEN_BIT)


def float_dtype(name: str, arr: Any) -> np.dtype:
    """The dtype of ``arr``, which must be float32 or float64."""
    dtype = dtype_of(arr)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


def param_dtype(name: str, arr: Any) -> np.dtype:
    """The dtype of ``arr``, which must be float32, float64, float16 or bfloat16."""
    dtype = dtype_of(arr)
    if dtype not in PARAM_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {dtype}")
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


def real_scalar(name: str, value: Any, allow_nan: bool = False) -> float:
    """``value`` as a float: a Python or NumPy real number, not a bool; NaN is a
    ValueError unless ``allow_nan`` (a fill value may be NaN, as in torch)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) and not allow_nan:
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


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool: only ``bool`` and ``np.bool_`` (``"False"`` is not a flag)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (Python or NumPy integer, not bool), at least ``minimum``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def float_dtype_arg(name: str, value: Any) -> np.dtype:
    """A ``dtype=`` argument naming float32 or float64; None is the default float32, as
    torch's ``dtype=None`` is its default dtype (NumPy would read None as float64)."""
    if value is None:
        return np.dtype(np.float32)
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be float32 or float64, got {value!r}") from exc
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


def shape_arg(name: str, shape: Any) -> tuple[int, ...]:
    """A shape: an int or a sequence of ints >= 0 (``2.5`` is not an extent)."""
    extents = (shape,) if isinstance(shape, numbers.Integral) else shape
    if isinstance(extents, str) or not isinstance(extents, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a shape (a tuple of ints), got {shape!r}")
    return tuple(integer(f"{name}[{i}]", d, 0) for i, d in enumerate(extents))


def numeric_host_array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """A host array of ``dtype`` holding ``value`` (an array or nested numbers), converted
    now: strings, objects and complex numbers are a TypeError naming ``name``; for an
    integer ``dtype`` the values must be whole numbers (and >= 0 for an unsigned one)."""
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise TypeError(f"{name} must be an array of real numbers ({exc})") from None
    if arr.dtype.kind not in "biuf" and arr.dtype not in SIXTEEN_BIT:
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    if dtype.kind in "iu":
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            raise TypeError(f"{name} must hold whole numbers (a count), got {arr!r}")
        if dtype.kind == "u" and np.any(arr < 0):
            raise ValueError(f"{name} must hold counts >= 0, got {arr!r}")
    return arr.astype(dtype)


def allocatable(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """ValueError naming ``name`` when an array of ``shape`` and ``dtype`` could not exist
    (more bytes than an address holds), instead of NumPy's unnamed "array is too big"."""
    if math.prod(shape) * np.dtype(dtype).itemsize > np.iinfo(np.intp).max:
        raise ValueError(f"{name} is too large: an array of shape {shape} cannot be allocated")
