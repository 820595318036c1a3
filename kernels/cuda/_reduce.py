"""Warp- and block-level reductions shared by the CUDA kernels.

Every function here is a ``cuda.jit(device=True, inline="always")`` device function:
inlined into its kernel at the Numba IR level, so kernels that use them compile to PTX
without a GPU (the compile gate) and carry no call overhead.

Blocks are laid out as ``(width, rows)`` threads with ``width`` a power of two <= 32
that divides the warp: lanes with the same ``lane % width`` hold partial results of the
same *column* (a channel, say), and a reduction combines the ``rows`` partials of each
column. ``width == 1`` is the plain whole-block reduction.

Constraints on callers (they also make the functions valid under the CUDA simulator,
whose warp shuffles synchronise the warp's threads):

* the block has a multiple of 32 threads (at most 1024);
* every thread of the block calls a block reduction, and every lane of a warp calls a
  warp reduction, together: no early ``return`` before it, no call under a branch that
  not all threads take the same way.

Literals are ``np.float32`` so that float32 kernels stay in float32; in float64 kernels
they widen exactly.

References: Chan, Golub & LeVeque, "Algorithms for computing the sample variance" (1983),
for the pairwise merge; NVIDIA CUDA C++ Programming Guide, "Warp Shuffle Functions".
"""

import numpy as np
from numba import cuda

from .. import rules

WARP_SIZE = 32
MAX_WARPS = 32  # 1024 threads per block at most: the size of the per-warp smem slots
FULL_MASK = 0xFFFFFFFF


# Chan's merge of two (count, mean, M2) summaries (kernels/rules.py), for the device.
welford_merge = cuda.jit(device=True, inline="always")(rules.chan_merge)


@cuda.jit(device=True, inline="always")
def welford_merge_values(n, mean, m2, vals, count):
    """Merge the first ``count`` entries of the register array ``vals`` into a summary.

    Two passes over the registers (``mean_b = Σv/count``, ``M2_b = Σ(v − mean_b)²``), then
    one Chan merge: one division per ``count`` values instead of one per value.
    """
    if count == 0:
        return n, mean, m2
    s = vals[0]
    for u in range(1, vals.size):
        if u < count:
            s += vals[u]
    n_b = vals.dtype.type(count)
    mean_b = s / n_b
    m2_b = vals.dtype.type(0)
    for u in range(vals.size):
        if u < count:
            d = vals[u] - mean_b
            m2_b += d * d
    return welford_merge(n, mean, m2, n_b, mean_b, m2_b)


@cuda.jit(device=True, inline="always")
def warp_welford(n, mean, m2, width):
    """Butterfly-merge the summaries of the lanes sharing ``lane % width`` (all get it)."""
    offset = WARP_SIZE // 2
    while offset >= width:
        n_b = cuda.shfl_xor_sync(FULL_MASK, n, offset)
        mean_b = cuda.shfl_xor_sync(FULL_MASK, mean, offset)
        m2_b = cuda.shfl_xor_sync(FULL_MASK, m2, offset)
        n, mean, m2 = welford_merge(n, mean, m2, n_b, mean_b, m2_b)
        offset //= 2
    return n, mean, m2


@cuda.jit(device=True, inline="always")
def warp_sum(v, width):
    """Butterfly-sum ``v`` over the lanes sharing ``lane % width`` (all get the sum)."""
    offset = WARP_SIZE // 2
    while offset >= width:
        v += cuda.shfl_xor_sync(FULL_MASK, v, offset)
        offset //= 2
    return v


@cuda.jit(device=True, inline="always")
def _warp_slots(width):
    """(lane, warp, first warp slot, slot step, warps per block) of this thread.

    After the in-warp step, warp ``w`` leaves its column results in slots ``[w, 0:width]``;
    lane ``l`` of every warp then combines column ``l % width`` over the warps
    ``l // width, l // width + 32 // width, ...``.
    """
    tid = np.int64(cuda.threadIdx.y) * cuda.blockDim.x + cuda.threadIdx.x
    nwarps = (np.int64(cuda.blockDim.x) * cuda.blockDim.y + (WARP_SIZE - 1)) // WARP_SIZE
    lane = tid % WARP_SIZE
    return lane, tid // WARP_SIZE, lane // width, WARP_SIZE // width, nwarps


@cuda.jit(device=True, inline="always")
def block_welford(n, mean, m2, width, smem):
    """Merge the summaries of each column over the whole block; every thread gets its own
    column's result.

    ``smem``: shared array of shape ``(3, MAX_WARPS, >= width)`` and the summaries' dtype.
    Two warp butterflies and two ``syncthreads``; ``smem`` is free again on return.
    """
    lane, warp, first, step, nwarps = _warp_slots(width)
    n, mean, m2 = warp_welford(n, mean, m2, width)
    if lane < width:
        smem[0, warp, lane] = n
        smem[1, warp, lane] = mean
        smem[2, warp, lane] = m2
    cuda.syncthreads()
    col = lane % width
    n = smem.dtype.type(0)
    mean = smem.dtype.type(0)
    m2 = smem.dtype.type(0)
    w = first
    while w < nwarps:
        n, mean, m2 = welford_merge(n, mean, m2, smem[0, w, col], smem[1, w, col], smem[2, w, col])
        w += step
    n, mean, m2 = warp_welford(n, mean, m2, width)
    cuda.syncthreads()
    return n, mean, m2


@cuda.jit(device=True, inline="always")
def block_sum(v, width, smem):
    """Sum ``v`` over each column of the block; every thread gets its own column's sum.

    ``smem``: shared array of shape ``(MAX_WARPS, >= width)`` and ``v``'s dtype; free
    again on return, so consecutive calls may share it.
    """
    lane, warp, first, step, nwarps = _warp_slots(width)
    v = warp_sum(v, width)
    if lane < width:
        smem[warp, lane] = v
    cuda.syncthreads()
    col = lane % width
    v = smem.dtype.type(0)
    w = first
    while w < nwarps:
        v += smem[w, col]
        w += step
    v = warp_sum(v, width)
    cuda.syncthreads()
    return v
