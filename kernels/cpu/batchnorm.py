"""Batch normalization on the CPU: ``@njit(parallel=True, cache=True)`` kernels.

A launcher makes two parallel passes over C-contiguous ``(outer, C, inner)`` arrays with
a serial per-channel step between them: forward, the statistics (count, mean, M2 per
channel), then ``rules.batch_norm_statistics``, then the normalization; backward, the
gradient sums (``Σ dy``, ``Σ dy (x - mean)``), then ``rules.batch_norm_grad_coefficients``,
then the input gradient ``rules.batch_norm_grad_input``. One kernel per layout walks the
work for all four passes (``_nchw_pass``, ``_channels_last_pass``, the pass an argument),
and every pass cuts it into the same contiguous range per thread (``parts`` ranges), so
a thread normalizes what it reduced, with one of two schedules:

* ``inner > 1`` (NCHW): the work is the units ``(c, n, k)`` -- chunk k, of at most
  ``config.CPU_CHUNK`` elements, of the row ``x[n, c]`` -- in channel-major order. A
  thread thus owns whole channels (parallel over channels; a channel split between two
  ranges, as when C < threads, is merged afterwards) and walks its units n-major, reading
  memory in long contiguous runs ``x[n, first_channel:last_channel + 1]``.
* ``inner == 1`` (channels-last): ``x`` is ``rows`` rows of C, cut into row ranges with
  per-thread, per-column partials. Per-column work runs as flat loops over *periods* of R
  rows (R * C elements, R a power of two, about ``config.CPU_PERIOD``): per-column
  parameters are tiled R times and per-column sums accumulate into R * C slots, folded to
  C by pairwise halving. Long flat loops vectorize without the per-row overhead that
  dominates when C is small (a row of 64 floats is four vector registers).

Statistics: each cache-resident chunk (NCHW) or block of ``config.CPU_BLOCK`` elements
(channels-last) gets its count, mean and M2 = Σ (x - mean)² from deviations around a
provisional mean k (the mean so far of its channel): one pass sums d = x - k and d², and
``mean = k + Σd / n``, ``M2 = Σd² - (Σd)² / n`` (the corrected two-pass formula). That is
exact to rounding while k is within the spread of the data; when it is not -- the first
chunk of a channel, where k is its first value, or data that shifts -- the chunk, still
in L1/L2, is passed again around its own mean (a two-pass). So memory sees one read of x
for the statistics. Partials merge across chunks and threads with Chan's formula in
float64; sums inside a chunk accumulate in ``x.dtype`` (vectorized; each accumulator adds
at most a few hundred terms). The per-channel steps run in float64 and round their
results to ``x.dtype`` once; the elementwise passes compute in ``x.dtype``.

float16/bfloat16 (``fmt``, uint16 bits; see ``_formats``) follow torch's mixed rule:
the per-channel arrays are float32 and ``x.dtype`` above reads float32. A reduction
decodes each cache-resident chunk or block into a per-thread float32 stage and runs the
float32 code on it (memory still reads x once); the elementwise passes load each
element to float32 and round the result once on store. So a 16-bit call computes what
the float32 call on the same values computes (its per-channel results bit for bit; each
``y``/``dx`` to the contraction into FMAs the compiler picks per loop), rounded once.

References: Chan, Golub & LeVeque, "Algorithms for computing the sample variance:
analysis and recommendations" (1983); Ioffe & Szegedy, "Batch Normalization" (2015).
"""

import numba
import numpy as np
from numba import literally, njit, prange

from pyopt.kernels import config, rules
from pyopt.kernels.cpu._formats import decoded, launch, load, staged, store
from pyopt.kernels.cpu._launch import parallel_launcher

# Reassociation lets float reductions vectorize. No nnan/ninf: NaN and inf must propagate.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# The shared scalar rules (kernels/rules.py), compiled for the CPU with the kernels' flags.
_chan_merge = njit(fastmath=_FASTMATH, cache=True)(rules.chan_merge)
_normalized, _inverse_std, _batch_norm_statistics, _grad_coefficients, _grad_input = (
    rules.compiled_batch_norm(njit(fastmath=_FASTMATH, cache=True))
)

