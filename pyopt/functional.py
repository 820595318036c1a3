"""Functional forms of pyopt's operations, in the style of ``torch.nn.functional``.

Every function takes NumPy arrays (CPU backend) or CUDA arrays (CUDA backend: CuPy, Numba
device arrays, torch CUDA tensors), validates all arguments before touching anything, and
returns arrays of the caller's type.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pyopt import _checks, _multi, _random
from pyopt._backend import (
    backend_of,
    call_for,
    compute_dtype,
    copy_into,
    dtype_of,
    kernel_format,
    kernels_for,
)
from pyopt._optim_functional import adadelta_, adagrad_, adam_, adamw_, rmsprop_, sgd_

__all__ = [
    "adadelta_",
    "adagrad_",
    "adam_",
    "adamw_",
    "batch_norm",
    "batch_norm_backward",
    "dropout",
    "dropout_backward",
    "rmsprop_",
    "sgd_",
]


def _channel_layout(shape: tuple[int, ...], axis: Any) -> tuple[int, int, int]:
    """``(outer, C, inner)``: the 3-D view of ``x`` the kernels work on."""
    if len(shape) < 2:
        raise ValueError(f"x must have rank >= 2 (batch and channel axes), got shape {shape}")
    ax = _checks.normalize_axis(axis, len(shape))
    if ax == 0:
        raise ValueError("axis must not be the batch axis 0")
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1 :])


def _check_channel_vector(name: str, arr: Any, channels: int, x_dtype: np.dtype) -> None:
    if arr is None:
        return
    # The per-channel arrays are in the compute dtype: x's own, float32 for 16-bit x.
    dtype = compute_dtype(x_dtype)
    if dtype != x_dtype:
        got = dtype_of(arr)
        if got != dtype:
            raise TypeError(
                f"{name} has dtype {got} but must be float32 for {x_dtype} x (the "
                "per-channel arrays of a 16-bit batch norm are float32, torch's mixed rule)"
            )
    else:
        _checks.same_dtype(name, arr, dtype, "x")
    _checks.shape_is(name, arr, (channels,), "one value per channel")


def batch_norm(
    x: Any,
    *,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
) -> tuple[Any, Any, Any]:
    """Batch normalization over every axis of ``x`` but the channel ``axis``.

    ``y = (x - mean) * invstd * weight + bias`` with ``invstd = 1 / sqrt(var + eps)``.
    Training uses the batch mean and biased variance and, when running statistics are
    given, updates them in place with the unbiased variance:
    ``running = (1 - momentum) * running + momentum * batch``. Eval uses the running
    statistics.

    Mirrors ``torch.native_batch_norm(input, weight, bias, running_mean, running_var,
    training, momentum, eps) -> (output, save_mean, save_invstd)``, with the semantics of
    ``torch.nn.functional.batch_norm``; in eval torch's saved statistics are empty where
    these are the running ones used. Every argument after ``x`` is keyword-only because
    the two torch functions order them differently: a port of
    ``torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
    training, momentum, eps)`` reads ``batch_norm(x, running_mean=running_mean,
    running_var=running_var, weight=weight, bias=bias, training=training, ...)[0]``.
    ``axis`` has no torch counterpart (torch's channel axis is 1).

    Args:
        x: input of rank >= 2: float32, float64, float16 or bfloat16.
        weight: per-channel scale ``(C,)`` or None (no affine scale). The per-channel
            arrays have the dtype of ``x``, or float32 when ``x`` is float16/bfloat16
            (torch's mixed rule: ``y`` in the input dtype, statistics computed in
            float32 -- exactly the float32 computation on the same values, ``y``
            rounded once).
        bias: per-channel shift ``(C,)`` or None.
        running_mean: ``(C,)`` running mean, updated in place when training, or None.
        running_var: ``(C,)`` running variance, updated in place when training, or None.
        training: normalize with batch statistics (True) or running statistics (False).
        momentum: weight of the batch statistics in the running update, in [0, 1].
        eps: added to the variance for stability, > 0.
        axis: the channel axis: 1 for NCHW-style, -1 for channels-last.

    Returns:
        ``(y, mean, invstd)``: the output (same shape, C-contiguous) and the per-channel
        statistics used, as saved for :func:`batch_norm_backward`.

    Raises:
        TypeError: non-float or mixed dtypes, unsupported array types, host and device
            arrays mixed, an argument after ``x`` passed positionally.
        ValueError: rank < 2, channel counts that disagree, eps <= 0, momentum outside
            [0, 1], one value per channel in training, eval without running statistics.
            Nothing is modified when an error is raised.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4), dtype=np.float32)
        >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
        >>> y, mean, invstd = batch_norm(x, running_mean=rm, running_var=rv, training=True)
        >>> bool(abs(y.mean()) < 1e-5)
        True
    """
    backend = backend_of(
        {
            "x": x,
            "weight": weight,
            "bias": bias,
            "running_mean": running_mean,
            "running_var": running_var,
        }.items(),
        optional=("weight", "bias", "running_mean", "running_var"),
    )
    shape = tuple(x.shape)
    outer, channels, inner = _channel_layout(shape, axis)
    dtype = _checks.param_dtype("x", x)
    channel_dtype = compute_dtype(dtype)
    for name, arr in (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        _check_channel_vector(name, arr, channels, dtype)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    training = _checks.flag("training", training)
    eps = _checks.positive("eps", eps)
    momentum = _checks.in_unit_interval("momentum", momentum)
    count = outer * inner
    if training and count == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shape}"
        )
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    call = call_for(backend, x)
    update = training and running_mean is not None
    if update:
        call.check_inplace("running_mean", running_mean)
        call.check_inplace("running_var", running_var)
        _multi.check_disjoint((("running_mean", running_mean), ("running_var", running_var)))

    # Everything is validated: from here on the call cannot fail on its arguments.
    y_out, y = call.empty(shape, dtype)
    mean_out, mean = call.empty((channels,), channel_dtype)
    invstd_out, invstd = call.empty((channels,), channel_dtype)
    if count == 0:
        # An empty batch, as in torch: nothing to normalize, running statistics unchanged.
        for out in (mean_out, invstd_out):
            copy_into(out, np.full(channels, math.nan, dtype=channel_dtype))
        return y_out, mean_out, invstd_out
    w = call.full((channels,), 1.0, channel_dtype) if weight is None else call.contiguous(weight)
    b = call.full((channels,), 0.0, channel_dtype) if bias is None else call.contiguous(bias)
    writebacks = []
    if running_mean is None:
        rm, rv = mean, invstd  # never read or written: update is False in training
    elif update:
        rm, wb_mean = call.inplace(running_mean)
        rv, wb_var = call.inplace(running_var)
        writebacks = [wb for wb in (wb_mean, wb_var) if wb is not None]
    else:
        rm, rv = call.contiguous(running_mean), call.contiguous(running_var)
    x3 = call.contiguous(x).reshape(outer, channels, inner)
    kernels_for(backend, "batchnorm").batch_norm_forward(
        x3,
        w,
        b,
        rm,
        rv,
        y.reshape(outer, channels, inner),
        mean,
        invstd,
        training,
        update,
        momentum,
        eps,
        stream=call.stream,
        fmt=kernel_format(dtype),
    )
    for writeback in writebacks:
        writeback()
    return y_out, mean_out, invstd_out


def batch_norm_backward(
    dy: Any,
    x: Any,
    *,
    weight: Any,
    mean: Any,
    invstd: Any,
    training: bool = True,
    axis: int = 1,
) -> tuple[Any, Any | None, Any | None]:
    """Gradients of :func:`batch_norm` with respect to ``x``, ``weight`` and ``bias``.

    With ``xhat = (x - mean) * invstd`` and ``n`` values per channel:
    ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``; in training (statistics of the
    batch, differentiated through) ``dx = weight * invstd * (dy - dbias/n - xhat *
    dweight/n)``; in eval (fixed running statistics) ``dx = dy * weight * invstd``.

    Mirrors ``torch.ops.aten.native_batch_norm_backward(grad_out, input, weight,
    running_mean, running_var, save_mean, save_invstd, train, eps, output_mask)``:
    ``dy`` is ``grad_out``, ``x`` is ``input``, ``mean``/``invstd`` are
    ``save_mean``/``save_invstd`` (in eval too, where :func:`batch_norm` returns the
    running statistics it used, so ``running_mean``, ``running_var`` and ``eps`` are not
    needed), ``training`` is ``train``; the gradients of ``weight`` and ``bias`` are
    computed whenever ``weight`` is given. The arguments after ``dy, x`` are
    keyword-only, like :func:`batch_norm`'s.

    Args:
        dy: gradient of the output, same shape and dtype as ``x`` (float16/bfloat16
            ``x``: ``dx`` in that dtype, ``weight``/``mean``/``invstd`` and the returned
            ``dweight``/``dbias`` float32).
        x: the forward input.
        weight: the forward ``weight`` ``(C,)``, or None when there was no affine.
        mean: the ``mean`` returned by the forward call.
        invstd: the ``invstd`` returned by the forward call.
        training: whether the forward call normalized with batch statistics.
        axis: the channel axis used in the forward call.

    Returns:
        ``(dx, dweight, dbias)``; ``dweight`` and ``dbias`` are None when ``weight`` is.

    Raises:
        TypeError: non-float or mixed dtypes, unsupported array types, mixed devices,
            an argument after ``dy, x`` passed positionally.
        ValueError: shapes that disagree with ``x`` or its channel count.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((8, 3), dtype=np.float32)
        >>> w = np.ones(3, np.float32)
        >>> y, mean, invstd = batch_norm(x, weight=w)
        >>> dy = np.ones_like(x)
        >>> dx, dw, db = batch_norm_backward(dy, x, weight=w, mean=mean, invstd=invstd)
        >>> bool(np.abs(dx).max() < 1e-5)  # a constant gradient is normalized away
        True
    """
    backend = backend_of(
        (("dy", dy), ("x", x), ("weight", weight), ("mean", mean), ("invstd", invstd)),
        optional=("weight",),
    )
    shape = tuple(x.shape)
    outer, channels, inner = _channel_layout(shape, axis)
    dtype = _checks.param_dtype("x", x)
    channel_dtype = compute_dtype(dtype)
    _checks.same_dtype("dy", dy, dtype, "x")
    _checks.shape_is("dy", dy, shape, "the shape of x")
    for name, arr in (("weight", weight), ("mean", mean), ("invstd", invstd)):
        _check_channel_vector(name, arr, channels, dtype)
    training = _checks.flag("training", training)
    call = call_for(backend, x)

    dx_out, dx = call.empty(shape, dtype)
    dweight_out, dweight = call.empty((channels,), channel_dtype)
    dbias_out, dbias = call.empty((channels,), channel_dtype)
    if outer * inner == 0:
        for out in (dweight_out, dbias_out):
            copy_into(out, np.zeros(channels, dtype=channel_dtype))
    else:
        view3 = (outer, channels, inner)
        if weight is None:
            w = call.full((channels,), 1.0, channel_dtype)
        else:
            w = call.contiguous(weight)
        kernels_for(backend, "batchnorm").batch_norm_backward(
            call.contiguous(dy).reshape(view3),
            call.contiguous(x).reshape(view3),
            w,
            call.contiguous(mean),
            call.contiguous(invstd),
            dx.reshape(view3),
            dweight,
            dbias,
            training,
            stream=call.stream,
            fmt=kernel_format(dtype),
        )
    if weight is None:
        return dx_out, None, None
    return dx_out, dweight_out, dbias_out


def _dropout(x: Any, p: Any, seed: Any, offset: Any, name: str, training: bool = True) -> Any:
    backend = backend_of(((name, x),))
    dtype = _checks.param_dtype(name, x)
    p = _checks.in_unit_interval("p", p)
    seed = _random.check_u64("seed", seed)
    offset = _random.check_u64("offset", offset)
    if not _checks.flag("training", training):
        return x
    call = call_for(backend, x)
    shape = tuple(x.shape)
    n = math.prod(shape)
    out, y = call.empty(shape, dtype)
    if n:
        # Kept where the element's 32-bit Philox word is >= threshold: probability
        # (2**32 - threshold) / 2**32 = 1 - p to within 2**-33.
        threshold = round(p * 2.0**32)
        scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
        kernels_for(backend, "random").dropout(
            call.contiguous(x).reshape(n),
            y.reshape(n),
            threshold,
            scale,
            seed,
            offset,
            **call.kernel_kwargs,
            fmt=kernel_format(dtype),  # 16-bit: the float32 mask and product, rounded once
        )
    return out


def dropout(x: Any, p: float = 0.5, *, training: bool = True, seed: int, offset: int = 0) -> Any:
    """Inverted dropout: each element zeroed with probability ``p``, the rest scaled by
    ``1 / (1 − p)``, so the expectation is unchanged.

    Mirrors ``torch.nn.functional.dropout(input, p, training, inplace)`` with a mask that
    is never stored: ``x`` is ``input``; ``training`` is keyword-only; there is no
    ``inplace`` (the result is always a new array); ``seed`` and ``offset`` take the
    place of torch's global generator state.

    Element ``i`` (in C order) is kept iff the ``i``-th 32-bit word of the Philox4x32-10
    stream keyed by ``(seed, offset)`` is at least ``round(p·2³²)``: the mask is a pure
    function of ``(seed, offset, i)``, the same on the CPU and on CUDA, and
    :func:`dropout_backward` regenerates it. Use a new ``offset`` (or seed) for every
    call that needs a new mask. Moves 2 elements per element (read x, write y).

    Args:
        x: float32/float64/float16/bfloat16 array of any shape (NumPy or CUDA); 16-bit
            values are computed in float32 (the same mask as float32) and rounded once.
        p: probability of an element being zeroed, in [0, 1]. ``p = 0`` returns a copy of
            ``x``; ``p = 1`` returns zeros (no NaN, also where ``x`` is inf or NaN: a
            dropped element is exactly 0, where torch multiplies by 0).
        training: when False, return ``x`` itself (as torch does).
        seed: key of the mask's random stream, an int in [0, 2**64).
        offset: counter offset within that stream, an int in [0, 2**64).

    Returns:
        ``y``: a new C-contiguous array of the caller's type.

    Raises:
        TypeError: ``x`` not a float32/float64/float16/bfloat16 array, seed or offset not
            ints.
        ValueError: ``p`` outside [0, 1], seed or offset outside [0, 2**64).

    Example:
        >>> x = np.ones(100_000, np.float32)
        >>> y = dropout(x, 0.25, seed=7)
        >>> sorted(set(y.tolist())) == [0.0, np.float32(1 / 0.75)]
        True
        >>> round(float((y == 0).mean()), 2)
        0.25
        >>> bool((dropout_backward(x, 0.25, seed=7) == y).all())  # the same mask
        True
    """
    return _dropout(x, p, seed, offset, "x", training)


def dropout_backward(dy: Any, p: float, *, seed: int, offset: int = 0) -> Any:
    """Gradient of :func:`dropout` (training) w.r.t. its input: ``dx = dy·mask / (1 − p)``,
    with the mask regenerated from the forward call's ``(seed, offset)``.

    Mirrors ``torch.ops.aten.native_dropout_backward(grad_output, mask, scale)``:
    ``dy`` is ``grad_output``; the forward's ``(p, seed, offset)`` stand for ``mask``
    and ``scale = 1 / (1 - p)``.

    Args:
        dy: gradient of the output, float32/float64/float16/bfloat16, the forward input's
            shape.
        p, seed, offset: the values of the forward call.

    Returns:
        ``dx``, a new array of the caller's type.

    Raises:
        TypeError: ``dy`` not a float32/float64/float16/bfloat16 array, seed or offset not
            ints.
        ValueError: ``p`` outside [0, 1], seed or offset outside [0, 2**64).
    """
    return _dropout(dy, p, seed, offset, "dy")
