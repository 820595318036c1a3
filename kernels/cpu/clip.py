"""Gradient-norm partials, scaling and clamping on the CPU, over flat 1-D arrays.

``norm_partials`` reduces fixed blocks of ``config.CPU_SUMSQ_BLOCK`` elements (the
``grad_sumsq`` block), one float64 row each (``max |g|``, ``min |g|`` or ``Σ|g|^p``), so
its rows do not depend on the thread count; the host combines the rows (max / min, or
the sum then ``^(1/p)``). ``scale_`` and ``clamp_`` read and write every element once.

The per-element math of the norm (the term ``|g|^p`` and how terms combine, NaN
propagating through max and min like torch's) is the shared scalar code of
``kernels/rules.py``, compiled here with ``njit`` and in ``kernels/cuda/clip.py`` as
device functions. On the
CPU, max and min |g| are taken on the sign-cleared bit patterns instead (the same values,
vectorized: see ``_abs_extreme_kernel``). float16/bfloat16 grads (uint16 bits, ``fmt``:
see ``_formats``) are loaded to float32 (exact) for the norm and scaled or clamped in
float32, rounded once on store; their max / min |g| are taken on the 16-bit patterns.
"""

import functools

import ml_dtypes
import numpy as np
from numba import literally, njit, prange

from pyopt.kernels import config, rules
from pyopt.kernels.cpu._formats import launch, load, store
from pyopt.kernels.cpu._launch import parallel_launcher

# Reassociation lets the float64 block sums vectorize (a fixed order per compiled loop,
# the same whatever the thread count). No nnan/ninf: NaN and inf must propagate.
_SUM_FASTMATH = {"reassoc", "contract"}
# Unsigned integers as wide as each float dtype, for its bit patterns.
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
# The float types of the 16-bit formats, whose uint16 bits the kernels see.
_SIXTEEN_BIT = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


_rule = functools.partial(rules.compiled, njit(fastmath=_SUM_FASTMATH, cache=True))
_identity = _rule(rules.norm_identity)
_term = _rule(rules.norm_term)
_combine = _rule(rules.norm_combine)


@njit(inline="always", cache=True)
def _block_sum(g, mode, p, fmt):
    """One block's ``Σ term``; ``mode`` is a constant at every call site, so the branches
    of the rules fold away and each mode's loop is compiled (and vectorized) alone."""
    acc = _identity(mode)
    for i in range(g.size):
        acc = _combine(acc, _term(np.float64(load(fmt, g[i])), mode, p), mode)
    return acc


@njit(parallel=True, cache=True, error_model="numpy", fastmath=_SUM_FASTMATH)
def _norm_sums_kernel(
    grad,  # (n,)
    out,  # (blocks,) float64 out: one partial per block
    mode,  # rules.NORM_L1, rules.NORM_L2 or rules.NORM_POW
    p,  # float64 exponent (rules.NORM_POW)
    block,  # elements per block
    fmt,  # storage format of grad (a literal: see _formats)
):
    """Per block of ``block`` elements, in float64: ``Σ|g|``, ``Σg²`` or ``Σ|g|^p``.

    Memory: reads g once (4 B/elem in float32).
    """
    literally(fmt)
    n = grad.size
    for b in prange(out.size):
        g = grad[b * block : min((b + 1) * block, n)]
        if mode == rules.NORM_L1:
            out[b] = _block_sum(g, rules.NORM_L1, p, fmt)
        elif mode == rules.NORM_L2:
            out[b] = _block_sum(g, rules.NORM_L2, p, fmt)
        else:
            out[b] = _block_sum(g, rules.NORM_POW, p, fmt)


@njit(parallel=True, cache=True, error_model="numpy")
def _abs_extreme_kernel(
    bits,  # (n,) the grad's IEEE-754 bits: uint16 (float16, bfloat16), uint32, uint64
    out,  # (blocks,) uint64 out: the bits of each block's max |g| or min |g|, or a NaN's
    want_min,  # bool
    abs_mask,  # bits.dtype: all bits but the sign
    inf_bits,  # bits.dtype: +inf; NaNs are the larger patterns
    block,  # elements per block
):
    """Per block of ``block`` elements: the bits of ``max |g|`` or ``min |g|`` (of a NaN
    when the block holds one). Memory: reads g once (4 B/elem in float32).

    Sign-cleared IEEE-754 patterns order as unsigned integers like the values they encode,
    +inf above every finite value and NaNs above +inf, so integer max/min give max |g| with
    NaN propagating: Numba's float compares carry no fast-math flags, and LLVM leaves a
    float max/min reduction scalar (10x slower than this vectorized one).
    """
    n = bits.size
    for b in prange(out.size):
        g = bits[b * block : min((b + 1) * block, n)]
        lo = abs_mask
        hi = bits.dtype.type(0)
        for i in range(g.size):
            a = bits.dtype.type(g[i] & abs_mask)
            lo = a if a < lo else lo
            hi = a if a > hi else hi
        out[b] = lo if want_min and hi <= inf_bits else hi