# The passes of _nchw_pass and _channels_last_pass, and the rows of their ``params``:
# two reductions into float64 partials (3, P, C), a row per thread range, and two
# elementwise passes into ``out``.
_MOMENTS = 0  # partials = count, mean, M2 of x (params unused)
_GRAD_SUMS = 1  # partials[:2] += Σ dy, Σ dy * (x - mean); params[0] = mean
_NORMALIZE = 2  # out = (x - mean) * scale + shift; params = mean, scale, shift
_GRAD_INPUT = 3  # out = dx = a * dy - b * (x - mean) - d (eval: a * dy); params = mean, a, b, d


@njit(inline="always", cache=True)
def _partition(total, parts, i):
    """Bounds ``(lo, hi)`` of the i-th of ``parts`` near-equal contiguous ranges of ``total``."""
    return total * i // parts, total * (i + 1) // parts


@njit(inline="always", cache=True)
def _far_from_mean(n, sum_d, sum_d2):
    """Whether the provisional mean k was too far off for the corrected formula.

    ``(Σd)² / n`` is the part of ``Σd²`` due to the shift ``mean - k``; above half of it,
    ``Σd² - (Σd)² / n`` starts cancelling. False for NaN (it propagates unchanged).
    """
    sd = np.float64(sum_d)
    return 2.0 * sd * sd > n * np.float64(sum_d2)


@njit(inline="always", cache=True)
def _corrected_moments(n, k, sum_d, sum_d2):
    """Mean and M2 from the deviations d = x - k: ``k + Σd / n``, ``Σd² - (Σd)² / n``."""
    sd = np.float64(sum_d)
    return np.float64(k) + sd / n, np.float64(sum_d2) - sd * sd / n


@njit(fastmath=_FASTMATH, cache=True)
def _deviation_sums(v, k):
    """``(Σ (x - k), Σ (x - k)²)`` over one chunk, in ``x.dtype``."""
    s = v.dtype.type(0)
    s2 = v.dtype.type(0)
    for i in range(v.size):
        d = v[i] - k
        s += d
        s2 += d * d
    return s, s2


@njit(fastmath=_FASTMATH, cache=True)
def _chunk_moments(v, k):
    """Count, mean and M2 (float64) of a cache-resident chunk around provisional mean k.

    One pass over the chunk, a second (from L1) around the chunk's own mean when k is too
    far from it (see the module docstring).
    """
    n = np.float64(v.size)
    k = v.dtype.type(k)
    s, s2 = _deviation_sums(v, k)
    if _far_from_mean(n, s, s2):
        k = v.dtype.type(k + s / v.dtype.type(v.size))
        s, s2 = _deviation_sums(v, k)
    mean, m2 = _corrected_moments(n, k, s, s2)
    return n, mean, m2


@njit(fastmath=_FASTMATH, cache=True)
def _chunk_grad_sums(dyv, xv, m):
    """``(Σ dy, Σ dy * (x - mean))`` over one chunk, as float64."""
    s = dyv.dtype.type(0)
    sx = dyv.dtype.type(0)
    for i in range(dyv.size):
        g = dyv[i]
        s += g
        sx += g * (xv[i] - m)
    return np.float64(s), np.float64(sx)


@njit(inline="always", cache=True)
def _period_rows(channels, period):
    """Rows per channels-last period: the largest power of two R with R * C <= period."""
    reps = 1
    while 2 * reps * channels <= period:
        reps *= 2
    return reps


@njit(fastmath=_FASTMATH, cache=True)
def _tile(v, reps, out):
    """``out[: reps * C] = v`` repeated ``reps`` times (a power of two); ``v`` may be
    ``out[:C]``."""
    for c in range(v.size):
        out[c] = v[c]
    n = v.size
    while n < reps * v.size:
        src = out[:n]
        dst = out[n : 2 * n]
        for i in range(n):
            dst[i] = src[i]
        n *= 2


@njit(fastmath=_FASTMATH, cache=True)
def _fold(acc, reps, channels):
    """``acc[:C] = Σ_j acc[j*C : (j+1)*C]`` over ``reps`` (a power of two) rows, pairwise."""
    while reps > 1:
        half = reps // 2 * channels
        lo = acc[:half]
        hi = acc[half : 2 * half]
        for i in range(half):
            lo[i] += hi[i]
        reps //= 2


