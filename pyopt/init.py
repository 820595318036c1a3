"""Weight initialization with ``torch.nn.init``'s names, fan computation and gain table.

Each function fills an array in place and returns it. NumPy arrays are filled by the CPU
kernels, CUDA arrays on the device (no host round trip), both from the same Philox stream
(``pyopt/_random.py``): the same ``seed`` gives the same values on either backend (to an
ulp for normals, whose ``log``/``cos`` come from different math libraries). Without
``seed`` a call draws from the global generator (:func:`pyopt.manual_seed`).

Weights are shaped ``(out, in, *kernel)`` as in torch: ``fan_in = in * prod(kernel)``,
``fan_out = out * prod(kernel)``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from pyopt import _checks, _random
from pyopt._backend import backend_of, call_for, copy_into, kernel_format, kernels_for

__all__ = [
    "calculate_gain",
    "constant_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "lecun_normal_",
    "normal_",
    "ones_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

_LINEAR_LIKE = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch's table).

    ========================== ===============================
    linear, conv*, sigmoid     1
    tanh                       5/3
    relu                       √2
    leaky_relu                 √(2 / (1 + slope²)), slope = ``param`` (default 0.01)
    selu                       3/4
    ========================== ===============================

    Raises:
        ValueError: an unknown nonlinearity, or a ``param`` that is not a number.

    Example:
        >>> round(calculate_gain("leaky_relu", 0.2), 5)
        1.38675
    """
    if nonlinearity in _LINEAR_LIKE:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"param (the negative_slope) {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _checked(tensor: Any) -> tuple[str, np.dtype]:
    """``(backend, dtype)`` of a float32/float64 array that can be filled in place."""
    backend = backend_of((("tensor", tensor),))
    dtype = _checks.param_dtype("tensor", tensor)
    call_for(backend, tensor).check_inplace("tensor", tensor)
    return backend, dtype


def _fans(tensor: Any) -> tuple[int, int]:
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _variance_fans(tensor: Any) -> tuple[int, int] | None:
    """``(fan_in, fan_out)`` of a variance-scaling init's target, after checking it; None
    for a zero-element tensor, which is left as it is with torch's warning."""
    _checked(tensor)
    if 0 in tuple(tensor.shape):
        # Called by the init's std helper (_xavier_std, _kaiming_std): the warning names
        # the line that called the init.
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=4)
        return None
    return _fans(tensor)


def _fill(
    tensor: Any, kind: str, a: float, b: float, seed: Any = None, key: tuple[int, int] | None = None
) -> Any:
    """Fill ``tensor`` in place: ``kind`` "uniform" on [a, b) or "normal" N(a, b²), from
    the stream ``key = (seed, offset)`` (by default that of :func:`_random.key_for`)."""
    backend, dtype = _checked(tensor)
    key = _random.key_for(seed) if key is None else key
    n = math.prod(tuple(tensor.shape))
    if n == 0:
        return tensor
    call = call_for(backend, tensor)
    kernels = kernels_for(backend, "random")
    work, writeback = call.inplace(tensor)
    fmt = kernel_format(dtype)  # 16-bit: drawn as float32, rounded to nearest even once
    kernels.fill(work.reshape(n), kind, a, b, *key, **call.kernel_kwargs, fmt=fmt)
    if writeback is not None:
        writeback()
    return tensor


def uniform_(tensor: Any, a: float = 0.0, b: float = 1.0, *, seed: int | None = None) -> Any:
    """Fill ``tensor`` with values from U(a, b): ``a + (b − a)·u``, u uniform on [0, 1).

    Args:
        tensor: float32/float64/float16/bfloat16 NumPy or CUDA array (C-contiguous on
            CUDA), filled in place; a 16-bit one gets the float32 fill's values (the same
            draws) rounded to nearest even.
        a, b: the bounds.
        seed: key of the Philox stream (an int in [0, 2**64)); None draws from the global
            generator (:func:`pyopt.manual_seed`).

    Returns:
        ``tensor``.

    Example:
        >>> w = uniform_(np.empty((2, 3), np.float32), -1.0, 1.0, seed=0)
        >>> bool((np.abs(w) <= 1.0).all())
        True
    """
    a, b = _checks.real_scalar("a", a), _checks.real_scalar("b", b)
    if not (math.isfinite(a) and math.isfinite(b) and a <= b):
        raise ValueError(f"a and b must be finite with a <= b (a [from, to) range), got {a}, {b}")
    return _fill(tensor, "uniform", a, b, seed)


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, *, seed: int | None = None) -> Any:
    """Fill ``tensor`` with values from N(mean, std²) (Box–Muller on the Philox stream).

    Args and returns as :func:`uniform_`; ``std`` must be >= 0.
    """
    std = _checks.real_scalar("std", std)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return _fill(tensor, "normal", _checks.real_scalar("mean", mean, allow_nan=True), std, seed)