@njit(parallel=True, cache=True, error_model="numpy")
def _scale_kernel(
    x,  # (n,) updated in place
    coef,  # compute-dtype scalar (x.dtype; float32 for 16-bit x)
    fmt,  # storage format of x (a literal: see _formats)
):
    """``x ← x·coef``: one rounding per element. Memory: reads and writes x (8 B/elem in
    float32)."""
    literally(fmt)
    for i in prange(x.size):
        x[i] = store(fmt, load(fmt, x[i]) * coef)


@njit(parallel=True, cache=True, error_model="numpy")
def _clamp_kernel(
    x,  # (n,) updated in place
    lo,  # compute-dtype scalar (x.dtype; float32 for 16-bit x)
    hi,  # compute-dtype scalar
    fmt,  # storage format of x (a literal: see _formats)
):
    """``x ← min(max(x, lo), hi)``, NaN kept (``hi`` when ``lo > hi``, like np.clip and
    torch.clamp_). Memory: reads and writes x (8 B/elem in float32)."""
    literally(fmt)
    for i in prange(x.size):
        v = load(fmt, x[i])
        v = lo if v < lo else v
        x[i] = store(fmt, hi if v > hi else v)


def norm_partials_blocks(n: int) -> int:
    """Rows :func:`norm_partials` writes for ``n`` elements: one per ``CPU_SUMSQ_BLOCK``."""
    block = int(config.CPU_SUMSQ_BLOCK)
    return (int(n) + block - 1) // block


@parallel_launcher
def norm_partials(grad, out, norm_type, stream=None, fmt=None) -> None:
    """Per fixed block of ``grad``, in float64 into ``out``: ``max |g|`` (``norm_type``
    inf), ``min |g|`` (-inf) or ``Σ|g|^p`` (finite p > 0); NaN propagates into max / min.

    Blocks do not depend on the thread count, so combining the rows in order gives the
    same bits on any machine size: ``max(rows)``, ``min(rows)`` or ``Σ rows ^ (1/p)``.

    Args:
        grad: 1-D C-contiguous float32 or float64 array, or uint16 bits of
            float16/bfloat16.
        out: float64 array ``(norm_partials_blocks(grad.size),)``, C-contiguous.
        norm_type: inf, -inf or a finite p > 0 (the caller rejects the rest).
        stream: ignored (the CPU has none); accepted as on CUDA.
        fmt: "float16" or "bfloat16" for a uint16 ``grad``; None for a float one.
    """
    if grad.size == 0:
        return
    mode, p = rules.norm_mode(norm_type)
    block = int(config.CPU_SUMSQ_BLOCK)
    if mode in (rules.NORM_MAX, rules.NORM_MIN):
        dtype = grad.dtype if fmt is None else _SIXTEEN_BIT[fmt]
        uint = _UINT[dtype.itemsize]
        abs_mask = uint(np.iinfo(uint).max >> 1)
        inf_bits = np.array(np.inf, dtype).view(uint)[()]
        out_bits = out.view(np.uint64)
        _abs_extreme_kernel(
            grad.view(uint), out_bits, mode == rules.NORM_MIN, abs_mask, inf_bits, block
        )
        out[:] = out_bits.astype(uint).view(dtype)
    else:
        launch(_norm_sums_kernel, fmt or grad.dtype.name, grad, out, mode, np.float64(p), block)


@parallel_launcher
def scale_(x, coef, stream=None, fmt=None) -> None:
    """``x *= coef`` in place, ``coef`` cast to the compute dtype (one multiply per
    element, rounded once to the storage format).

    Args:
        x: 1-D C-contiguous float32 or float64 array, or uint16 bits of float16/bfloat16
            (computed in float32).
        coef: float.
        stream: ignored (the CPU has none); accepted as on CUDA.
        fmt: "float16" or "bfloat16" for a uint16 ``x``; None for a float one.
    """
    if x.size == 0:
        return
    f = x.dtype.type if fmt is None else np.float32
    launch(_scale_kernel, fmt or x.dtype.name, x, f(coef))


@parallel_launcher
def clamp_(x, lo, hi, stream=None, fmt=None) -> None:
    """``x = min(max(x, lo), hi)`` in place, ``lo`` and ``hi`` cast to ``x.dtype``; NaN
    stays NaN (torch.clamp_, np.clip).

    Args:
        x: 1-D C-contiguous float32 or float64 array, or uint16 bits of float16/bfloat16
            (compared in float32: the bounds are rounded once to the format on store).
        lo, hi: floats (±inf for no bound).
        stream: ignored (the CPU has none); accepted as on CUDA.
        fmt: "float16" or "bfloat16" for a uint16 ``x``; None for a float one.
    """
    if x.size == 0:
        return
    f = x.dtype.type if fmt is None else np.float32
    launch(_clamp_kernel, fmt or x.dtype.name, x, f(lo), f(hi))
