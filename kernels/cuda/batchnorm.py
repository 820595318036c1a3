"""CUDA batch normalization: statistics, normalization and gradient kernels and launchers.

``x`` is C-contiguous ``(outer, C, inner)``; the kernels see it flat. Every launch of one
call is queued on the caller's stream, with no host round trip in between:

forward (training)  ``_bn_stats_kernel``          x → per-block Welford partials (3, P, C)
                    ``_bn_stats_finalize_kernel`` Chan-merge → mean, invstd, running stats
                    ``_bn_normalize_kernel``      x → y
backward            ``_bn_grad_kernel``           dy, x → per-block partials of Σdy, Σdy·(x−mean)
                    ``_bn_grad_finalize_kernel``  → dbias, dweight, coefficients of dx
                    ``_bn_dx_kernel``             dy, x → dx

The per-channel math of the finalize kernels and the per-element ``dx`` are the rules of
``kernels/rules.py`` (``batch_norm_statistics``, ``batch_norm_grad_coefficients``,
``batch_norm_grad_input``), the same functions the CPU kernels compile.

Memory traffic: forward reads x twice and writes y once; backward reads dy and x twice
and writes dx once (training; eval skips the second read of x). Partials are O(P·C).

The per-channel reductions run on a grid ``(ceil(C / bx), P)`` of ``(bx, by)`` blocks:
``bx`` adjacent channels, ``by`` threads walking down a chunk of each channel's
``outer·inner`` elements, then a column reduction over the block's rows. Both layouts
load coalesced:

* ``inner > 1`` (NCHW): ``bx = 1``, a block per (channel, chunk); consecutive threads
  read consecutive elements of an ``(n, c)`` row, walking from row to row with an
  incremental index (no division per element).
* ``inner == 1`` (channels-last): ``bx = min(32, next_pow2(C))`` (one load instruction of
  a warp reads ``32 / bx`` rows of ``bx`` contiguous channels).

The elementwise passes are one flat, grid-stride, coalesced scaffold for both layouts.
Each thread keeps ``_UNROLL`` (statistics: ``_TILE``) loads in flight. Indices are int64
throughout. The kernels accumulate and compute in ``x.dtype`` (``x.dtype.type``
literals; the rules' literals are float32), so float32 kernels are float32 only; the
compile gate checks their PTX. The kernels that touch ``x``, ``dy``, ``y`` or ``dx``
exist once per storage format (``_formats``): float16/bfloat16 data (uint16 bits, torch's
mixed rule: per-channel arrays float32) is loaded to float32, computed as float32 data
is, and rounded once on store; the finalize kernels are shared.

References: Chan, Golub & LeVeque (1983) for the merge; Ioffe & Szegedy (2015) for the
op; PyTorch's ``Normalization.cuh`` for the layout split and the partials/finalize scheme.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import config, rules
from . import _formats
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
_normalized, _inverse_std, _batch_norm_statistics, _grad_coefficients, _grad_input = (
    rules.compiled_batch_norm(cuda.jit(device=True, inline="always"))
)


@cuda.jit(device=True, inline="always")
def _channel_start(inner, nch, chunk, m):
    """This thread's walk down chunk ``p = blockIdx.y`` (elements ``[p·chunk,
    (p+1)·chunk)`` of the ``m = outer·inner``) of channel
    ``c = blockIdx.x·blockDim.x + threadIdx.x``, ``blockDim.y`` threads abreast.

    Returns ``(c, j, hi, i, a, stride, dr, da, wrap)``: channel-flat index ``j`` (advancing
    by ``stride = blockDim.y`` up to ``hi``), its position ``i`` in its ``(n, c)`` row, its
    offset ``a`` in ``x``, and the increments ``_channel_step`` needs.
    """
    c = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    p = np.int64(cuda.blockIdx.y)
    stride = np.int64(cuda.blockDim.y)
    row = nch * inner
    j = p * chunk + cuda.threadIdx.y
    i = j % inner
    a = (j // inner) * row + c * inner + i
    dr = stride % inner
    hi = min((p + 1) * chunk, m) if c < nch else j  # a channel past C walks nothing
    return c, j, hi, i, a, stride, dr, (stride // inner) * row + dr, row - inner


@cuda.jit(device=True, inline="always")
def _channel_step(i, a, dr, da, inner, wrap):
    """Advance ``(i, a)`` of ``_channel_start`` by one stride: two adds and a compare."""
    i += dr
    a += da
    if i >= inner:
        i -= inner
        a += wrap
    return i, a


@cuda.jit(device=True, inline="always")
def _flat_start(inner, nch):
    """This thread's grid-stride walk over flat ``(outer, C, inner)`` elements.

    Returns ``(e, stride, i, ch, dr, dq)``: element ``e``, its position ``i`` in its row and
    its channel ``ch``, and the increments ``_flat_step`` needs for ``stride``.
    """
    e = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    stride = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    return e, stride, e % inner, (e // inner) % nch, stride % inner, (stride // inner) % nch


@cuda.jit(device=True, inline="always")
def _flat_step(i, ch, dr, dq, inner, nch):
    """Advance ``(i, ch)`` of ``_flat_start`` by one stride: ``_channel_step`` with a carry
    of one channel, then ``ch`` modulo C. Two compares, no division."""
    i, ch = _channel_step(i, ch, dr, dq, inner, 1)
    if ch >= nch:
        ch -= nch
    return i, ch


def _data_kernels(load, store, compute):
    """The kernels that read or write ``x``, ``dy``, ``y`` or ``dx``, for one storage
    format (``_formats``): elements loaded with ``load``, accumulated and computed in
    ``compute(x)``, results stored with ``store``."""

    @cuda.jit(device=True, inline="always")
    def channel_map(element, x, dy, operands, flag, out, inner, nch, read_x, read_dy):
        """``out[k] = element(dy[k], x[k], c, operands, flag)`` over this thread's grid-stride
        elements (``c`` the channel of ``k``); only ``x`` (``read_x``) and ``dy``
        (``read_dy``) are loaded, all ``_UNROLL`` loads issued before the stores.

        ``element`` is a device function: Numba compiles (and inlines) a copy of this loop
        for each, so the normalization and ``dx`` kernels share their scaffolding.
        """
        total = out.size
        e, stride, i, ch, dr, dq = _flat_start(inner, nch)
        acc = compute(out)
        grads = cuda.local.array(_UNROLL, acc)
        vals = cuda.local.array(_UNROLL, acc)
        chans = cuda.local.array(_UNROLL, np.int64)
        while e < total:
            for u in range(_UNROLL):
                k = e + u * stride
                if k < total:
                    if read_dy:
                        grads[u] = load(dy[np.uint64(k)])
                    if read_x:
                        vals[u] = load(x[np.uint64(k)])
                    chans[u] = ch
                i, ch = _flat_step(i, ch, dr, dq, inner, nch)
            for u in range(_UNROLL):
                k = e + u * stride
                if k < total:
                    v = element(grads[u], vals[u], np.uint64(chans[u]), operands, flag)
                    out[np.uint64(k)] = store(v)
            e += _UNROLL * stride

    @cuda.jit
    def stats_kernel(
        x,  # input, flat (outer * C * inner,)
        partials,  # output, (3, P, C): count, mean, M2 of chunk p of channel c
        inner,  # elements per (n, c) row (1: channels-last)
        chunk,  # channel elements per block row p: [p·chunk, (p+1)·chunk)
    ):
        """Welford summaries of one chunk of ``blockDim.x`` adjacent channels into
        ``partials[:, p, c]``.

        Per element: one load (x is read once), a few flops; one division per tile.
        """
        nch = partials.shape[2]
        c, j, hi, i, a, stride, dr, da, wrap = _channel_start(inner, nch, chunk, x.size // nch)
        acc = compute(x)
        vals = cuda.local.array(_TILE, acc)
        n = acc.type(0)
        mean = acc.type(0)
        m2 = acc.type(0)
        while j < hi:
            count = 0
            for u in range(_TILE):
                if j < hi:  # the valid loads are a prefix: vals[:count]
                    vals[u] = load(x[np.uint64(a)])
                    count += 1
                j += stride
                i, a = _channel_step(i, a, dr, da, inner, wrap)
            n, mean, m2 = welford_merge_values(n, mean, m2, vals, count)

        smem = cuda.shared.array((3, MAX_WARPS, WARP_SIZE), acc)
        n, mean, m2 = block_welford(n, mean, m2, np.int64(cuda.blockDim.x), smem)
        if cuda.threadIdx.y == 0 and c < nch:
            p = cuda.blockIdx.y
            partials[0, p, c] = n
            partials[1, p, c] = mean
            partials[2, p, c] = m2

    @cuda.jit(device=True, inline="always")
    def normalize_element(g, v, c, operands, flag):
        """``y = (x − mean)·(invstd·weight) + bias``; ``operands = (mean, invstd, weight,
        bias)``."""
        mean, invstd, weight, bias = operands
        return _normalized(v, mean[c], invstd[c] * weight[c], bias[c])

    @cuda.jit
    def normalize_kernel(
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
        channels-last).
        """
        operands = (mean, invstd, weight, bias)
        channel_map(normalize_element, x, x, operands, False, y, inner, mean.size, True, False)

    @cuda.jit
    def grad_kernel(
        dy,  # input, flat (outer * C * inner,)
        x,  # input, flat like dy
        mean,  # input, (C,)
        partials,  # output, (2, P, C): Σdy and Σdy·(x − mean) of chunk p of channel c
        inner,  # elements per (n, c) row (1: channels-last)
        chunk,  # channel elements per block row p: [p·chunk, (p+1)·chunk)
    ):
        """Partial sums ``Σdy``, ``Σdy·(x − mean)`` of one chunk of ``blockDim.x`` adjacent
        channels into ``partials[:, p, c]``."""
        nch = partials.shape[2]
        c, j, hi, i, a, stride, dr, da, wrap = _channel_start(inner, nch, chunk, x.size // nch)
        acc = compute(x)
        s_dy = acc.type(0)
        s_dyx = acc.type(0)
        mc = mean[min(c, nch - 1)]
        while j < hi:
            for _ in range(_UNROLL):
                if j < hi:
                    g = load(dy[np.uint64(a)])
                    s_dy += g
                    s_dyx += g * (load(x[np.uint64(a)]) - mc)
                j += stride
                i, a = _channel_step(i, a, dr, da, inner, wrap)

        smem = cuda.shared.array((MAX_WARPS, WARP_SIZE), acc)
        width = np.int64(cuda.blockDim.x)
        s_dy = block_sum(s_dy, width, smem)
        s_dyx = block_sum(s_dyx, width, smem)
        if cuda.threadIdx.y == 0 and c < nch:
            p = cuda.blockIdx.y
            partials[0, p, c] = s_dy
            partials[1, p, c] = s_dyx

    @cuda.jit(device=True, inline="always")
    def dx_element(g, v, c, operands, training):
        """``rules.batch_norm_grad_input``; ``operands = (mean, coef)``."""
        mean, coef = operands
        return _grad_input(g, v, mean[c], coef[0, c], coef[1, c], coef[2, c], training)

    @cuda.jit
    def dx_kernel(
        dy,  # input, flat (outer * C * inner,)
        x,  # input, flat like dy (not read when not training)
        mean,  # input, (C,)
        coef,  # input, (3, C): a, b, d from _bn_grad_finalize_kernel
        dx,  # output, flat like dy
        inner,  # elements per (n, c) row (1: channels-last)
        training,  # differentiate through the batch statistics
    ):
        """Training: ``dx = a·dy − b·(x − mean) − d``; eval: ``dx = a·dy``.

        Reads dy (and x when training) once, writes dx once.
        """
        operands = (mean, coef)
        channel_map(dx_element, x, dy, operands, training, dx, inner, mean.size, training, True)

    return {
        "stats": stats_kernel,
        "normalize": normalize_kernel,
        "grad": grad_kernel,
        "dx": dx_kernel,
    }


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
    """Per channel: merge the P partials, then ``rules.batch_norm_statistics`` in
    ``x.dtype`` (``invstd = 1/√(M2/n + eps)``, the running update with ``M2/(n − 1)``);
    eval: ``invstd = 1/√(running_var + eps)``.

    Grid ``ceil(C / 32)`` of ``(32, rows)`` blocks: threads across channels (coalesced
    partial reads), rows across the P partials, then a column reduction.
    """
    nch = mean.size
    c = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
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
            inv, rm, rv = _batch_norm_statistics(
                n, mu, m2, running_mean[c], running_var[c], momentum, eps, update_running
            )
            mean[c] = mu
            invstd[c] = inv
            if update_running:
                running_mean[c] = rm
                running_var[c] = rv
    elif cuda.threadIdx.y == 0 and c < nch:
        mean[c] = running_mean[c]
        invstd[c] = _inverse_std(running_var[c], eps)


@cuda.jit
def _bn_grad_finalize_kernel(
    partials,  # input, (2, P, C)
    weight,  # input, (C,)
    invstd,  # input, (C,)
    n,  # x.dtype scalar: elements per channel (outer·inner)
    dweight,  # output, (C,)
    dbias,  # output, (C,)
    coef,  # output, (3, C): a, b, d of dx = a·dy − b·(x − mean) − d
):
    """Per channel: sum the P partials, then ``rules.batch_norm_grad_coefficients`` in
    ``x.dtype``: ``dbias = Σdy``, ``dweight = invstd·Σdy·(x − mean)`` and the coefficients
    of ``dx``.

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
        dweight[c], coef[0, c], coef[1, c], coef[2, c] = _grad_coefficients(
            s_dy, s_dyx, weight[c], invstd[c], n
        )


# One set per storage format (float arrays, and uint16 bits of float16 / bfloat16), under
# the registry's names (kernels/cuda/gate.py): _bn_stats_kernel, _bn_stats_float16_kernel, ...
_formats.define(globals(), _data_kernels, "bn_")


def _kernel(op: str, fmt: str | None):
    """The ``op`` kernel of the storage format ``fmt`` (None: float arrays)."""
    return _formats.lookup(globals(), op, fmt, "bn_")


# --- launchers --------------------------------------------------------------------


def _parts(n: int, target: int, min_per_part: int) -> tuple[int, int]:
    """Split ``n`` items into ``P`` parts of ``per`` items: ``(P, per)``.

    ``P`` is at most ``target`` (the blocks left for this split), at most one part per
    ``min_per_part`` items, and at most the grid's y extent; no part is empty.
    """
    parts = max(1, min(target, -(-n // max(1, min_per_part)), _MAX_GRID_Y))
    per = -(-n // parts)
    return -(-n // per), per


def _channel_partials(kernel, arrays, nstats, shape, dtype, stream):
    """Launch the per-channel reduction ``kernel`` over ``arrays`` for the layout of
    ``shape``; returns its ``(nstats, P, C)`` partials.

    ``ceil(C / bx)·P`` blocks of ``(bx, CUDA_THREADS / bx)``: ``bx = 1`` for NCHW,
    ``min(32, next_pow2(C))`` channels-last. ``P`` is chosen so that the grid about fills
    the device (and no block has less than ``CUDA_MIN_CHUNK`` elements to reduce).
    """
    outer, nch, inner = shape
    bx = 1 if inner > 1 else min(WARP_SIZE, 1 << (nch - 1).bit_length())
    cblocks = -(-nch // bx)
    nparts, chunk = _parts(outer * inner, resident_blocks() // cblocks, config.CUDA_MIN_CHUNK // bx)
    partials = cuda.device_array((nstats, nparts, nch), dtype, stream=stream)
    block = (bx, config.CUDA_THREADS // bx)
    kernel[(cblocks, nparts), block, stream](*arrays, partials, inner, chunk)
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
    training, update_running, momentum, eps, stream=None, fmt=None,
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
        fmt: "float16" or "bfloat16": ``x`` and ``y`` are uint16 bits of that format and
            the ``(C,)`` arrays float32 (torch's mixed rule), everything computed in
            float32 and ``y`` rounded once; None: float arrays of one dtype.
    """
    stream = 0 if stream is None else stream
    dtype = mean.dtype  # the compute dtype: x.dtype, float32 for 16-bit x
    nch = x.shape[1]
    flat_x = x.reshape(x.size)
    if training:
        stats = _kernel("stats", fmt)
        partials = _channel_partials(stats, (flat_x,), 3, x.shape, dtype, stream)
    else:
        partials = cuda.device_array((3, 0, nch), dtype, stream=stream)
    grid, block = _finalize_grid(nch)
    _bn_stats_finalize_kernel[grid, block, stream](
        partials, running_mean, running_var, mean, invstd,
        bool(training), bool(training and update_running),
        dtype.type(momentum), dtype.type(eps),
    )  # fmt: skip
    grid, block = _flat_grid(x.size)
    _kernel("normalize", fmt)[grid, block, stream](
        flat_x, mean, invstd, weight, bias, y.reshape(y.size), x.shape[2]
    )


def batch_norm_backward(
    dy, x, weight, mean, invstd, dx, dweight, dbias, training, stream=None, fmt=None
):  # fmt: skip
    """Gradients of batch normalization over C-contiguous ``(outer, C, inner)`` arrays.

    ``dbias = Σdy``, ``dweight = Σdy·xhat`` per channel (partials per block, summed per
    channel, with the coefficients of ``dx``), then ``dx`` (through the batch statistics
    when ``training``). Three launches on ``stream``, no host sync; the only allocations
    are the ``(2, P, C)`` partials and the ``(3, C)`` coefficients, on ``stream``.

    Args:
        dy, x, dx: device arrays ``(outer, C, inner)`` of float32 or float64.
        weight, mean, invstd, dweight, dbias: ``(C,)`` device arrays of ``x.dtype``.
        training: whether the forward pass normalized with the batch statistics.
        stream: a numba stream, or 0/None for the default stream.
        fmt: as in :func:`batch_norm_forward` (``dy``, ``x``, ``dx`` stored as ``fmt``).
    """
    stream = 0 if stream is None else stream
    dtype = invstd.dtype  # the compute dtype
    outer, nch, inner = x.shape
    flat_dy = dy.reshape(dy.size)
    flat_x = x.reshape(x.size)
    partials = _channel_partials(
        _kernel("grad", fmt), (flat_dy, flat_x, mean), 2, x.shape, dtype, stream
    )
    coef = cuda.device_array((3, nch), dtype, stream=stream)
    grid, block = _finalize_grid(nch)
    _bn_grad_finalize_kernel[grid, block, stream](
        partials, weight, invstd, dtype.type(outer * inner), dweight, dbias, coef
    )
    grid, block = _flat_grid(x.size)
    _kernel("dx", fmt)[grid, block, stream](
        flat_dy, flat_x, mean, coef, dx.reshape(dx.size), inner, bool(training)
    )