@njit(inline="always", cache=True)
def _four_periods(a, p, period, pad):
    """Four period-long pieces of ``a`` from ``p`` and the step to the next four.

    Whole periods while four fit; after that one (possibly shorter, last) period with three
    pieces of ``pad`` chosen by the caller to add exactly nothing. Four periods per pass
    over the accumulators quarter their load/store traffic.
    """
    if p + 4 * period <= a.size:
        return (
            a[p : p + period],
            a[p + period : p + 2 * period],
            a[p + 2 * period : p + 3 * period],
            a[p + 3 * period : p + 4 * period],
            4 * period,
        )
    n = min(period, a.size - p)
    return a[p : p + n], pad[:n], pad[:n], pad[:n], n


@njit(inline="always", cache=True)
def _clear(acc_a, acc_b):
    """Zero the two accumulators of a block's column sums."""
    for i in range(acc_a.size):
        acc_a[i] = 0
        acc_b[i] = 0


@njit(fastmath=_FASTMATH, cache=True)
def _block_deviation_sums(
    block,  # (rows * C,) flat rows
    k,  # (reps * C,) provisional column means, tiled
    channels,
    reps,  # rows per period
    sum_d,  # (reps * C,) scratch; out: sum_d[:C] = Σ (x - k) per column
    sum_d2,  # (reps * C,) scratch; out: sum_d2[:C] = Σ (x - k)² per column
):
    """Per-column deviation sums of a row block, in ``x.dtype``."""
    period = reps * channels
    _clear(sum_d, sum_d2)
    p = 0
    while p < block.size:
        x0, x1, x2, x3, step = _four_periods(block, p, period, k)  # k - k adds 0
        for i in range(x0.size):
            ki = k[i]
            d0, d1, d2, d3 = x0[i] - ki, x1[i] - ki, x2[i] - ki, x3[i] - ki
            sum_d[i] += (d0 + d1) + (d2 + d3)
            sum_d2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        p += step
    _fold(sum_d, reps, channels)
    _fold(sum_d2, reps, channels)


@njit(fastmath=_FASTMATH, cache=True)
def _block_grad_sums(
    dy,  # (rows * C,) flat rows
    x,  # (rows * C,) flat rows
    mean,  # (reps * C,) column means, tiled
    zeros,  # (reps * C,) zeros
    channels,
    reps,  # rows per period
    sum_dy,  # (reps * C,) scratch; out: sum_dy[:C] = Σ dy per column
    sum_dyx,  # (reps * C,) scratch; out: sum_dyx[:C] = Σ dy * (x - mean) per column
):
    """Per-column ``Σ dy`` and ``Σ dy * (x - mean)`` of a row block, in ``x.dtype``."""
    period = reps * channels
    _clear(sum_dy, sum_dyx)
    p = 0
    while p < x.size:
        g0, g1, g2, g3, step = _four_periods(dy, p, period, zeros)  # zero dy adds 0
        x0, x1, x2, x3, _ = _four_periods(x, p, period, mean)
        for i in range(g0.size):
            m = mean[i]
            sum_dy[i] += (g0[i] + g1[i]) + (g2[i] + g3[i])
            sum_dyx[i] += (g0[i] * (x0[i] - m) + g1[i] * (x1[i] - m)) + (
                g2[i] * (x2[i] - m) + g3[i] * (x3[i] - m)
            )
        p += step
    _fold(sum_dy, reps, channels)
    _fold(sum_dyx, reps, channels)


@njit(inline="always", cache=True)
def _merge_into(partials, t, c, n_b, mean_b, m2_b):
    """Chan-merge the summary ``(n_b, mean_b, m2_b)`` into ``partials[:, t, c]``."""
    partials[0, t, c], partials[1, t, c], partials[2, t, c] = _chan_merge(
        partials[0, t, c], partials[1, t, c], partials[2, t, c], n_b, mean_b, m2_b
    )


