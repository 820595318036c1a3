"""Batch normalization on the CPU: ``@njit(parallel=True, cache=True)`` kernels.

The launchers take C-contiguous ``(outer, C, inner)`` arrays and cut the work into one
contiguous range per thread (``parts`` ranges), with one of two schedules:

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
at most a few hundred terms).

References: Chan, Golub & LeVeque, "Algorithms for computing the sample variance:
analysis and recommendations" (1983); Ioffe & Szegedy, "Batch Normalization" (2015).
"""

import numba
import numpy as np
from numba import njit, prange

from pyopt.kernels import config, rules
from pyopt.kernels.cpu._launch import parallel_launcher

# Reassociation lets float reductions vectorize. No nnan/ninf: NaN and inf must propagate.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# The shared scalar rules (kernels/rules.py), compiled for the CPU.
_chan_merge = njit(inline="always", cache=True)(rules.chan_merge)
_running_update = njit(inline="always", cache=True)(rules.running_update)
_normalized = njit(inline="always", cache=True)(rules.normalized)


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


@njit(inline="always", cache=True)
def _grad_input(dyv, xv, m, a, b, d):
    """``dx = a * dy - b * (x - mean) - d`` (training), coefficients from
    :func:`_backward_coefficients`."""
    return a * dyv - b * (xv - m) - d


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
    for i in range(period):
        sum_d[i] = 0
        sum_d2[i] = 0
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
    for i in range(period):
        sum_dy[i] = 0
        sum_dyx[i] = 0
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


@njit(cache=True)
def _finalize_statistics(
    count,  # (P, C) float64: elements behind each partial (a row per thread)
    mu,  # (P, C) float64: partial means
    m2,  # (P, C) float64: partial sums of squared deviations
    running_mean,  # (C,)
    running_var,  # (C,)
    mean,  # (C,) out
    invstd,  # (C,) out
    update_running,
    momentum,
    eps,
):
    """Merge the P partials of each channel; write mean, invstd and the running stats.

    ``var = M2 / n`` (biased), ``invstd = 1 / sqrt(var + eps)``;
    ``running_var ← (1 - momentum) * running_var + momentum * var * n / (n - 1)``.
    """
    parts, channels = count.shape
    for c in range(channels):
        n = 0.0
        mu_c = 0.0
        m2_c = 0.0
        for p in range(parts):
            n, mu_c, m2_c = _chan_merge(n, mu_c, m2_c, count[p, c], mu[p, c], m2[p, c])
        var = m2_c / n
        if var < 0.0:  # the corrected formula can round a zero M2 below 0; NaN passes
            var = 0.0
        mean[c] = mu_c
        invstd[c] = 1.0 / np.sqrt(var + eps)
        if update_running:
            running_mean[c] = _running_update(running_mean[c], mu_c, momentum)
            running_var[c] = _running_update(running_var[c], var * n / (n - 1.0), momentum)


@njit(cache=True)
def _eval_statistics(running_mean, running_var, mean, invstd, eps):
    """``mean = running_mean``, ``invstd = 1 / sqrt(running_var + eps)``."""
    for c in range(mean.size):
        mean[c] = running_mean[c]
        invstd[c] = 1.0 / np.sqrt(np.float64(running_var[c]) + eps)


@njit(cache=True)
def _backward_coefficients(
    sum_dy,  # (P, C) float64 partial Σ dy (a row per thread)
    sum_dyx,  # (P, C) float64 partial Σ dy * (x - mean)
    weight,  # (C,)
    invstd,  # (C,)
    n,  # elements per channel
    training,
    dweight,  # (C,) out
    dbias,  # (C,) out
    coef,  # (3, C) out: a, b, d of dx = a * dy - b * (x - mean) - d
):
    """``dbias = Σ dy``, ``dweight = invstd * Σ dy (x - mean)``; ``a = weight * invstd``,
    training: ``b = a * invstd * dweight / n``, ``d = a * dbias / n``; eval: ``b = d = 0``."""
    parts, channels = sum_dy.shape
    for c in range(channels):
        s = 0.0
        sx = 0.0
        for p in range(parts):
            s += sum_dy[p, c]
            sx += sum_dyx[p, c]
        k = np.float64(invstd[c])
        dw = sx * k
        dbias[c] = s
        dweight[c] = dw
        a = np.float64(weight[c]) * k
        coef[0, c] = a
        coef[1, c] = a * k * dw / n if training else 0.0
        coef[2, c] = a * s / n if training else 0.0


