"""Gradient clipping with ``torch.nn.utils``' semantics: ``clip_grad_norm_``, ``clip_grad_value_``.

Grads that lie end to end in one allocation (a :class:`pyopt.optim.ParamBuffer`'s
``grads``) are handled as one flat array: a norm is one kernel call (one CUDA launch)
and the scaling one more, however many tensors the model has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pyopt import _checks, _multi
from pyopt._backend import (
    backend_of,
    call_for,
    compute_dtype,
    dtype_of,
    is_array,
    is_torch,
    kernel_format,
    kernels_for,
)

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grad_list(grads: Any) -> list[Any]:
    """The non-None arrays of ``grads``: one array, a dict's values, or any other iterable
    (a list, a generator such as ``(p.grad for p in ...)``)."""
    if grads is None:
        return []
    if is_array(grads) or is_torch(grads):
        items = [grads]  # checked (and a torch CPU tensor refused) by backend_of
    elif isinstance(grads, Mapping):
        items = list(grads.values())
    elif isinstance(grads, Iterable) and not isinstance(grads, str | bytes):
        items = list(grads)
    else:
        items = [grads]
    return [g for g in items if g is not None]


def _prepare(grads: Any) -> tuple[Any, list[Any], Any, np.dtype] | None:
    """Validate ``grads``; ``(call, pieces, kernels, dtype)`` or None when there are none.

    ``pieces`` cover the grads with one array per run of arrays that lie end to end in
    one allocation. Nothing is modified here.
    """
    arrays = _grad_list(grads)
    if not arrays:
        return None
    backend = backend_of((f"grads[{i}]", g) for i, g in enumerate(arrays))
    dtypes = [_checks.param_dtype(f"grads[{i}]", g) for i, g in enumerate(arrays)]
    call = call_for(backend, arrays[0])
    for i, g in enumerate(arrays):
        call.check_inplace(f"grads[{i}]", g)
    pieces = _multi.run_pieces(arrays)
    return call, pieces, kernels_for(backend, "clip"), _result_dtype(dtypes)


def _result_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """The dtype the total norm is returned in: the grads' one dtype, else the promotion
    of their compute dtypes (float16 and bfloat16 grads together: float32)."""
    if len(set(dtypes)) == 1:
        return dtypes[0]
    return np.result_type(*(compute_dtype(d) for d in dtypes))


def _update_each(call: Any, pieces: list[Any], fn: Any) -> None:
    """``fn(flat, fmt)`` on a 1-D in-place view of every piece (a strided NumPy piece
    goes through a contiguous copy that is written back); ``fmt`` is the kernels' storage
    format (``kernel_format``: uint16 bits of 16-bit grads)."""
    for piece in pieces:
        work, writeback = call.inplace(piece)
        fn(work.reshape(math.prod(work.shape)), kernel_format(dtype_of(piece)))
        if writeback is not None:
            writeback()


def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Any:
    """Scale ``grads`` in place so that their total norm is at most ``max_norm``.

    ``total = ‖(‖g₁‖ₚ, ‖g₂‖ₚ, …)‖ₚ`` (the p-norm of all elements together; ``p = inf`` the
    largest |g|, ``-inf`` the smallest), then every grad is multiplied by
    ``min(max_norm / (total + 1e-6), 1)``, computed in the grads' dtype as torch does
    (float32 for float16/bfloat16 grads, which are scaled in float32 and rounded once).
    Semantics of ``torch.nn.utils.clip_grad_norm_`` (torch 2.13), with grads passed
    directly instead of parameters. The partial sums are accumulated in float64 and
    added in a fixed order: the norm does not depend on the thread count.

    Args:
        grads: one array, an iterable of arrays (a list, a generator; ``None`` entries
            skipped, like parameters without ``.grad``), or a dict name -> array
            (``ParamBuffer.grads``). float32/float64/float16/bfloat16, all NumPy or all
            CUDA.
        max_norm: the largest norm allowed.
        norm_type: p of the p-norm: a positive number, ``inf`` or ``-inf``.
        error_if_nonfinite: raise ``RuntimeError`` (modifying nothing) when the total norm
            is inf or NaN, instead of scaling by a NaN or zero coefficient.

    Returns:
        The total norm before clipping, a NumPy scalar of the grads' (promoted) dtype
        (``0.0`` when there are no grads).

    Raises:
        TypeError: grads that are not float32/float64/float16/bfloat16 arrays, or mix
            host and device.
        ValueError: ``norm_type`` 0 or a negative finite p (not supported; torch allows
            them), a NaN ``max_norm``, non-contiguous CUDA grads.
        RuntimeError: non-finite total norm with ``error_if_nonfinite``.

    Example:
        >>> g = [np.full(4, 3.0, np.float32), np.full(9, 4.0, np.float32)]
        >>> float(clip_grad_norm_(g, max_norm=1.0))  # √(4·9 + 9·16) = √180
        13.416407585144043
        >>> round(float(np.sqrt(sum((x.astype(np.float64) ** 2).sum() for x in g))), 5)
        1.0
    """
    max_norm = _checks.real_scalar("max_norm", max_norm)
    p = _checks.real_scalar("norm_type", norm_type)
    error_if_nonfinite = _checks.flag("error_if_nonfinite", error_if_nonfinite)
    if not (p > 0 or p == -math.inf):
        raise ValueError(
            f"norm_type must be positive, inf or -inf, got {norm_type} "
            "(pyopt does not support the 0 'norm' or negative finite p)"
        )
    prepared = _prepare(grads)
    if prepared is None:
        return np.float32(0.0)
    call, pieces, kernels, dtype = prepared
    norm = _combine(_norm_partials(call, pieces, kernels, p), p)
    total = dtype.type(norm)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    compute = compute_dtype(dtype).type
    # In the grads' dtype (the compute dtype of 16-bit grads: from the unrounded norm).
    coef = compute(max_norm) / (compute(norm) + compute(1e-6))
    # torch multiplies by min(coef, 1) always; x·1 == x, so only coef < 1 (or NaN) writes.
    if not coef >= 1:
        _update_each(
            call,
            pieces,
            lambda flat, fmt: kernels.scale_(flat, coef, **call.kernel_kwargs, fmt=fmt),
        )
    return total


def _norm_partials(call: Any, pieces: list[Any], kernels: Any, p: float) -> np.ndarray:
    """The host float64 per-block partials of the p-norm of ``pieces`` (one read)."""
    # block_partials launches for the non-empty pieces, in order: their storage formats.
    formats = iter([kernel_format(dtype_of(q)) for q in pieces if math.prod(q.shape)])
    return _multi.block_partials(
        call,
        pieces,
        kernels.norm_partials_blocks,
        lambda flat, rows: kernels.norm_partials(
            flat, rows, p, **call.kernel_kwargs, fmt=next(formats)
        ),
    )


def grad_sumsq(grads: list[Any], backend: str) -> tuple[float, bool]:
    """``(Σ g², all finite)`` over the non-None ``grads`` (validated arrays of ``backend``),
    accumulated in float64: the one norm pass of an optimizer step that clips or checks
    for inf/NaN. Deterministic (per-block partials added on the host in a fixed order);
    the sum is inf or NaN exactly when an element is (a float64 ``g²`` of a float32 ``g``
    cannot overflow; a float64 grad whose square overflows counts as non-finite).
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0, True
    call = call_for(backend, grads[0])
    partials = _norm_partials(call, _multi.run_pieces(grads), kernels_for(backend, "clip"), 2.0)
    total = float(np.sum(partials))
    return total, math.isfinite(total)