@njit(cache=True, error_model="numpy")  # n = 1: M2 / (n - 1) is NaN, as in torch and CUDA
def _statistics(
    partials,  # (3, P, C) float64: count, mean, M2 of each thread range's part of a channel
    weight,  # (C,)
    bias,  # (C,)
    running_mean,  # (C,) updated in place when update_running
    running_var,  # (C,) updated in place when update_running
    mean,  # (C,) out
    invstd,  # (C,) out
    params,  # (4, C) out: mean, scale = invstd * weight, shift = bias (x.dtype)
    training,
    update_running,
    momentum,
    eps,
):
    """Per channel, in float64: training, merge the P partials and apply
    :func:`rules.batch_norm_statistics` (``invstd = 1 / sqrt(M2 / n + eps)``, the running
    update with ``M2 / (n - 1)``); eval, ``mean = running_mean``,
    ``invstd = 1 / sqrt(running_var + eps)``. Then the normalization's operands."""
    _, parts, channels = partials.shape
    for c in range(channels):
        if training:
            n = 0.0
            mu = 0.0
            m2 = 0.0
            for p in range(parts):
                n_b, mean_b, m2_b = partials[0, p, c], partials[1, p, c], partials[2, p, c]
                n, mu, m2 = _chan_merge(n, mu, m2, n_b, mean_b, m2_b)
            inv, rm, rv = _batch_norm_statistics(
                n, mu, m2, running_mean[c], running_var[c], momentum, eps, update_running
            )
            mean[c] = mu
            invstd[c] = inv
            if update_running:  # else running_mean / running_var may alias mean / invstd
                running_mean[c] = rm
                running_var[c] = rv
        else:
            mean[c] = running_mean[c]
            invstd[c] = _inverse_std(np.float64(running_var[c]), eps)
        params[0, c] = mean[c]
        params[1, c] = invstd[c] * weight[c]
        params[2, c] = bias[c]


@njit(cache=True)
def _backward_coefficients(
    partials,  # (3, P, C) float64: Σ dy, Σ dy * (x - mean) of each thread range (row 2 unused)
    weight,  # (C,)
    invstd,  # (C,)
    n,  # float64: elements per channel
    dweight,  # (C,) out
    dbias,  # (C,) out
    params,  # (4, C) out: rows 1-3 = a, b, d of dx = a * dy - b * (x - mean) - d
):
    """Sum the P partials of each channel, then :func:`rules.batch_norm_grad_coefficients`
    in float64: ``dbias = Σ dy``, ``dweight = invstd * Σ dy (x - mean)`` and ``a, b, d``."""
    _, parts, channels = partials.shape
    for c in range(channels):
        s = 0.0
        sx = 0.0
        for p in range(parts):
            s += partials[0, p, c]
            sx += partials[1, p, c]
        dbias[c] = s
        dweight[c], params[1, c], params[2, c], params[3, c] = _grad_coefficients(
            s, sx, np.float64(weight[c]), np.float64(invstd[c]), n
        )


@njit(inline="always", cache=True)
def _channel_span(lo, hi, per_channel):
    """Channels ``[first, last + 1)`` holding the NCHW units ``[lo, hi)``."""
    return lo // per_channel, (hi + per_channel - 1) // per_channel


