"""Counter-based random kernels on the CPU: dropout, uniform and normal fills.

Every value comes from the Philox4x32-10 stream of ``kernels/philox.py``: element ``i``
of a call with ``(seed, offset)`` is lane ``i % 4`` of the block ``i // 4``, so the result
depends on neither the thread count nor the chunking, and equals the CUDA kernels'
(``kernels/cuda/random.py``) bit for bit for dropout. No state and no stored mask:
dropout's backward is the same call on dy with the same ``(seed, offset)``.

Schedule: the full blocks of 4 elements are cut into units of ``config.CPU_RANDOM_CHUNK``
elements shared out to the threads by ``prange``; a unit is a loop over its blocks, one
Philox call per 4 elements, indexed from 0 within the unit's slices (no negative-index
checks, so the loop vectorizes). A last partial block (n not a multiple of 4) is written
after the parallel loop, lane by lane. Memory: dropout reads x and writes y (8 B/elem in
float32), the fills write out (4 B/elem). float16/bfloat16 arrays (uint16 bits, ``fmt``,
see ``_formats``) are computed in float32 -- the same words, so the same dropout mask and
the same draws as float32 -- and rounded once on store.
"""

import numpy as np
from numba import literally, njit, prange

from pyopt.kernels import config, philox
from pyopt.kernels.cpu._formats import compute, launch, load, store
from pyopt.kernels.cpu._launch import parallel_launcher

_KERNEL_OPTIONS = {"parallel": True, "cache": True, "error_model": "numpy"}

# The shared generator and maps (kernels/philox.py), compiled for the CPU once: the
# optimizers' stochastic rounding (kernels/cpu/optim.py) draws from these too.
PHILOX = philox.compiled(njit(cache=True))
_philox4x32_10 = PHILOX.philox4x32_10
_stream_block = PHILOX.stream_block
_dropout = PHILOX.dropout
_uniform = PHILOX.uniform
_normal_pair = PHILOX.normal_pair


@njit(inline="always", cache=True)
def _dropout_block(x, y, j, block, count, threshold, scale, seed, offset, fmt):
    """Elements ``4j … 4j + count − 1`` of the slices x, y from block ``block`` of the
    stream; ``count`` is the constant 4 except for a last partial block."""
    w0, w1, w2, w3 = _stream_block(block, seed, offset)
    i = 4 * j
    dtype = compute(fmt, x.dtype)
    y[i] = store(fmt, _dropout(load(fmt, x[i]), w0, threshold, scale, dtype))
    if count > 1:
        y[i + 1] = store(fmt, _dropout(load(fmt, x[i + 1]), w1, threshold, scale, dtype))
    if count > 2:
        y[i + 2] = store(fmt, _dropout(load(fmt, x[i + 2]), w2, threshold, scale, dtype))
    if count > 3:
        y[i + 3] = store(fmt, _dropout(load(fmt, x[i + 3]), w3, threshold, scale, dtype))


@njit(cache=True)
def _uniform_block(out, j, block, count, low, high, seed, offset, fmt):
    """Elements ``4j … 4j + count − 1`` of the slice out (see :func:`_dropout_block`)."""
    w0, w1, w2, w3 = _stream_block(block, seed, offset)
    i = 4 * j
    dtype = compute(fmt, out.dtype)
    out[i] = store(fmt, _uniform(w0, low, high, dtype))
    if count > 1:
        out[i + 1] = store(fmt, _uniform(w1, low, high, dtype))
    if count > 2:
        out[i + 2] = store(fmt, _uniform(w2, low, high, dtype))
    if count > 3:
        out[i + 3] = store(fmt, _uniform(w3, low, high, dtype))


@njit(cache=True)
def _normal_block(out, j, block, count, mean, std, seed, offset, fmt):
    """Elements ``4j … 4j + count − 1`` of the slice out: Box-Muller on the word pairs
    (w0, w1) for lanes 0, 1 and (w2, w3) for lanes 2, 3."""
    w0, w1, w2, w3 = _stream_block(block, seed, offset)
    i = 4 * j
    dtype = compute(fmt, out.dtype)
    z0, z1 = _normal_pair(w0, w1, mean, std, dtype)
    out[i] = store(fmt, z0)
    if count > 1:
        out[i + 1] = store(fmt, z1)
    if count > 2:
        z2, z3 = _normal_pair(w2, w3, mean, std, dtype)
        out[i + 2] = store(fmt, z2)
        if count > 3:
            out[i + 3] = store(fmt, z3)


@njit(cache=True)
def _unit_blocks(full, unit, u):
    """Blocks ``[lo, hi)`` of the u-th unit of ``unit`` blocks among ``full`` blocks."""
    return u * unit, min((u + 1) * unit, full)