def _combine(partials: np.ndarray, p: float) -> float:
    """The total p-norm from the per-block partials (max / min |g|, or Σ|g|^p)."""
    if partials.size == 0:
        return 0.0
    if p == math.inf:
        return float(np.max(partials))
    if p == -math.inf:
        return float(np.min(partials))
    total = float(np.sum(partials))
    if p == 1.0:
        return total
    if p == 2.0:
        return math.sqrt(total)
    return total ** (1.0 / p)


def clip_grad_value_(grads: Any, clip_value: float) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place.

    ``torch.nn.utils.clip_grad_value_``'s semantics: NaN stays NaN; a negative
    ``clip_value`` sets everything to ``clip_value`` (``torch.clamp`` with min > max).

    Args:
        grads: as :func:`clip_grad_norm_`.
        clip_value: the bound.

    Example:
        >>> g = np.array([-3.0, 0.5, 2.0, np.nan])
        >>> clip_grad_value_([g], 1.0)
        >>> g.tolist()
        [-1.0, 0.5, 1.0, nan]
    """
    clip_value = _checks.real_scalar("clip_value", clip_value)
    prepared = _prepare(grads)
    if prepared is None:
        return
    call, pieces, kernels, _ = prepared
    _update_each(
        call,
        pieces,
        lambda flat, fmt: kernels.clamp_(
            flat, -clip_value, clip_value, **call.kernel_kwargs, fmt=fmt
        ),
    )
