"""CUDA batch normalization: statistics, normalization and gradient kernels and launchers.

``x`` is C-contiguous ``(outer, C, inner)``; the kernels see it flat. Every launch of one
call is queued on the caller's stream, with no host round trip in between:

forward (training)  ``_bn_stats_*_kernel``      x → per-block Welford partials (3, P, C)
                    ``_bn_stats_finalize_kernel`` Chan-merge → mean, invstd, running stats
                    ``_bn_normalize_kernel``     x → y
backward            ``_bn_grad_*_kernel``       dy, x → per-block partials of Σdy, Σdy·(x−mean)
                    ``_bn_grad_finalize_kernel`` → dbias, dweight
                    ``_bn_dx_kernel``            dy, x → dx

Memory traffic: forward reads x twice and writes y once; backward reads dy and x twice
and writes dx once (training; eval skips the second read of x). Partials are O(P·C).

Two layouts for the per-channel reductions, each with coalesced loads:

* ``inner > 1`` (NCHW, ``_nchw``): grid ``(C, P)``, one block per (channel, chunk of the
  channel's ``outer·inner`` elements); consecutive threads read consecutive elements of
  an ``(n, c)`` row, walking from row to row with an incremental index (no division per
  element). Block reduction over the whole block.
* ``inner == 1`` (channels-last, ``_cl``): grid ``(ceil(C / bx), P)`` of ``(bx, by)``
  blocks, ``bx = min(32, next_pow2(C))`` threads across adjacent channels (one load
  instruction of a warp reads ``32 / bx`` rows of ``bx`` contiguous channels), ``by``
  across rows. Column reduction over the block's rows.

The elementwise passes are one flat, grid-stride, coalesced kernel each for both layouts.
Each thread keeps ``_UNROLL`` (statistics: ``_TILE``) loads in flight. Indices are int64
throughout. float32 kernels compute in float32 only (``x.dtype.type`` literals,
reductions accumulate in ``x.dtype``); the compile gate checks their PTX.

References: Chan, Golub & LeVeque (1983) for the merge; Ioffe & Szegedy (2015) for the
op; PyTorch's ``Normalization.cuh`` for the layout split and the partials/finalize scheme.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .. import config, rules
from ._launch import resident_blocks
from ._reduce import (
    MAX_WARPS,
    WARP_SIZE,
    block_sum,
    block_welford,
    welford_merge,
    welford_merge_values,
)

# Loads in flight per thread per loop iteration of the elementwise and gradient kernels,
# and values per Welford tile (one division per tile) of the statistics kernels. Compile-
# time constants (they size register arrays), so they live here rather than in ``config``.
# Hot loops index with np.uint64: the offsets are non-negative, and unsigned indices skip
# Numba's negative-index wraparound (three instructions per access).
_UNROLL = 4
_TILE = 8
# Largest gridDim.y: bounds the number of partials P per channel.
_MAX_GRID_Y = 65535


# --- device helpers ---------------------------------------------------------------

# The shared scalar rules (kernels/rules.py), compiled for the device.
_running_update = cuda.jit(device=True, inline="always")(rules.running_update)
_normalized = cuda.jit(device=True, inline="always")(rules.normalized)


@cuda.jit(device=True, inline="always")
def _nchw_start(inner, nch, chunk, m):
    """This thread's walk over chunk ``blockIdx.y`` of channel ``blockIdx.x`` (NCHW).

    Returns ``(j, hi, i, a, stride, dr, da, wrap)``: channel-flat index ``j`` (advancing by
    ``stride = blockDim.x`` up to ``hi``), its position ``i`` in its ``(n, c)`` row, its
    offset ``a`` in ``x``, and the increments ``_nchw_step`` needs.
    """
    c = np.int64(cuda.blockIdx.x)
    p = np.int64(cuda.blockIdx.y)
    stride = np.int64(cuda.blockDim.x)
    row = nch * inner
    j = p * chunk + cuda.threadIdx.x
    i = j % inner
    a = (j // inner) * row + c * inner + i
    dr = stride % inner
    return j, min((p + 1) * chunk, m), i, a, stride, dr, (stride // inner) * row + dr, row - inner


@cuda.jit(device=True, inline="always")
def _nchw_step(i, a, dr, da, inner, wrap):
    """Advance ``(i, a)`` of ``_nchw_start`` by one stride: two adds and a compare."""
    i += dr
    a += da
    if i >= inner:
        i -= inner
        a += wrap
    return i, a


@cuda.jit(device=True, inline="always")
def _cl_start(nch, rows_per_block, rows):
    """This thread's walk down rows ``blockIdx.y·rows_per_block + [0, rows_per_block)`` of
    channel ``c = blockIdx.x·blockDim.x + threadIdx.x`` (channels-last).

    Returns ``(c, r, hi, a, da)``: row ``r`` (advancing by ``blockDim.y`` up to ``hi``), its
    offset ``a = r·C + c`` in ``x``, and the offset increment ``da = blockDim.y·C``.
    """
    c = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    lo = np.int64(cuda.blockIdx.y) * rows_per_block
    r = lo + cuda.threadIdx.y
    return c, r, min(lo + rows_per_block, rows), r * nch + c, np.int64(cuda.blockDim.y) * nch


@cuda.jit(device=True, inline="always")
def _flat_start(inner, nch):
    """This thread's grid-stride walk over flat ``(outer, C, inner)`` elements.

    Returns ``(e, stride, i, ch, dr, dq)``: element ``e``, its position ``i`` in its row and
    its channel ``ch``, and the increments ``_channel_step`` needs for ``stride``.
    """
    e = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    stride = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    return e, stride, e % inner, (e // inner) % nch, stride % inner, (stride // inner) % nch


@cuda.jit(device=True, inline="always")
def _channel_step(i, ch, dr, dq, inner, nch):
    """Advance ``(i, ch)`` of ``_flat_start`` by one stride: two compares, no division."""
    i += dr
    ch += dq
    if i >= inner:
        i -= inner
        ch += 1
    if ch >= nch:
        ch -= nch
    return i, ch


# --- forward ----------------------------------------------------------------------


@cuda.jit
def _bn_stats_nchw_kernel(
    x,  # input, flat (outer * C * inner,), inner > 1
    partials,  # output, (3, P, C): count, mean, M2 of block (c, p)'s chunk of channel c
    inner,  # elements per (n, c) row
    chunk,  # channel elements per block: block (c, p) reduces [p·chunk, (p+1)·chunk)
):
    """Welford summary of one chunk of one channel into ``partials[:, p, c]``.

    Per element: one load (x is read once), a few flops; one division per tile.
    """
    nch = partials.shape[2]
    j, hi, i, a, stride, dr, da, wrap = _nchw_start(inner, nch, chunk, x.size // nch)
    vals = cuda.local.array(_TILE, x.dtype)
    n = x.dtype.type(0)
    mean = x.dtype.type(0)
    m2 = x.dtype.type(0)
    while j < hi:
        count = 0
        for u in range(_TILE):
            if j < hi:  # the valid loads are a prefix: vals[:count]
                vals[u] = x[np.uint64(a)]
                count += 1
            j += stride
            i, a = _nchw_step(i, a, dr, da, inner, wrap)
        n, mean, m2 = welford_merge_values(n, mean, m2, vals, count)

    smem = cuda.shared.array((3, MAX_WARPS, 1), x.dtype)
    n, mean, m2 = block_welford(n, mean, m2, 1, smem)
    if cuda.threadIdx.x == 0:
        c = cuda.blockIdx.x
        p = cuda.blockIdx.y
        partials[0, p, c] = n
        partials[1, p, c] = mean
        partials[2, p, c] = m2


@cuda.jit
def _bn_stats_cl_kernel(
    x,  # input, flat (rows * C,), channels fastest
    partials,  # output, (3, P, C): count, mean, M2 of block (·, p)'s rows, per channel
    rows_per_block,  # block (·, p) reduces rows [p·rows_per_block, (p+1)·rows_per_block)
):
    """Welford summaries of a block of rows for ``blockDim.x`` adjacent channels."""
    nch = partials.shape[2]
    c, r, hi, a, da = _cl_start(nch, rows_per_block, x.size // nch)
    vals = cuda.local.array(_TILE, x.dtype)
    n = x.dtype.type(0)
    mean = x.dtype.type(0)
    m2 = x.dtype.type(0)
    if c < nch:
        while r < hi:
            count = 0
            for u in range(_TILE):
                if r < hi:  # the valid loads are a prefix: vals[:count]
                    vals[u] = x[np.uint64(a)]
                    count += 1
                r += np.int64(cuda.blockDim.y)
                a += da
            n, mean, m2 = welford_merge_values(n, mean, m2, vals, count)

    smem = cuda.shared.array((3, MAX_WARPS, WARP_SIZE), x.dtype)
    n, mean, m2 = block_welford(n, mean, m2, np.int64(cuda.blockDim.x), smem)
    if cuda.threadIdx.y == 0 and c < nch:
        p = cuda.blockIdx.y
        partials[0, p, c] = n
        partials[1, p, c] = mean
        partials[2, p, c] = m2


@cuda.jit
def _bn_stats_finalize_kernel(
    partials,  # input, (3, P, C) Welford partials (P = 0 when not training)
    running_mean,  # in/out, (C,)
    running_var,  # in/out, (C,)
    mean,  # output, (C,)
    invstd,  # output, (C,)
    training,  # batch statistics (True) or running statistics (False)
    update_running,  # training only: blend the batch statistics into the running ones
    momentum,  # x.dtype scalar
    eps,  # x.dtype scalar
):
    """Per channel: merge the P partials; ``invstd = 1/√(var + eps)``; running update
    ``r ← (1 − momentum)·r + momentum·b`` with the unbiased variance ``M2/(n − 1)``.

    Grid ``ceil(C / 32)`` of ``(32, rows)`` blocks: threads across channels (coalesced
    partial reads), rows across the P partials, then a column reduction.
    """
    nch = mean.size
    c = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    one = mean.dtype.type(1)
    if training:
        n = mean.dtype.type(0)
        mu = mean.dtype.type(0)
        m2 = mean.dtype.type(0)
        if c < nch:
            for p in range(np.int64(cuda.threadIdx.y), partials.shape[1], cuda.blockDim.y):
                n, mu, m2 = welford_merge(
                    n, mu, m2, partials[0, p, c], partials[1, p, c], partials[2, p, c]
                )
        smem = cuda.shared.array((3, MAX_WARPS, WARP_SIZE), mean.dtype)
        n, mu, m2 = block_welford(n, mu, m2, np.int64(cuda.blockDim.x), smem)
        if cuda.threadIdx.y == 0 and c < nch:
            mean[c] = mu
            invstd[c] = one / math.sqrt(m2 / n + eps)
            if update_running:
                running_mean[c] = _running_update(running_mean[c], mu, momentum)
                running_var[c] = _running_update(running_var[c], m2 / (n - one), momentum)
    elif cuda.threadIdx.y == 0 and c < nch:
        mean[c] = running_mean[c]
        invstd[c] = one / math.sqrt(running_var[c] + eps)


@cuda.jit
def _bn_normalize_kernel(
    x,  # input, flat (outer * C * inner,)
    mean,  # input, (C,)
    invstd,  # input, (C,)
    weight,  # input, (C,)
    bias,  # input, (C,)
    y,  # output, flat like x
    inner,  # elements per (n, c) row (1: channels-last)
):
    """``y = (x − mean)·(invstd·weight) + bias``: reads x once, writes y once.

    The per-channel operands are read through L1 (broadcast in NCHW, coalesced in
    channels-last); all ``_UNROLL`` loads of x are issued before the stores.
    """
    nch = mean.size
    total = x.size
    e, stride, i, ch, dr, dq = _flat_start(inner, nch)
    vals = cuda.local.array(_UNROLL, x.dtype)
    chans = cuda.local.array(_UNROLL, np.int64)
    while e < total:
        for u in range(_UNROLL):
            k = e + u * stride
            if k < total:
                vals[u] = x[np.uint64(k)]
                chans[u] = ch
            i, ch = _channel_step(i, ch, dr, dq, inner, nch)
        for u in range(_UNROLL):
            k = e + u * stride
            if k < total:
                c = np.uint64(chans[u])
                y[np.uint64(k)] = _normalized(vals[u], mean[c], invstd[c] * weight[c], bias[c])
        e += _UNROLL * stride


# --- backward ---------------------------------------------------------------------


@cuda.jit
def _bn_grad_nchw_kernel(
    dy,  # input, flat (outer * C * inner,), inner > 1
    x,  # input, flat like dy
    mean,  # input, (C,)
    partials,  # output, (2, P, C): Σdy and Σdy·(x − mean) of block (c, p)'s chunk
    inner,  # elements per (n, c) row
    chunk,  # channel elements per block
):
    """Partial sums ``Σdy``, ``Σdy·(x − mean)`` of one chunk of one channel (NCHW)."""
    nch = partials.shape[2]
    j, hi, i, a, stride, dr, da, wrap = _nchw_start(inner, nch, chunk, x.size // nch)
    mc = mean[cuda.blockIdx.x]
    s_dy = x.dtype.type(0)
    s_dyx = x.dtype.type(0)
    while j < hi:
        for _ in range(_UNROLL):
            if j < hi:
                g = dy[np.uint64(a)]
                s_dy += g
                s_dyx += g * (x[np.uint64(a)] - mc)
            j += stride
            i, a = _nchw_step(i, a, dr, da, inner, wrap)

    smem = cuda.shared.array((MAX_WARPS, 1), x.dtype)
    s_dy = block_sum(s_dy, 1, smem)
    s_dyx = block_sum(s_dyx, 1, smem)
    if cuda.threadIdx.x == 0:
        c = cuda.blockIdx.x
        p = cuda.blockIdx.y
        partials[0, p, c] = s_dy
        partials[1, p, c] = s_dyx


@cuda.jit
def _bn_grad_cl_kernel(
    dy,  # input, flat (rows * C,), channels fastest
    x,  # input, flat like dy
    mean,  # input, (C,)
    partials,  # output, (2, P, C): Σdy and Σdy·(x − mean) of block (·, p)'s rows
    rows_per_block,  # block (·, p) reduces rows [p·rows_per_block, (p+1)·rows_per_block)
):
    """Partial sums ``Σdy``, ``Σdy·(x − mean)`` of a block of rows (channels-last)."""
    nch = partials.shape[2]
    c, r, hi, a, da = _cl_start(nch, rows_per_block, x.size // nch)
    s_dy = x.dtype.type(0)
    s_dyx = x.dtype.type(0)
    if c < nch:
        mc = mean[c]
        while r < hi:
            for _ in range(_UNROLL):
                if r < hi:
                    g = dy[np.uint64(a)]
                    s_dy += g
                    s_dyx += g * (x[np.uint64(a)] - mc)
                r += np.int64(cuda.blockDim.y)
                a += da

    smem = cuda.shared.array((MAX_WARPS, WARP_SIZE), x.dtype)
    width = np.int64(cuda.blockDim.x)
    s_dy = block_sum(s_dy, width, smem)
    s_dyx = block_sum(s_dyx, width, smem)
    if cuda.threadIdx.y == 0 and c < nch:
        p = cuda.blockIdx.y
        partials[0, p, c] = s_dy
        partials[1, p, c] = s_dyx


@cuda.jit
def _bn_grad_finalize_kernel(
    partials,  # input, (2, P, C)
    invstd,  # input, (C,)
    dweight,  # output, (C,)
    dbias,  # output, (C,)
):
    """Per channel: ``dbias = Σdy``, ``dweight = invstd·Σdy·(x − mean)`` over the P partials.

    Same ``(32, rows)`` block layout as ``_bn_stats_finalize_kernel``.
    """
    nch = invstd.size
    c = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    s_dy = invstd.dtype.type(0)
    s_dyx = invstd.dtype.type(0)
    if c < nch:
        for p in range(np.int64(cuda.threadIdx.y), partials.shape[1], cuda.blockDim.y):
            s_dy += partials[0, p, c]
            s_dyx += partials[1, p, c]
    smem = cuda.shared.array((MAX_WARPS, WARP_SIZE), invstd.dtype)
    width = np.int64(cuda.blockDim.x)
    s_dy = block_sum(s_dy, width, smem)
    s_dyx = block_sum(s_dyx, width, smem)
    if cuda.threadIdx.y == 0 and c < nch:
        dbias[c] = s_dy
        dweight[c] = s_dyx * invstd[c]


@cuda.jit
def _bn_dx_kernel(
    dy,  # input, flat (outer * C * inner,)
    x,  # input, flat like dy (not read when not training)
    mean,  # input, (C,)
    invstd,  # input, (C,)
    weight,  # input, (C,)
    dweight,  # input, (C,)
    dbias,  # input, (C,)
    dx,  # output, flat like dy
    inner,  # elements per (n, c) row (1: channels-last)
    inv_count,  # x.dtype scalar, 1/n with n = outer·inner elements per channel
    training,  # differentiate through the batch statistics
):
    """Training: ``dx = w·invstd·(dy − dbias/n − (x − mean)·invstd·dweight/n)``;
    eval: ``dx = dy·w·invstd``.

    Reads dy (and x when training) once, writes dx once; loads issued before stores.
    """
    nch = mean.size
    total = dy.size
    e, stride, i, ch, dr, dq = _flat_start(inner, nch)
    grads = cuda.local.array(_UNROLL, dy.dtype)
    vals = cuda.local.array(_UNROLL, dy.dtype)
    chans = cuda.local.array(_UNROLL, np.int64)
    while e < total:
        for u in range(_UNROLL):
            k = e + u * stride
            if k < total:
                grads[u] = dy[np.uint64(k)]
                if training:
                    vals[u] = x[np.uint64(k)]
                chans[u] = ch
            i, ch = _channel_step(i, ch, dr, dq, inner, nch)
        for u in range(_UNROLL):
            k = e + u * stride
            if k < total:
                c = np.uint64(chans[u])
                scale = weight[c] * invstd[c]
                if training:
                    xmu_coef = invstd[c] * dweight[c] * inv_count
                    g = grads[u] - dbias[c] * inv_count - (vals[u] - mean[c]) * xmu_coef
                    dx[np.uint64(k)] = scale * g
                else:
                    dx[np.uint64(k)] = scale * grads[u]
        e += _UNROLL * stride


# --- launchers --------------------------------------------------------------------


def _parts(n: int, target: int, min_per_part: int) -> tuple[int, int]:
    """Split ``n`` items into ``P`` parts of ``per`` items: ``(P, per)``.

    ``P`` is at most ``target`` (the blocks left for this split), at most one part per
    ``min_per_part`` items, and at most the grid's y extent; no part is empty.
    """
    parts = max(1, min(target, -(-n // max(1, min_per_part)), _MAX_GRID_Y))
    per = -(-n // parts)
    return -(-n // per), per


def _channel_partials(nchw_kernel, cl_kernel, arrays, nstats, shape, dtype, stream):
    """Launch the per-channel reduction for the layout of ``shape``.

    Returns its ``(nstats, P, C)`` partials. NCHW: ``C·P`` blocks of ``CUDA_THREADS``;
    channels-last: ``ceil(C / bx)·P`` blocks of ``(bx, CUDA_THREADS / bx)``. ``P`` is
    chosen so that the grid about fills the device (and no block has less than
    ``CUDA_MIN_CHUNK`` elements to reduce).
    """
    outer, nch, inner = shape
    threads = config.CUDA_THREADS
    blocks = resident_blocks()
    if inner > 1:
        nparts, chunk = _parts(outer * inner, blocks // nch, config.CUDA_MIN_CHUNK)
        partials = cuda.device_array((nstats, nparts, nch), dtype, stream=stream)
        nchw_kernel[(nch, nparts), threads, stream](*arrays, partials, inner, chunk)
    else:
        bx = min(WARP_SIZE, 1 << (nch - 1).bit_length())
        cblocks = -(-nch // bx)
        nparts, rows = _parts(outer, blocks // cblocks, config.CUDA_MIN_CHUNK // bx)
        partials = cuda.device_array((nstats, nparts, nch), dtype, stream=stream)
        cl_kernel[(cblocks, nparts), (bx, threads // bx), stream](*arrays, partials, rows)
    return partials


def _finalize_grid(nch: int) -> tuple[int, tuple[int, int]]:
    """``ceil(C / 32)`` blocks of ``(32, CUDA_FINALIZE_ROWS)`` threads."""
    return -(-nch // WARP_SIZE), (WARP_SIZE, config.CUDA_FINALIZE_ROWS)


def _flat_grid(total: int) -> tuple[int, int]:
    """Grid-stride launch over ``total`` elements: at most the resident blocks."""
    threads = config.CUDA_THREADS
    return max(1, min(-(-total // (_UNROLL * threads)), resident_blocks())), threads


def batch_norm_forward(
    x, weight, bias, running_mean, running_var, y, mean, invstd,
    training, update_running, momentum, eps, stream=None,
):  # fmt: skip
    """Batch-normalize ``x`` (C-contiguous ``(outer, C, inner)``) per channel into ``y``.

    Training: batch mean and biased variance (Welford partials per block, Chan-merged
    per channel), written to ``mean``/``invstd``; running statistics updated when
    ``update_running``. Eval: the running statistics normalize. Then
    ``y = (x − mean)·invstd·weight + bias``. Three launches on ``stream`` (two in eval),
    no host sync; the only allocation is the ``(3, P, C)`` partials, on ``stream``.

    Args:
        x, y: device arrays ``(outer, C, inner)`` of float32 or float64.
        weight, bias, running_mean, running_var, mean, invstd: ``(C,)`` device arrays of
            ``x.dtype``.
        training, update_running: bools (``update_running`` implies ``training``).
        momentum, eps: floats, cast to ``x.dtype``.
        stream: a numba stream, or 0/None for the default stream.
    """
    stream = 0 if stream is None else stream
    dtype = x.dtype
    nch = x.shape[1]
    flat_x = x.reshape(x.size)
    if training:
        partials = _channel_partials(
            _bn_stats_nchw_kernel, _bn_stats_cl_kernel, (flat_x,), 3, x.shape, dtype, stream
        )
    else:
        partials = cuda.device_array((3, 0, nch), dtype, stream=stream)
    grid, block = _finalize_grid(nch)
    _bn_stats_finalize_kernel[grid, block, stream](
        partials, running_mean, running_var, mean, invstd,
        bool(training), bool(training and update_running),
        dtype.type(momentum), dtype.type(eps),
    )  # fmt: skip
    grid, block = _flat_grid(x.size)
    _bn_normalize_kernel[grid, block, stream](
        flat_x, mean, invstd, weight, bias, y.reshape(y.size), x.shape[2]
    )


def batch_norm_backward(
    dy, x, weight, mean, invstd, dx, dweight, dbias, training, stream=None
):  # fmt: skip
    """Gradients of batch normalization over C-contiguous ``(outer, C, inner)`` arrays.

    ``dbias = Σdy``, ``dweight = Σdy·xhat`` per channel (partials per block, summed per
    channel), then ``dx`` (through the batch statistics when ``training``). Three
    launches on ``stream``, no host sync; the only allocation is the ``(2, P, C)``
    partials, on ``stream``.

    Args:
        dy, x, dx: device arrays ``(outer, C, inner)`` of float32 or float64.
        weight, mean, invstd, dweight, dbias: ``(C,)`` device arrays of ``x.dtype``.
        training: whether the forward pass normalized with the batch statistics.
        stream: a numba stream, or 0/None for the default stream.
    """
    stream = 0 if stream is None else stream
    dtype = x.dtype
    outer, nch, inner = x.shape
    flat_dy = dy.reshape(dy.size)
    flat_x = x.reshape(x.size)
    partials = _channel_partials(
        _bn_grad_nchw_kernel, _bn_grad_cl_kernel, (flat_dy, flat_x, mean), 2, x.shape, dtype,
        stream,
    )  # fmt: skip
    grid, block = _finalize_grid(nch)
    _bn_grad_finalize_kernel[grid, block, stream](partials, invstd, dweight, dbias)
    grid, block = _flat_grid(x.size)
    _bn_dx_kernel[grid, block, stream](
        flat_dy, flat_x, mean, invstd, weight, dweight, dbias, dx.reshape(dx.size), inner,
        dtype.type(1.0 / (outer * inner)), bool(training),
    )  # fmt: skip