@njit(inline="always", cache=True)
def _chunk_span(lo, hi, first_unit, nk):
    """Chunks ``[k_lo, k_hi)`` of the row whose chunk 0 is unit ``first_unit`` that lie in
    the unit range ``[lo, hi)``, with ``0 <= k_lo <= k_hi <= nk`` (equal: none)."""
    k_lo = min(nk, max(0, lo - first_unit))
    return k_lo, max(k_lo, min(nk, hi - first_unit))


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _nchw_pass(
    op,  # _MOMENTS, _GRAD_SUMS, _NORMALIZE or _GRAD_INPUT
    x,  # (outer, C, inner), inner > 1
    dy,  # (outer, C, inner): read by the gradient passes
    params,  # (4, C) compute dtype: the per-channel operands of the pass (see _MOMENTS ...)
    partials,  # (3, P, C) float64 zeros: out of the reductions, a row per thread range
    out,  # (outer, C, inner): out of the elementwise passes
    training,  # _GRAD_INPUT: through the batch statistics
    chunk,  # elements per unit
    fmt,  # storage format of x, dy and out (a literal: see _formats); params hold compute type
):
    """One pass of the NCHW schedule (module docstring) over x and dy, picked by ``op``.

    Memory: each pass reads its inputs once (a chunk that needs a second statistics pass
    is in L1); the elementwise passes write ``out`` once.
    """
    literally(fmt)
    outer, channels, inner = x.shape
    parts = partials.shape[1]
    nk = (inner + chunk - 1) // chunk
    units = channels * outer * nk
    stage = np.empty((parts, 2, staged(fmt, chunk)), params.dtype)  # 16-bit chunks, decoded
    for t in prange(parts):
        lo, hi = _partition(units, parts, t)
        c_lo, c_hi = _channel_span(lo, hi, outer * nk)
        for n in range(outer):
            for c in range(c_lo, c_hi):
                k_lo, k_hi = _chunk_span(lo, hi, (c * outer + n) * nk, nk)
                if op == _MOMENTS:
                    for k in range(k_lo, k_hi):
                        xs = x[n, c, k * chunk : min((k + 1) * chunk, inner)]
                        xs = decoded(fmt, xs, stage[t, 0])
                        provisional = partials[1, t, c] if partials[0, t, c] > 0.0 else xs[0]
                        n_b, mean_b, m2_b = _chunk_moments(xs, provisional)
                        _merge_into(partials, t, c, n_b, mean_b, m2_b)
                elif op == _GRAD_SUMS:
                    for k in range(k_lo, k_hi):
                        i0, i1 = k * chunk, min((k + 1) * chunk, inner)
                        gs = decoded(fmt, dy[n, c, i0:i1], stage[t, 0])
                        xs = decoded(fmt, x[n, c, i0:i1], stage[t, 1])
                        s, sx = _chunk_grad_sums(gs, xs, params[0, c])
                        partials[0, t, c] += s
                        partials[1, t, c] += sx
                elif op == _NORMALIZE:  # the elementwise passes: the row's piece in one loop
                    i0, i1 = k_lo * chunk, min(k_hi * chunk, inner)
                    xs, outs = x[n, c, i0:i1], out[n, c, i0:i1]
                    m, p1, p2 = params[0, c], params[1, c], params[2, c]
                    for i in range(outs.size):  # from 0: no negative-index checks
                        outs[i] = store(fmt, _normalized(load(fmt, xs[i]), m, p1, p2))
                else:
                    i0, i1 = k_lo * chunk, min(k_hi * chunk, inner)
                    gs, outs = dy[n, c, i0:i1], out[n, c, i0:i1]
                    m, p1, p2, p3 = params[0, c], params[1, c], params[2, c], params[3, c]
                    if training:  # a constant flag per loop, so that each vectorizes
                        xs = x[n, c, i0:i1]
                        for i in range(outs.size):
                            g, v = load(fmt, gs[i]), load(fmt, xs[i])
                            outs[i] = store(fmt, _grad_input(g, v, m, p1, p2, p3, True))
                    else:
                        for i in range(outs.size):  # eval: x is not read
                            g = load(fmt, gs[i])
                            outs[i] = store(fmt, _grad_input(g, g, m, p1, p2, p3, False))


