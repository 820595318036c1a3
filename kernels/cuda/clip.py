"""CUDA gradient-norm partials, scaling and clamping, over flat device arrays.

The launchers mirror ``kernels/cpu/clip.py`` (same names and arguments, plus ``stream``):
``norm_partials`` writes one float64 partial per block (``max |g|``, ``min |g|`` or
``Σ|g|^p``) for the host to combine, ``scale_`` and ``clamp_`` update in place. The
norm's per-element math is the scalar rules of ``kernels/rules.py``, compiled here as
device functions.

Layout: a 1-D grid-stride loop over at most the resident blocks, as in
``kernels/cuda/optim.py``; each trip loads ``_UNROLL`` elements per thread, ``stride``
apart (coalesced), before using any. ``_norm_partials_kernel`` accumulates in float64
and reduces each block through shared memory in a fixed order: the same bits for the
same grid. One kernel per storage format (``_formats``): float16/bfloat16 grads (uint16
bits) are loaded to float32 (exact) and scaled or clamped in float32, rounded once.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import rules
from . import _formats
from ._launch import grid_blocks, launch
from ._reduce import MAX_WARPS, WARP_SIZE

# Elements each thread loads before it uses any (compile-time: they size register
# arrays). An H100 streams ~3.3 TB/s at ~0.7 µs latency: ~18 KB in flight per SM. Full
# occupancy (2048 threads) with 4 float32 loads each keeps 32 KB in flight; the norm
# loads 8 like grad_sumsq, its float64 accumulation leaving fewer blocks resident.
# Hot loops index with np.uint64 (no negative-index wraparound code).
_UNROLL = 4
_NORM_UNROLL = 8
_MAX_THREADS = MAX_WARPS * WARP_SIZE  # threads per block at most: the partials' smem slots

_rule = functools.partial(rules.compiled, cuda.jit(device=True, inline="always"))
_identity = _rule(rules.norm_identity)
_term = _rule(rules.norm_term)
_combine = _rule(rules.norm_combine)


@cuda.jit(device=True, inline="always")
def _load_strided(x, i, stride, vals):
    """``vals[u] ← x[i + u·stride]`` for each ``u < vals.size`` whose index is below
    ``x.size``: a thread's loads of one trip, all issued before any is used."""
    for u in range(vals.size):
        k = i + u * stride
        if k < x.size:
            vals[u] = x[np.uint64(k)]


@cuda.jit(device=True, inline="always")
def _norm_partials(
    grad,  # input, (n,)
    out,  # output, float64 (grid,): block b's partial
    mode,  # int64: NORM_* of kernels/rules.py
    p,  # float64: the exponent of NORM_POW
    load,  # the storage format's load (_formats)
):
    """Per block, in float64: ``max |g|``, ``min |g|`` (NaN if any g is NaN) or
    ``Σ|g|^p``; reads g once (4 B/elem in float32).

    Block b owns the elements ``k`` with ``(k mod gridDim·blockDim) // blockDim == b``;
    each thread combines its elements in order, then a fixed-order block reduction.
    """
    n = grad.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    vals = cuda.local.array(_NORM_UNROLL, grad.dtype)  # stored values (16-bit: bits)
    acc = _identity(mode)
    while i < n:
        _load_strided(grad, i, stride, vals)
        for u in range(_NORM_UNROLL):
            if i + u * stride < n:
                acc = _combine(acc, _term(np.float64(load(vals[u])), mode, p), mode)
        i += _NORM_UNROLL * stride

    # Lane k of warp 0 combines the threads k, k + 32, ..., then thread 0 those 32: two
    # barriers, against the thousands of elements a block streams.
    part = cuda.shared.array(_MAX_THREADS, np.float64)
    tid = cuda.threadIdx.x
    part[tid] = acc
    cuda.syncthreads()
    lanes = min(WARP_SIZE, cuda.blockDim.x)
    if tid < lanes:
        k = tid + lanes
        while k < cuda.blockDim.x:
            acc = _combine(acc, part[k], mode)
            k += lanes
        part[tid] = acc  # only this lane reads slot tid: no barrier needed before
    cuda.syncthreads()
    if tid == 0:
        for k in range(1, lanes):
            acc = _combine(acc, part[k], mode)
        out[cuda.blockIdx.x] = acc


@cuda.jit(device=True, inline="always")
def _scale(v, coef, _):  # (v, a, b): the op shape _map_in_place calls
    return v * coef


@cuda.jit(device=True, inline="always")
def _clamp(v, lo, hi):
    v = lo if v < lo else v
    return hi if v > hi else v