@njit(inline="always", cache=True)
def _channel_span(lo, hi, per_channel):
    """Channels ``[first, last + 1)`` holding the NCHW units ``[lo, hi)``."""
    return lo // per_channel, (hi + per_channel - 1) // per_channel


@njit(inline="always", cache=True)
def _chunk_span(lo, hi, first_unit, nk):
    """Chunks ``[k_lo, k_hi)`` of the row whose chunk 0 is unit ``first_unit`` that lie in
    the unit range ``[lo, hi)``."""
    return max(0, lo - first_unit), min(nk, hi - first_unit)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _forward_nchw(
    x,  # (outer, C, inner), inner > 1
    weight,  # (C,)
    bias,  # (C,)
    running_mean,  # (C,) updated in place when update_running
    running_var,  # (C,) updated in place when update_running
    y,  # (outer, C, inner) out
    mean,  # (C,) out
    invstd,  # (C,) out
    training,
    update_running,
    momentum,
    eps,
    chunk,  # elements per unit
    parts,  # thread ranges (one per thread)
):
    """Batch norm forward, NCHW: ``y = (x - mean) * invstd * weight + bias``.

    Memory: reads x once for the statistics (a chunk that needs a second pass is in L1),
    once for y, writes y once.
    """
    outer, channels, inner = x.shape
    nk = (inner + chunk - 1) // chunk
    units = channels * outer * nk
    if training:
        count = np.zeros((parts, channels))
        mu = np.zeros((parts, channels))
        m2 = np.zeros((parts, channels))
        for t in prange(parts):
            lo, hi = _partition(units, parts, t)
            c_lo, c_hi = _channel_span(lo, hi, outer * nk)
            for n in range(outer):
                for c in range(c_lo, c_hi):
                    k_lo, k_hi = _chunk_span(lo, hi, (c * outer + n) * nk, nk)
                    for k in range(k_lo, k_hi):
                        v = x[n, c, k * chunk : min((k + 1) * chunk, inner)]
                        provisional = mu[t, c] if count[t, c] > 0.0 else v[0]
                        n_b, mean_b, m2_b = _chunk_moments(v, provisional)
                        count[t, c], mu[t, c], m2[t, c] = _chan_merge(
                            count[t, c], mu[t, c], m2[t, c], n_b, mean_b, m2_b
                        )
        _finalize_statistics(
            count, mu, m2, running_mean, running_var, mean, invstd, update_running, momentum, eps
        )
    else:
        _eval_statistics(running_mean, running_var, mean, invstd, eps)
    for t in prange(parts):
        lo, hi = _partition(units, parts, t)
        c_lo, c_hi = _channel_span(lo, hi, outer * nk)
        for n in range(outer):
            for c in range(c_lo, c_hi):
                m = mean[c]
                scale = invstd[c] * weight[c]
                shift = bias[c]
                k_lo, k_hi = _chunk_span(lo, hi, (c * outer + n) * nk, nk)
                for k in range(k_lo, k_hi):
                    xs = x[n, c, k * chunk : min((k + 1) * chunk, inner)]
                    ys = y[n, c, k * chunk : min((k + 1) * chunk, inner)]
                    for i in range(ys.size):  # from 0: no negative-index checks, so it vectorizes
                        ys[i] = _normalized(xs[i], m, scale, shift)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _forward_channels_last(
    x,  # (rows * C,) flat rows of C
    weight,  # (C,)
    bias,  # (C,)
    running_mean,  # (C,) updated in place when update_running
    running_var,  # (C,) updated in place when update_running
    y,  # (rows * C,) out
    mean,  # (C,) out
    invstd,  # (C,) out
    training,
    update_running,
    momentum,
    eps,
    period,  # target elements per period (config.CPU_PERIOD)
    block,  # elements per statistics block (config.CPU_BLOCK)
    parts,  # thread ranges (one per thread)
):
    """Batch norm forward, channels-last: ``y = (x - mean) * invstd * weight + bias``.

    Memory: reads x once for the statistics (a block that needs a second pass is in L2),
    once for y, writes y once.
    """
    channels = mean.size
    rows = x.size // channels
    reps = _period_rows(channels, period)
    block_rows = max(1, block // (reps * channels)) * reps
    if training:
        count = np.zeros((parts, channels))
        mu = np.zeros((parts, channels))
        m2 = np.zeros((parts, channels))
        scratch = np.empty((parts, 3, reps * channels), x.dtype)
        for t in prange(parts):
            lo, hi = _partition(rows, parts, t)
            k, sum_d, sum_d2 = scratch[t, 0], scratch[t, 1], scratch[t, 2]
            _tile(x[lo * channels : (lo + 1) * channels], reps, k)
            n_a = 0.0
            for b0 in range(lo, hi, block_rows):
                b1 = min(b0 + block_rows, hi)
                xb = x[b0 * channels : b1 * channels]
                n_b = np.float64(b1 - b0)
                _block_deviation_sums(xb, k, channels, reps, sum_d, sum_d2)
                far = False
                for c in range(channels):
                    far |= _far_from_mean(n_b, sum_d[c], sum_d2[c])
                if far:  # move k to this block's means (kept for the next blocks)
                    for c in range(channels):
                        k[c] += sum_d[c] / x.dtype.type(b1 - b0)
                    _tile(k[:channels], reps, k)
                    _block_deviation_sums(xb, k, channels, reps, sum_d, sum_d2)
                for c in range(channels):
                    mean_b, m2_b = _corrected_moments(n_b, k[c], sum_d[c], sum_d2[c])
                    _, mu[t, c], m2[t, c] = _chan_merge(n_a, mu[t, c], m2[t, c], n_b, mean_b, m2_b)
                n_a += n_b
            for c in range(channels):
                count[t, c] = n_a
        _finalize_statistics(
            count, mu, m2, running_mean, running_var, mean, invstd, update_running, momentum, eps
        )
    else:
        _eval_statistics(running_mean, running_var, mean, invstd, eps)
    params = np.empty((3, channels), x.dtype)
    for c in range(channels):
        params[0, c] = mean[c]
        params[1, c] = invstd[c] * weight[c]
        params[2, c] = bias[c]
    tiled = np.empty((3, reps * channels), x.dtype)
    for j in range(3):
        _tile(params[j], reps, tiled[j])
    m, scale, shift = tiled[0], tiled[1], tiled[2]
    for t in prange(parts):
        lo, hi = _partition(rows, parts, t)
        for r0 in range(lo, hi, reps):
            xs = x[r0 * channels : min(r0 + reps, hi) * channels]
            ys = y[r0 * channels : min(r0 + reps, hi) * channels]
            for i in range(ys.size):
                ys[i] = _normalized(xs[i], m[i], scale[i], shift[i])


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backward_nchw(
    dy,  # (outer, C, inner), inner > 1
    x,  # (outer, C, inner)
    weight,  # (C,)
    mean,  # (C,)
    invstd,  # (C,)
    dx,  # (outer, C, inner) out
    dweight,  # (C,) out
    dbias,  # (C,) out
    training,
    chunk,  # elements per unit
    parts,  # thread ranges (one per thread)
):
    """Batch norm backward, NCHW: ``dx = weight * invstd * (dy - dbias/n - xhat * dweight/n)``.

    Memory: reads dy and x once for the sums, once more for dx (only dy in eval), writes
    dx once.
    """
    outer, channels, inner = x.shape
    nk = (inner + chunk - 1) // chunk
    units = channels * outer * nk
    sum_dy = np.zeros((parts, channels))
    sum_dyx = np.zeros((parts, channels))
    for t in prange(parts):
        lo, hi = _partition(units, parts, t)
        c_lo, c_hi = _channel_span(lo, hi, outer * nk)
        for n in range(outer):
            for c in range(c_lo, c_hi):
                k_lo, k_hi = _chunk_span(lo, hi, (c * outer + n) * nk, nk)
                for k in range(k_lo, k_hi):
                    i0, i1 = k * chunk, min((k + 1) * chunk, inner)
                    s, sx = _chunk_grad_sums(dy[n, c, i0:i1], x[n, c, i0:i1], mean[c])
                    sum_dy[t, c] += s
                    sum_dyx[t, c] += sx
    coef = np.empty((3, channels), x.dtype)
    _backward_coefficients(
        sum_dy, sum_dyx, weight, invstd, np.float64(outer * inner), training, dweight, dbias, coef
    )
    for t in prange(parts):
        lo, hi = _partition(units, parts, t)
        c_lo, c_hi = _channel_span(lo, hi, outer * nk)
        for n in range(outer):
            for c in range(c_lo, c_hi):
                a, b, d, m = coef[0, c], coef[1, c], coef[2, c], mean[c]
                k_lo, k_hi = _chunk_span(lo, hi, (c * outer + n) * nk, nk)
                for k in range(k_lo, k_hi):
                    i0, i1 = k * chunk, min((k + 1) * chunk, inner)
                    dys = dy[n, c, i0:i1]
                    dxs = dx[n, c, i0:i1]
                    if training:
                        xs = x[n, c, i0:i1]
                        for i in range(dxs.size):
                            dxs[i] = _grad_input(dys[i], xs[i], m, a, b, d)
                    else:
                        for i in range(dxs.size):
                            dxs[i] = a * dys[i]


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backward_channels_last(
    dy,  # (rows * C,) flat rows of C
    x,  # (rows * C,)
    weight,  # (C,)
    mean,  # (C,)
    invstd,  # (C,)
    dx,  # (rows * C,) out
    dweight,  # (C,) out
    dbias,  # (C,) out
    training,
    period,  # target elements per period (config.CPU_PERIOD)
    block,  # elements summed in x.dtype before adding into the float64 totals
    parts,  # thread ranges (one per thread)
):
    """Batch norm backward, channels-last: ``dx = weight * invstd * (dy - dbias/n -
    xhat * dweight/n)``.

    Memory: reads dy and x once for the sums, once more for dx (only dy in eval), writes
    dx once.
    """
    channels = mean.size
    rows = x.size // channels
    reps = _period_rows(channels, period)
    block_rows = max(1, block // (reps * channels)) * reps
    tiled = np.zeros((5, reps * channels), x.dtype)  # mean, a, b, d (tiled), zeros
    _tile(mean, reps, tiled[0])
    sum_dy = np.zeros((parts, channels))
    sum_dyx = np.zeros((parts, channels))
    scratch = np.empty((parts, 2, reps * channels), x.dtype)
    for t in prange(parts):
        lo, hi = _partition(rows, parts, t)
        s, sx = scratch[t, 0], scratch[t, 1]
        for b0 in range(lo, hi, block_rows):
            flat = slice(b0 * channels, min(b0 + block_rows, hi) * channels)
            _block_grad_sums(dy[flat], x[flat], tiled[0], tiled[4], channels, reps, s, sx)
            for c in range(channels):
                sum_dy[t, c] += s[c]
                sum_dyx[t, c] += sx[c]
    coef = np.empty((3, channels), x.dtype)
    _backward_coefficients(
        sum_dy, sum_dyx, weight, invstd, np.float64(rows), training, dweight, dbias, coef
    )
    for j in range(3):
        _tile(coef[j], reps, tiled[j + 1])
    m, a, b, d = tiled[0], tiled[1], tiled[2], tiled[3]
    for t in prange(parts):
        lo, hi = _partition(rows, parts, t)
        for r0 in range(lo, hi, reps):
            flat = slice(r0 * channels, min(r0 + reps, hi) * channels)
            dys = dy[flat]
            dxs = dx[flat]
            if training:
                xs = x[flat]
                for i in range(dxs.size):
                    dxs[i] = _grad_input(dys[i], xs[i], m[i], a[i], b[i], d[i])
            else:
                for i in range(dxs.size):
                    dxs[i] = a[i] * dys[i]


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
):
    """Batch norm forward on C-contiguous ``(outer, C, inner)`` NumPy arrays, in place.

    Writes ``y``, ``mean`` and ``invstd`` (and the running statistics when
    ``update_running``); see the module docstring for the schedule. ``stream`` is ignored.
    """
    args = (weight, bias, running_mean, running_var)
    flags = (bool(training), bool(update_running), float(momentum), float(eps))
    if x.shape[2] == 1:
        _forward_channels_last(
            x.reshape(-1), *args, y.reshape(-1), mean, invstd, *flags,
            int(config.CPU_PERIOD), int(config.CPU_BLOCK), numba.get_num_threads(),
        )  # fmt: skip
    else:
        _forward_nchw(
            x, *args, y, mean, invstd, *flags, int(config.CPU_CHUNK), numba.get_num_threads()
        )


@parallel_launcher
def batch_norm_backward(dy, x, weight, mean, invstd, dx, dweight, dbias, training, stream=None):
    """Batch norm backward on C-contiguous ``(outer, C, inner)`` NumPy arrays, in place.

    Writes ``dx``, ``dweight = Σ dy * xhat`` and ``dbias = Σ dy``; see the module
    docstring for the schedule. ``stream`` is ignored.
    """
    if x.shape[2] == 1:
        _backward_channels_last(
            dy.reshape(-1), x.reshape(-1), weight, mean, invstd, dx.reshape(-1), dweight,
            dbias, bool(training), int(config.CPU_PERIOD), int(config.CPU_BLOCK),
            numba.get_num_threads(),
        )  # fmt: skip
    else:
        _backward_nchw(
            dy, x, weight, mean, invstd, dx, dweight, dbias, bool(training),
            int(config.CPU_CHUNK), numba.get_num_threads(),
        )  # fmt: skip