@njit(fastmath=_FASTMATH, cache=True)
def _block_moments(
    block,  # (rows * C,) flat rows
    k,  # (reps * C,) provisional column means, tiled; moved to the block's means when far
    channels,
    reps,  # rows per period
    sum_d,  # (reps * C,) scratch
    sum_d2,  # (reps * C,) scratch
    partials,  # (3, P, C) float64: the block's column summaries are merged into [:, t]
    t,
):
    """Count, mean and M2 of each column of a row block, merged into ``partials[:, t]``.

    One pass around k, a second (from L2) around the block's own means when k was too far
    from them (see the module docstring).
    """
    rows = block.size // channels
    n_b = np.float64(rows)
    _block_deviation_sums(block, k, channels, reps, sum_d, sum_d2)
    far = False
    for c in range(channels):
        far |= _far_from_mean(n_b, sum_d[c], sum_d2[c])
    if far:  # move k to this block's means (kept for the next blocks)
        for c in range(channels):
            k[c] += sum_d[c] / block.dtype.type(rows)
        _tile(k[:channels], reps, k)
        _block_deviation_sums(block, k, channels, reps, sum_d, sum_d2)
    for c in range(channels):
        mean_b, m2_b = _corrected_moments(n_b, k[c], sum_d[c], sum_d2[c])
        _merge_into(partials, t, c, n_b, mean_b, m2_b)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _channels_last_pass(
    op,  # _MOMENTS, _GRAD_SUMS, _NORMALIZE or _GRAD_INPUT
    x,  # (rows * C,) flat rows of C
    dy,  # (rows * C,): read by the gradient passes
    params,  # (4, C) compute dtype: the per-channel operands of the pass (see _MOMENTS ...)
    partials,  # (3, P, C) float64 zeros: out of the reductions, a row per thread range
    out,  # (rows * C,): out of the elementwise passes
    training,  # _GRAD_INPUT: through the batch statistics
    period,  # target elements per period (config.CPU_PERIOD)
    block,  # elements per reduction block (config.CPU_BLOCK)
    fmt,  # storage format of x, dy and out (a literal: see _formats); params hold compute type
):
    """One pass of the channels-last schedule (module docstring), picked by ``op``.

    Reductions walk blocks of rows (statistics: merged into float64 partials as one
    piece; gradient sums: added in x.dtype, then into float64 totals); elementwise passes
    walk the same blocks period by period. Memory: each pass reads its inputs once (a
    block that needs a second statistics pass is in L2); elementwise passes write ``out``
    once.
    """
    literally(fmt)
    channels = params.shape[1]
    rows = x.size // channels
    parts = partials.shape[1]
    reps = _period_rows(channels, period)
    block_rows = max(1, block // (reps * channels)) * reps
    tiled = np.zeros((5, reps * channels), params.dtype)  # params tiled, then zeros
    for j in range(4):
        _tile(params[j], reps, tiled[j])
    m, p1, p2, p3, zeros = tiled[0], tiled[1], tiled[2], tiled[3], tiled[4]
    scratch = np.empty((parts, 3, reps * channels), params.dtype)
    stage = np.empty((parts, 2, staged(fmt, block_rows * channels)), params.dtype)  # 16-bit
    for t in prange(parts):
        lo, hi = _partition(rows, parts, t)
        k, s1, s2 = scratch[t, 0], scratch[t, 1], scratch[t, 2]
        x0, x1 = stage[t, 0], stage[t, 1]
        if op == _MOMENTS:  # the provisional means: the range's first row
            _tile(decoded(fmt, x[lo * channels : (lo + 1) * channels], x0), reps, k)
        for b0 in range(lo, hi, block_rows):
            b1 = min(b0 + block_rows, hi)
            xb, gb = x[b0 * channels : b1 * channels], dy[b0 * channels : b1 * channels]
            if op == _MOMENTS:
                _block_moments(decoded(fmt, xb, x0), k, channels, reps, s1, s2, partials, t)
            elif op == _GRAD_SUMS:
                gb, xb = decoded(fmt, gb, x0), decoded(fmt, xb, x1)
                _block_grad_sums(gb, xb, m, zeros, channels, reps, s1, s2)
                for c in range(channels):
                    partials[0, t, c] += s1[c]
                    partials[1, t, c] += s2[c]
            else:
                for r0 in range(b0, b1, reps):
                    flat = slice(r0 * channels, min(r0 + reps, b1) * channels)
                    outs = out[flat]  # each branch slices only what it reads
                    if op == _NORMALIZE:
                        xs = x[flat]
                        for i in range(outs.size):
                            v = load(fmt, xs[i])
                            outs[i] = store(fmt, _normalized(v, m[i], p1[i], p2[i]))
                    elif training:  # a constant flag per loop, so that each vectorizes
                        xs, gs = x[flat], dy[flat]
                        for i in range(outs.size):
                            g, v = load(fmt, gs[i]), load(fmt, xs[i])
                            dx = _grad_input(g, v, m[i], p1[i], p2[i], p3[i], True)
                            outs[i] = store(fmt, dx)
                    else:
                        gs = dy[flat]
                        for i in range(outs.size):  # eval: x is not read
                            g = load(fmt, gs[i])
                            dx = _grad_input(g, g, m[i], p1[i], p2[i], p3[i], False)
                            outs[i] = store(fmt, dx)


def _run(op, x, dy, params, partials, out, fmt, training=False):
    """One pass ``op`` over C-contiguous ``(outer, C, inner)`` arrays stored as ``fmt``,
    by the kernel of their layout (``inner == 1``: channels-last)."""
    if x.shape[2] == 1:
        launch(
            _channels_last_pass, fmt, op, x.reshape(-1), dy.reshape(-1), params, partials,
            out.reshape(-1), bool(training), int(config.CPU_PERIOD), int(config.CPU_BLOCK),
        )  # fmt: skip
    else:
        launch(
            _nchw_pass, fmt, op, x, dy, params, partials, out, bool(training),
            int(config.CPU_CHUNK),
        )  # fmt: skip


def _zero_partials(channels):
    """Float64 partials ``(3, P, C)`` of the reductions: a row per thread range."""
    return np.zeros((3, numba.get_num_threads(), channels))


@parallel_launcher
def batch_norm_forward(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    y,
    mean,
    invstd,
    training,
    update_running,
    momentum,
    eps,
    stream=None,
    fmt=None,
):
    """Batch norm forward on C-contiguous ``(outer, C, inner)`` NumPy arrays, in place.

    Training: the statistics pass, then :func:`rules.batch_norm_statistics` per channel
    (mean, invstd, and the running statistics when ``update_running``); eval: the running
    statistics. Then the normalization pass, ``y = (x - mean) * invstd * weight + bias``.
    Writes ``y``, ``mean`` and ``invstd``; see the module docstring for the schedule.
    ``stream`` is ignored (the CPU has none): the signature is the CUDA launcher's.

    ``fmt`` "float16"/"bfloat16": ``x`` and ``y`` are uint16 bits of that format and the
    per-channel arrays float32 (torch's mixed rule); ``x`` is computed in float32 -- the
    float32 path on the same values -- and ``y`` rounded once. None: every array has
    ``x.dtype``.
    """
    channels = mean.size
    fmt = fmt or x.dtype.name
    partials = _zero_partials(channels)
    params = np.zeros((4, channels), mean.dtype)  # _statistics: mean, scale, shift (of y)
    if training:
        _run(_MOMENTS, x, x, params, partials, x, fmt)
    _statistics(
        partials, weight, bias, running_mean, running_var, mean, invstd, params,
        bool(training), bool(update_running), float(momentum), float(eps),
    )  # fmt: skip
    _run(_NORMALIZE, x, x, params, partials, y, fmt)


@parallel_launcher
def batch_norm_backward(
    dy, x, weight, mean, invstd, dx, dweight, dbias, training, stream=None, fmt=None
):  # fmt: skip
    """Batch norm backward on C-contiguous ``(outer, C, inner)`` NumPy arrays, in place.

    The gradient-sums pass (``Σ dy``, ``Σ dy * (x - mean)``), then
    :func:`rules.batch_norm_grad_coefficients` per channel (``dbias = Σ dy``,
    ``dweight = Σ dy * xhat`` and the coefficients of ``dx``), then the input-gradient
    pass, :func:`rules.batch_norm_grad_input`. Writes ``dx``, ``dweight`` and ``dbias``;
    see the module docstring for the schedule. ``stream`` is ignored (the CPU has none):
    the signature is the CUDA launcher's. ``fmt``: as in :func:`batch_norm_forward` (``dy``,
    ``x`` and ``dx`` stored as ``fmt``, the per-channel arrays float32).
    """
    outer, channels, inner = x.shape
    fmt = fmt or x.dtype.name
    partials = _zero_partials(channels)
    params = np.zeros((4, channels), invstd.dtype)  # mean, then a, b, d
    params[0] = mean
    _run(_GRAD_SUMS, x, dy, params, partials, dx, fmt)
    _backward_coefficients(partials, weight, invstd, float(outer * inner), dweight, dbias, params)
    _run(_GRAD_INPUT, x, dy, params, partials, dx, fmt, training)
