"""CUDA counter-based random kernels: dropout, uniform and normal fills, and launchers.

Every value comes from the Philox4x32-10 stream of ``kernels/philox.py`` (element ``i``
of a call with ``(seed, offset)`` is lane ``i % 4`` of block ``i // 4``), compiled for
the device from the same source as the CPU kernels (``kernels/cpu/random.py``): dropout
outputs are the same bits on both backends; uniform values differ at most where NVVM
contracts ``low + (high − low)·u`` to an FMA (by the product's rounding, half an ulp of
it), normal values by libdevice's log against libm's and FMA contractions (a few ulp;
the tests allow 1e-6 relative). No state, no stored mask: dropout's backward is the same
launch on dy with the same ``(seed, offset)``.

Layout: a 1-D grid-stride loop over blocks of 4 elements (``b = cuda.grid(1)``,
``stride = cuda.gridsize(1)``), one Philox call per thread per trip, over at most the
resident blocks. A thread loads its 4 consecutive elements before it stores any (4
loads in flight; a warp's loads cover 512 contiguous bytes in float32, the lines shared
by its 4 load instructions through L1). Memory: dropout reads x and writes y (8 B/elem
in float32), the fills write out (4 B/elem). One kernel per storage format
(``_formats``): float16/bfloat16 data (uint16 bits) is computed in float32 -- the same
words, so the same mask and draws as float32 -- and rounded once on store.
Indices are np.uint64 (no negative-index wraparound); the last block writes only its lanes below n.

References: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011);
cuRAND's and PyTorch's Philox-based dropout for the counter/offset scheme.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import philox
from . import _formats
from ._launch import launch

# The shared generator and maps (kernels/philox.py), compiled for the device.
_philox = philox.compiled(cuda.jit(device=True, inline="always"))
_philox4x32_10 = _philox.philox4x32_10
_stream_block = _philox.stream_block
_dropout = _philox.dropout
_uniform = _philox.uniform
_normal_pair = _philox.normal_pair

_U1, _U2, _U3 = np.uint64(1), np.uint64(2), np.uint64(3)


def _random_kernels(load, store, compute):
    """The dropout, uniform and normal kernels of one storage format (``_formats``)."""

    @cuda.jit
    def dropout_kernel(
        x,  # input, (n,)
        y,  # output, (n,)
        threshold,  # int64 in [0, 2^32]: kept where word >= threshold
        scale,  # the compute dtype (x.dtype; float32 for 16-bit x)
        seed,  # uint64
        offset,  # uint64
    ):
        """Dropout: ``y = x·scale`` where ``word(i) ≥ threshold``, else 0
        (``philox.dropout``): reads x and writes y once (8 B/elem in float32)."""
        n = x.size
        dtype = compute(x)
        zero = dtype.type(0)
        b = cuda.grid(1)
        stride = cuda.gridsize(1)
        while 4 * b < n:
            w0, w1, w2, w3 = _stream_block(b, seed, offset)
            left = n - 4 * b  # lanes of this block below n: 4 except in the last block
            i = np.uint64(4 * b)
            x0 = load(x[i])
            x1 = load(x[i + _U1]) if left > 1 else zero
            x2 = load(x[i + _U2]) if left > 2 else zero
            x3 = load(x[i + _U3]) if left > 3 else zero
            y[i] = store(_dropout(x0, w0, threshold, scale, dtype))
            if left > 1:
                y[i + _U1] = store(_dropout(x1, w1, threshold, scale, dtype))
            if left > 2:
                y[i + _U2] = store(_dropout(x2, w2, threshold, scale, dtype))
            if left > 3:
                y[i + _U3] = store(_dropout(x3, w3, threshold, scale, dtype))
            b += stride

    @cuda.jit(device=True, inline="always")
    def uniform_block(out, i, left, w0, w1, w2, w3, low, high):
        """``out[i + l] = low + (high − low)·u(w_l)`` for the lanes ``l < left``."""
        dtype = compute(out)
        out[i] = store(_uniform(w0, low, high, dtype))
        if left > 1:
            out[i + _U1] = store(_uniform(w1, low, high, dtype))
        if left > 2:
            out[i + _U2] = store(_uniform(w2, low, high, dtype))
        if left > 3:
            out[i + _U3] = store(_uniform(w3, low, high, dtype))

    @cuda.jit(device=True, inline="always")
    def normal_block(out, i, left, w0, w1, w2, w3, mean, std):
        """``out[i + l] = mean + std·z_l`` for the lanes ``l < left``: Box-Muller on the
        word pairs (w0, w1) for lanes 0, 1 and (w2, w3) for lanes 2, 3."""
        dtype = compute(out)
        z0, z1 = _normal_pair(w0, w1, mean, std, dtype)
        out[i] = store(z0)
        if left > 1:
            out[i + _U1] = store(z1)
        if left > 2:
            z2, z3 = _normal_pair(w2, w3, mean, std, dtype)
            out[i + _U2] = store(z2)
            if left > 3:
                out[i + _U3] = store(z3)

    @cuda.jit
    def uniform_kernel(
        out,  # output, (n,)
        low,  # the compute dtype (out.dtype; float32 for 16-bit out)
        high,  # the compute dtype
        seed,  # uint64
        offset,  # uint64
    ):
        """Uniform fill: ``out = low + (high − low)·u``, ``u ∈ [0, 1)``
        (``philox.uniform``): writes out once (4 B/elem in float32)."""
        _fill(out, uniform_block, low, high, seed, offset)

    @cuda.jit
    def normal_kernel(
        out,  # output, (n,)
        mean,  # the compute dtype (out.dtype; float32 for 16-bit out)
        std,  # the compute dtype
        seed,  # uint64
        offset,  # uint64
    ):
        """Normal fill: ``out = mean + std·z``, Box-Muller on the word pairs (w0, w1) and
        (w2, w3) (``philox.normal_pair``): writes out once (4 B/elem in float32)."""
        _fill(out, normal_block, mean, std, seed, offset)

    return {"dropout": dropout_kernel, "uniform": uniform_kernel, "normal": normal_kernel}


@cuda.jit(device=True, inline="always")
def _fill(out, fill_block, a, b, seed, offset):
    """Every block of 4 elements of out this thread owns, by ``fill_block(out, i, left,
    w0, w1, w2, w3, a, b)``: a device function, so Numba compiles (and inlines) a copy of
    this loop for each, with the registers of a hand-written kernel."""
    n = out.size
    block = cuda.grid(1)
    stride = cuda.gridsize(1)
    while 4 * block < n:
        w0, w1, w2, w3 = _stream_block(block, seed, offset)
        left = n - 4 * block  # lanes of this block below n: 4 except in the last block
        fill_block(out, np.uint64(4 * block), left, w0, w1, w2, w3, a, b)
        block += stride


# One set per storage format (float arrays, and uint16 bits of float16 / bfloat16), under
# the registry's names (kernels/cuda/gate.py).
_formats.define(globals(), _random_kernels)


# --- launchers --------------------------------------------------------------------


def dropout(x, y, threshold, scale, seed, offset, stream=None, fmt=None):
    """``y[i] = x[i]·scale`` where ``word(i) ≥ threshold``, else exactly 0.

    ``word(i)`` is element i of the Philox4x32-10 stream ``(seed, offset)``
    (``kernels/philox.py``); keep probability ``1 − threshold / 2³²``. The same call on
    dy gives dropout's backward. Same mask as ``kernels/cpu/random.dropout``, bit for bit.

    Args:
        x, y: 1-D contiguous device arrays of one dtype (float32 or float64, or uint16
            bits of float16/bfloat16), same size.
        threshold: int in [0, 2³²] (0 keeps every element, 2³² drops every one).
        scale: float, cast to the compute dtype.
        seed, offset: ints in [0, 2⁶⁴).
        stream: a numba stream, or None for the default stream.
        fmt: "float16" or "bfloat16" for uint16 arrays; None for float ones.
    """
    f = _formats.compute_type(x.dtype, fmt)
    args = (x, y, np.int64(threshold), f(scale), np.uint64(seed), np.uint64(offset))
    launch(_formats.lookup(globals(), "dropout", fmt), x.size, args, stream, per_thread=4)


def fill(out, distribution, a, b, seed, offset, stream=None, fmt=None):
    """Fill ``out`` in place from the stream ``(seed, offset)``: ``distribution``
    "uniform", ``a + (b − a)·u`` with u uniform on [0, 1), or "normal", ``a + b·z`` with
    z standard normal (Box-Muller). Same values as ``kernels/cpu/random.fill`` (see the
    module docstring for where they may differ by an ulp).

    Args:
        out: 1-D contiguous float32 or float64 device array, or uint16 bits of
            float16/bfloat16 (drawn in float32, as a float32 fill, and rounded once).
        distribution: "uniform" or "normal".
        a, b: low and high, or mean and std; floats, cast to the compute dtype.
        seed, offset: ints in [0, 2⁶⁴).
        stream: a numba stream, or None for the default stream.
        fmt: "float16" or "bfloat16" for a uint16 ``out``; None for a float one.
    """
    f = _formats.compute_type(out.dtype, fmt)
    args = (out, f(a), f(b), np.uint64(seed), np.uint64(offset))
    launch(_formats.lookup(globals(), distribution, fmt), out.size, args, stream, per_thread=4)