def constant_(tensor: Any, val: float) -> Any:
    """Fill ``tensor`` with ``val``."""
    _, dtype = _checked(tensor)
    val = _checks.real_scalar("val", val, allow_nan=True)
    copy_into(tensor, np.full(tuple(tensor.shape), val, dtype=dtype))
    return tensor


def zeros_(tensor: Any) -> Any:
    """Fill ``tensor`` with zeros."""
    return constant_(tensor, 0.0)


def ones_(tensor: Any) -> Any:
    """Fill ``tensor`` with ones."""
    return constant_(tensor, 1.0)


def _fill_std(tensor: Any, kind: str, std: float | None, seed: Any) -> Any:
    """Fill ``tensor`` with zero-mean values of standard deviation ``std``: ``kind``
    "uniform" on [−√3·std, √3·std) or "normal" N(0, std²); ``tensor`` as it is where
    ``std`` is None (a zero-element tensor, see :func:`_variance_fans`)."""
    if std is None:
        return tensor
    if kind == "uniform":
        bound = math.sqrt(3.0) * std
        return _fill(tensor, kind, -bound, bound, seed)
    return _fill(tensor, kind, 0.0, std, seed)


def _xavier_std(tensor: Any, gain: Any) -> float | None:
    """``gain·√(2 / (fan_in + fan_out))``; None for a zero-element tensor."""
    gain = _checks.real_scalar("gain", gain)
    fans = _variance_fans(tensor)
    return None if fans is None else gain * math.sqrt(2.0 / float(sum(fans)))


def xavier_uniform_(tensor: Any, gain: float = 1.0, *, seed: int | None = None) -> Any:
    """Glorot / Xavier uniform: U(−bound, bound), ``bound = gain·√(6 / (fan_in + fan_out))``
    (standard deviation ``gain·√(2 / (fan_in + fan_out))``; Glorot & Bengio, 2010).

    Example:
        >>> w = xavier_uniform_(np.empty((64, 32)), seed=1)
        >>> bool(np.abs(w).max() <= np.sqrt(6 / 96))
        True
    """
    return _fill_std(tensor, "uniform", _xavier_std(tensor, gain), seed)


def xavier_normal_(tensor: Any, gain: float = 1.0, *, seed: int | None = None) -> Any:
    """Glorot / Xavier normal: N(0, std²), ``std = gain·√(2 / (fan_in + fan_out))``."""
    return _fill_std(tensor, "normal", _xavier_std(tensor, gain), seed)


def _kaiming_std(tensor: Any, a: float, mode: str, nonlinearity: str) -> float | None:
    """``gain / √fan``; None for a zero-element tensor (torch: a no-op with a warning)."""
    if not isinstance(mode, str) or mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} not supported, please use one of fan_in, fan_out")
    gain = calculate_gain(nonlinearity, a)
    fans = _variance_fans(tensor)
    return None if fans is None else gain / math.sqrt(fans[mode == "fan_out"])


def kaiming_uniform_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    seed: int | None = None,
) -> Any:
    """He / Kaiming uniform: U(−bound, bound), ``bound = gain·√(3 / fan)``, with
    ``gain = calculate_gain(nonlinearity, a)`` and ``fan`` = fan_in or fan_out by
    ``mode`` (He et al., 2015). ``a`` is the negative slope of a leaky ReLU.

    Example:
        >>> w = kaiming_uniform_(np.empty((128, 64)), nonlinearity="relu", seed=0)
        >>> bool(np.abs(w).max() <= np.sqrt(6 / 64))
        True
    """
    return _fill_std(tensor, "uniform", _kaiming_std(tensor, a, mode, nonlinearity), seed)


def kaiming_normal_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    seed: int | None = None,
) -> Any:
    """He / Kaiming normal: N(0, std²), ``std = gain / √fan`` (see :func:`kaiming_uniform_`)."""
    return _fill_std(tensor, "normal", _kaiming_std(tensor, a, mode, nonlinearity), seed)


def lecun_normal_(tensor: Any, *, seed: int | None = None) -> Any:
    """LeCun normal: N(0, 1 / fan_in) (LeCun et al., 1998).

    This is "Xavier with variance 1/n": Xavier's variance scaling with ``n = fan_in``
    alone, i.e. :func:`kaiming_normal_` with ``nonlinearity="linear"``. The usual init for
    SELU networks. Untruncated (Flax's ``lecun_normal`` truncates at 2 std).
    """
    return _fill_std(tensor, "normal", _kaiming_std(tensor, 0.0, "fan_in", "linear"), seed)