@cuda.jit(device=True, inline="always")
def _map_in_place(x, op, a, b, load, store):
    """``x[k] ← op(x[k], a, b)`` over this thread's elements, ``_UNROLL`` loads in flight.

    ``op`` is a device function: Numba compiles a copy of this loop for each one (inlined,
    the registers of a hand-written kernel), so the kernels share their scaffolding;
    ``load`` and ``store`` are the storage format's (``_formats``).
    """
    n = x.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    vals = cuda.local.array(_UNROLL, x.dtype)
    while i < n:
        _load_strided(x, i, stride, vals)
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                x[np.uint64(k)] = store(op(load(vals[u]), a, b))
        i += _UNROLL * stride


def _clip_kernels(load, store, compute):
    """The norm-partials, scale and clamp kernels of one storage format (``_formats``)."""

    @cuda.jit
    def norm_partials_kernel(
        grad,  # input, (n,)
        out,  # output, float64 (grid,): block b's partial
        mode,  # int64: NORM_* of kernels/rules.py
        p,  # float64: the exponent of NORM_POW
    ):
        """:func:`_norm_partials` of this format."""
        _norm_partials(grad, out, mode, p, load)

    @cuda.jit
    def scale_kernel(
        x,  # in/out, (n,)
        coef,  # compute-dtype scalar (x.dtype; float32 for 16-bit x)
    ):
        """``x ← x·coef``, one rounding per element: reads and writes x (8 B/elem in
        float32)."""
        _map_in_place(x, _scale, coef, coef, load, store)

    @cuda.jit
    def clamp_kernel(
        x,  # in/out, (n,)
        lo,  # compute-dtype scalar (x.dtype; float32 for 16-bit x)
        hi,  # compute-dtype scalar
    ):
        """``x ← min(max(x, lo), hi)``, NaN kept (``hi`` when ``lo > hi``, like np.clip
        and torch.clamp_): reads and writes x (8 B/elem in float32)."""
        _map_in_place(x, _clamp, lo, hi, load, store)

    return {"norm_partials": norm_partials_kernel, "scale": scale_kernel, "clamp": clamp_kernel}


# One set per storage format (float arrays, and uint16 bits of float16 / bfloat16), under
# the registry's names (kernels/cuda/gate.py).
_formats.define(globals(), _clip_kernels)


# --- launchers --------------------------------------------------------------------


def norm_partials_blocks(n: int) -> int:
    """Rows :func:`norm_partials` writes for ``n`` elements: its grid size (0 when n == 0).

    Deterministic for a given ``config`` and device.
    """
    return grid_blocks(int(n))


def norm_partials(grad, out, norm_type, stream=None, fmt=None) -> None:
    """Per-block partials of the ``norm_type`` norm of ``grad``, in float64, into ``out``:
    ``max |g|`` (inf), ``min |g|`` (-inf), NaN propagating, or ``Σ|g|^p`` (finite p > 0).

    The caller combines the rows in order: ``max(rows)``, ``min(rows)`` or
    ``Σ rows ^ (1/p)`` (deterministic). One launch, nothing when ``grad`` is empty.

    Args:
        grad: 1-D contiguous float32 or float64 device array, or uint16 bits of
            float16/bfloat16.
        out: float64 device array ``(norm_partials_blocks(grad.size),)``, contiguous.
        norm_type: inf, -inf or a finite p > 0 (the caller rejects the rest).
        stream: a numba stream, or None for the default stream.
        fmt: "float16" or "bfloat16" for a uint16 ``grad``; None for a float one.
    """
    mode, p = rules.norm_mode(norm_type)
    kernel = _formats.lookup(globals(), "norm_partials", fmt)
    launch(kernel, grad.size, (grad, out, mode, np.float64(p)), stream)


def scale_(x, coef, stream=None, fmt=None) -> None:
    """``x *= coef`` in place, ``coef`` cast to the compute dtype (one multiply per
    element, rounded once to the storage format).

    Args:
        x: 1-D contiguous float32 or float64 device array, or uint16 bits of
            float16/bfloat16 (computed in float32).
        coef: float.
        stream: a numba stream, or None for the default stream.
        fmt: "float16" or "bfloat16" for a uint16 ``x``; None for a float one.
    """
    f = _formats.compute_type(x.dtype, fmt)
    launch(_formats.lookup(globals(), "scale", fmt), x.size, (x, f(coef)), stream)


def clamp_(x, lo, hi, stream=None, fmt=None) -> None:
    """``x = min(max(x, lo), hi)`` in place, ``lo`` and ``hi`` cast to ``x.dtype``; NaN
    stays NaN (torch.clamp_, np.clip).

    Args:
        x: 1-D contiguous float32 or float64 device array, or uint16 bits of
            float16/bfloat16 (compared in float32).
        lo, hi: floats (±inf for no bound).
        stream: a numba stream, or None for the default stream.
        fmt: "float16" or "bfloat16" for a uint16 ``x``; None for a float one.
    """
    f = _formats.compute_type(x.dtype, fmt)
    launch(_formats.lookup(globals(), "clamp", fmt), x.size, (x, f(lo), f(hi)), stream)