@njit(**_KERNEL_OPTIONS)
def _dropout_kernel(
    x,  # (n,)
    y,  # (n,) out
    threshold,  # int64 in [0, 2^32]: kept where word >= threshold
    scale,  # compute dtype (x.dtype; float32 for 16-bit x)
    seed,  # uint64
    offset,  # uint64
    unit,  # blocks of 4 elements per unit of work
    fmt,  # storage format of x and y (a literal: see _formats)
):
    """Dropout: ``y = x·scale`` where ``word(i) ≥ threshold``, else 0 (``philox.dropout``).

    Memory: reads x and writes y once (8 B/elem in float32).
    """
    literally(fmt)
    n = x.size
    full = n // 4
    for u in prange((full + unit - 1) // unit):
        lo, hi = _unit_blocks(full, unit, u)
        xs, ys = x[4 * lo : 4 * hi], y[4 * lo : 4 * hi]
        for j in range(hi - lo):
            _dropout_block(xs, ys, j, lo + j, 4, threshold, scale, seed, offset, fmt)
    if n > 4 * full:
        xs, ys = x[4 * full :], y[4 * full :]
        _dropout_block(xs, ys, 0, full, n - 4 * full, threshold, scale, seed, offset, fmt)


@njit(inline="always", cache=True)
def _fill_all(out, a, b, seed, offset, unit, fill_block, fmt):
    """Every element of out by ``fill_block`` (:func:`_uniform_block` or
    :func:`_normal_block`, a compile-time constant: each kernel compiles only its map).

    Inlined by Numba for its ``prange``; what it calls is a plain ``njit``, which LLVM
    inlines (a Numba inline inside a Numba inline: see ``kernels/rules.py``)."""
    n = out.size
    full = n // 4
    for u in prange((full + unit - 1) // unit):
        lo, hi = _unit_blocks(full, unit, u)
        outs = out[4 * lo : 4 * hi]
        for j in range(hi - lo):
            fill_block(outs, j, lo + j, 4, a, b, seed, offset, fmt)
    if n > 4 * full:
        fill_block(out[4 * full :], 0, full, n - 4 * full, a, b, seed, offset, fmt)


@njit(**_KERNEL_OPTIONS)
def _uniform_kernel(
    out,  # (n,) out
    low,  # compute dtype (out.dtype; float32 for 16-bit out)
    high,  # compute dtype
    seed,  # uint64
    offset,  # uint64
    unit,  # blocks of 4 elements per unit of work
    fmt,  # storage format of out (a literal: see _formats)
):
    """Uniform fill ``out = low + (high − low)·u``, ``u ∈ [0, 1)`` (``philox.uniform``).

    Memory: writes out once (4 B/elem in float32).
    """
    literally(fmt)
    _fill_all(out, low, high, seed, offset, unit, _uniform_block, fmt)


@njit(**_KERNEL_OPTIONS)
def _normal_kernel(
    out,  # (n,) out
    mean,  # compute dtype (out.dtype; float32 for 16-bit out)
    std,  # compute dtype
    seed,  # uint64
    offset,  # uint64
    unit,  # blocks of 4 elements per unit of work
    fmt,  # storage format of out (a literal: see _formats)
):
    """Normal fill ``out = mean + std·z``, z from Box-Muller on word pairs
    (``philox.normal_pair``).

    Memory: writes out once (4 B/elem in float32); compute-bound on the CPU (a scalar
    libm log per pair keeps the loop from vectorizing).
    """
    literally(fmt)
    _fill_all(out, mean, std, seed, offset, unit, _normal_block, fmt)


def _storage(dtype, fmt):
    """The kernels' literal format and the compute type of data of ``dtype`` stored as
    ``fmt`` (None: as itself)."""
    if fmt is None:
        return dtype.name, dtype.type
    return fmt, np.float32


def _unit():
    """Blocks of 4 elements per unit of work: ``config.CPU_RANDOM_CHUNK`` elements."""
    return max(1, int(config.CPU_RANDOM_CHUNK) // 4)


@parallel_launcher
def dropout(x, y, threshold, scale, seed, offset, stream=None, fmt=None):
    """``y[i] = x[i]·scale`` where ``word(i) ≥ threshold``, else exactly 0.

    ``word(i)`` is element i of the Philox4x32-10 stream ``(seed, offset)``
    (``kernels/philox.py``); keep probability ``1 − threshold / 2³²``. The same call on
    dy gives dropout's backward.

    Args:
        x, y: 1-D C-contiguous NumPy arrays of one dtype (float32 or float64, or uint16
            bits of float16/bfloat16), same size.
        threshold: int in [0, 2³²] (0 keeps every element, 2³² drops every one).
        scale: float, cast to the compute dtype.
        seed, offset: ints in [0, 2⁶⁴).
        stream: ignored (the CPU has none); accepted as on CUDA.
        fmt: "float16" or "bfloat16" for uint16 arrays; None for float ones.
    """
    if x.size == 0:
        return
    fmt, f = _storage(x.dtype, fmt)
    launch(
        _dropout_kernel, fmt, x, y, np.int64(threshold), f(scale), np.uint64(seed),
        np.uint64(offset), _unit(),
    )  # fmt: skip


@parallel_launcher
def fill(out, distribution, a, b, seed, offset, stream=None, fmt=None):
    """Fill ``out`` in place from the stream ``(seed, offset)``: ``distribution``
    "uniform", ``a + (b − a)·u`` with u uniform on [0, 1), or "normal", ``a + b·z`` with
    z standard normal (Box-Muller).

    ``u`` has 24 random bits in float32 and 32 in float64 (one Philox word per element:
    float64 values are multiples of 2⁻³²·(b − a)).

    Args:
        out: 1-D C-contiguous float32 or float64 NumPy array, or uint16 bits of
            float16/bfloat16 (drawn in float32, as a float32 fill, and rounded once).
        distribution: "uniform" or "normal".
        a, b: low and high, or mean and std; floats, cast to the compute dtype.
        seed, offset: ints in [0, 2⁶⁴).
        stream: ignored (the CPU has none); accepted as on CUDA.
        fmt: "float16" or "bfloat16" for a uint16 ``out``; None for a float one.
    """
    kernel = {"uniform": _uniform_kernel, "normal": _normal_kernel}[distribution]
    if out.size > 0:
        fmt, f = _storage(out.dtype, fmt)
        launch(kernel, fmt, out, f(a), f(b), np.uint64(seed), np.uint64(offset), _unit())
