"""CUDA fused optimizer steps and the gradient sum of squares, over flat device arrays.

One kernel per algorithm updates params and state in place, reading and writing each
array once (Adam float32: read p, g, m, v and write p, m, v, 28 B/param); the per-element
math is the shared rule of ``kernels/rules.py``, compiled for the device, so the CPU and
CUDA kernels differ only in how they schedule elements. Variants are boolean kernel
arguments, uniform over the grid; a state array a variant does not use is passed with
length 0 and never indexed.

Layout: a 1-D grid-stride loop (``i = cuda.grid(1)``, ``stride = cuda.gridsize(1)``) over
at most the resident blocks, one element per thread when n allows. Each trip loads
``_UNROLL`` elements of every array per thread, ``stride`` apart (each load instruction
of a warp reads 32 consecutive elements: coalesced), before computing and storing any of
them: Adam keeps 8 loads per thread in flight. No shared memory in the update kernels.
``_grad_sumsq_kernel`` accumulates in float64 (each ``g²`` of a float32 ``g`` is exact
there) and writes one partial row per block, reduced through shared memory in a fixed order.

References: torch.optim's single-tensor implementations (torch 2.13) for the rules;
NVIDIA Apex ``FusedAdam`` / PyTorch ``_fused_adam`` for the one-kernel-per-step layout.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import rules
from ._launch import grid_blocks, launch
from ._reduce import MAX_WARPS, WARP_SIZE

# Elements per array each thread loads before it stores any (loads in flight), for the
# update kernels and for the single-array sum of squares. Compile-time constants: they
# size register arrays. The update kernels' bytes in flight per SM come out about equal
# at 2 (float32 Adam: 64 registers, 4 blocks of 256 resident, 8 loads each) and at 4 (96
# registers, 2 blocks, 16 loads); 2 keeps twice the warps to hide the sqrt/div latency.
# Hot loops index with np.uint64 (non-negative offsets; unsigned indices skip Numba's
# negative-index wraparound).
_UNROLL = 2
_SUMSQ_UNROLL = 8
_MAX_THREADS = MAX_WARPS * WARP_SIZE  # threads per block at most: the partials' smem rows


_rule = functools.partial(rules.compiled, cuda.jit(device=True, inline="always"))

# The shared scalar rules (kernels/rules.py), compiled for the device.
_lerp = _rule(rules.lerp)
_decayed_grad = _rule(rules.decayed_grad)
_adam = _rule(rules.adam, lerp=_lerp, decayed_grad=_decayed_grad)
_sgd = _rule(rules.sgd, decayed_grad=_decayed_grad)
_adagrad = _rule(rules.adagrad, decayed_grad=_decayed_grad)
_rmsprop = _rule(rules.rmsprop, lerp=_lerp, decayed_grad=_decayed_grad)
_adadelta = _rule(rules.adadelta, decayed_grad=_decayed_grad)


# --- update kernels ---------------------------------------------------------------


@cuda.jit
def _adam_kernel(
    param,  # in/out, (n,)
    grad,  # input, (n,)
    exp_avg,  # in/out, (n,)
    exp_avg_sq,  # in/out, (n,)
    max_exp_avg_sq,  # in/out, (n,) with amsgrad, else (0,)
    grad_mult,  # param.dtype scalars from here to neg_step_size
    param_mult,
    weight_decay,
    beta1_weight,
    beta2,
    one_minus_beta2,
    bias_correction2_sqrt,
    eps,
    neg_step_size,
    amsgrad,  # bool
):
    """Adam / AdamW step (``rules.adam``): 28 B/param in float32, 36 with amsgrad."""
    n = param.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    zero = param.dtype.type(0)
    p = cuda.local.array(_UNROLL, param.dtype)
    g = cuda.local.array(_UNROLL, param.dtype)
    m = cuda.local.array(_UNROLL, param.dtype)
    v = cuda.local.array(_UNROLL, param.dtype)
    vmax = cuda.local.array(_UNROLL, param.dtype)
    while i < n:
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p[u] = param[j]
                g[u] = grad[j]
                m[u] = exp_avg[j]
                v[u] = exp_avg_sq[j]
                vmax[u] = max_exp_avg_sq[j] if amsgrad else zero
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p_new, m_new, v_new, vmax_new = _adam(
                    p[u], g[u], m[u], v[u], vmax[u], grad_mult, param_mult, weight_decay,
                    beta1_weight, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
                    neg_step_size, amsgrad,
                )  # fmt: skip
                param[j] = p_new
                exp_avg[j] = m_new
                exp_avg_sq[j] = v_new
                if amsgrad:
                    max_exp_avg_sq[j] = vmax_new
        i += _UNROLL * stride


@cuda.jit
def _sgd_kernel(
    param,  # in/out, (n,)
    grad,  # input, (n,)
    momentum_buffer,  # in/out, (n,) when momentum != 0 (only written when first), else (0,)
    grad_mult,  # param.dtype scalars from here to neg_lr
    weight_decay,
    momentum,
    one_minus_dampening,
    neg_lr,
    first,  # bool: the buffer's first step (b ← g)
    nesterov,  # bool
):
    """SGD step (``rules.sgd``): 12 B/param in float32, 20 with momentum (16 when first)."""
    n = param.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    zero = param.dtype.type(0)
    has_buffer = momentum != zero
    read_buffer = has_buffer and not first
    p = cuda.local.array(_UNROLL, param.dtype)
    g = cuda.local.array(_UNROLL, param.dtype)
    b = cuda.local.array(_UNROLL, param.dtype)
    while i < n:
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p[u] = param[j]
                g[u] = grad[j]
                b[u] = momentum_buffer[j] if read_buffer else zero
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p_new, b_new = _sgd(
                    p[u], g[u], b[u], grad_mult, weight_decay, momentum, one_minus_dampening,
                    neg_lr, first, nesterov,
                )  # fmt: skip
                param[j] = p_new
                if has_buffer:
                    momentum_buffer[j] = b_new
        i += _UNROLL * stride


@cuda.jit
def _adagrad_kernel(
    param,  # in/out, (n,)
    grad,  # input, (n,)
    state_sum,  # in/out, (n,)
    grad_mult,  # param.dtype scalars from here to neg_clr
    weight_decay,
    eps,
    neg_clr,
):
    """Adagrad step (``rules.adagrad``): 20 B/param in float32."""
    n = param.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    p = cuda.local.array(_UNROLL, param.dtype)
    g = cuda.local.array(_UNROLL, param.dtype)
    s = cuda.local.array(_UNROLL, param.dtype)
    while i < n:
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p[u] = param[j]
                g[u] = grad[j]
                s[u] = state_sum[j]
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p_new, s_new = _adagrad(p[u], g[u], s[u], grad_mult, weight_decay, eps, neg_clr)
                param[j] = p_new
                state_sum[j] = s_new
        i += _UNROLL * stride


@cuda.jit
def _rmsprop_kernel(
    param,  # in/out, (n,)
    grad,  # input, (n,)
    square_avg,  # in/out, (n,)
    grad_avg,  # in/out, (n,) when centered, else (0,)
    momentum_buffer,  # in/out, (n,) when momentum > 0, else (0,)
    grad_mult,  # param.dtype scalars from here to neg_lr
    weight_decay,
    alpha,
    one_minus_alpha,
    eps,
    momentum,
    neg_lr,
    centered,  # bool
):
    """RMSprop step (``rules.rmsprop``): 20 B/param in float32, up to 36 (centered,
    momentum)."""
    n = param.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    zero = param.dtype.type(0)
    has_buffer = momentum > zero
    p = cuda.local.array(_UNROLL, param.dtype)
    g = cuda.local.array(_UNROLL, param.dtype)
    v = cuda.local.array(_UNROLL, param.dtype)
    ga = cuda.local.array(_UNROLL, param.dtype)
    b = cuda.local.array(_UNROLL, param.dtype)
    while i < n:
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p[u] = param[j]
                g[u] = grad[j]
                v[u] = square_avg[j]
                ga[u] = grad_avg[j] if centered else zero
                b[u] = momentum_buffer[j] if has_buffer else zero
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p_new, v_new, ga_new, b_new = _rmsprop(
                    p[u], g[u], v[u], ga[u], b[u], grad_mult, weight_decay, alpha,
                    one_minus_alpha, eps, momentum, neg_lr, centered,
                )  # fmt: skip
                param[j] = p_new
                square_avg[j] = v_new
                if centered:
                    grad_avg[j] = ga_new
                if has_buffer:
                    momentum_buffer[j] = b_new
        i += _UNROLL * stride


@cuda.jit
def _adadelta_kernel(
    param,  # in/out, (n,)
    grad,  # input, (n,)
    square_avg,  # in/out, (n,)
    acc_delta,  # in/out, (n,)
    grad_mult,  # param.dtype scalars from here to neg_lr
    weight_decay,
    rho,
    one_minus_rho,
    eps,
    neg_lr,
):
    """Adadelta step (``rules.adadelta``): 28 B/param in float32."""
    n = param.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    p = cuda.local.array(_UNROLL, param.dtype)
    g = cuda.local.array(_UNROLL, param.dtype)
    v = cuda.local.array(_UNROLL, param.dtype)
    d = cuda.local.array(_UNROLL, param.dtype)
    while i < n:
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p[u] = param[j]
                g[u] = grad[j]
                v[u] = square_avg[j]
                d[u] = acc_delta[j]
        for u in range(_UNROLL):
            k = i + u * stride
            if k < n:
                j = np.uint64(k)
                p_new, v_new, d_new = _adadelta(
                    p[u], g[u], v[u], d[u], grad_mult, weight_decay, rho, one_minus_rho, eps,
                    neg_lr,
                )  # fmt: skip
                param[j] = p_new
                square_avg[j] = v_new
                acc_delta[j] = d_new
        i += _UNROLL * stride


# --- gradient sum of squares ------------------------------------------------------


@cuda.jit
def _grad_sumsq_kernel(
    grad,  # input, (n,)
    out,  # output, float64 (grid, 2): row b = (Σg², Σ(g − g)) over block b's elements
):
    """Per-block ``Σg²`` and non-finite flag ``Σ(g − g)`` (0, or NaN if any g is inf/NaN),
    both in float64: reads g once (4 B/param in float32).

    Block b owns the elements ``k`` with ``(k mod gridDim·blockDim) // blockDim == b``;
    each thread adds its elements in order, then a fixed-order block reduction: the same
    bits for the same grid.
    """
    n = grad.size
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    vals = cuda.local.array(_SUMSQ_UNROLL, grad.dtype)
    sumsq = np.float64(0)
    nonfinite = np.float64(0)
    while i < n:
        for u in range(_SUMSQ_UNROLL):
            k = i + u * stride
            if k < n:
                vals[u] = grad[np.uint64(k)]
        for u in range(_SUMSQ_UNROLL):
            k = i + u * stride
            if k < n:
                x = np.float64(vals[u])
                sumsq += x * x
                nonfinite += x - x
        i += _SUMSQ_UNROLL * stride

    # The block's sums, in a fixed order through shared memory: lane k of warp 0 adds the
    # threads k, k + 32, ..., then thread 0 adds those 32. Two barriers (a shuffle tree
    # takes a dozen per value); the serial adds cost a few hundred cycles against the
    # thousands of elements a block streams.
    part = cuda.shared.array((_MAX_THREADS, 2), np.float64)
    tid = cuda.threadIdx.x
    part[tid, 0] = sumsq
    part[tid, 1] = nonfinite
    cuda.syncthreads()
    lanes = min(WARP_SIZE, cuda.blockDim.x)
    if tid < lanes:
        k = tid + lanes
        while k < cuda.blockDim.x:
            sumsq += part[k, 0]
            nonfinite += part[k, 1]
            k += lanes
        part[tid, 0] = sumsq  # only this lane reads slot tid: no barrier needed before
        part[tid, 1] = nonfinite
    cuda.syncthreads()
    if tid == 0:
        for k in range(1, lanes):
            sumsq += part[k, 0]
            nonfinite += part[k, 1]
        out[cuda.blockIdx.x, 0] = sumsq
        out[cuda.blockIdx.x, 1] = nonfinite


# --- launchers --------------------------------------------------------------------


def _launch(kernel, arrays, scalars, flags, stream):
    """Launch ``kernel`` over ``arrays`` (the first sets n and the dtype) on ``stream``,
    each scalar cast to the dtype and each flag to bool; nothing when n == 0."""
    dtype = arrays[0].dtype.type
    args = (*arrays, *(dtype(s) for s in scalars), *(bool(f) for f in flags))
    launch(kernel, arrays[0].size, args, stream)


def adam_update(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
    grad_mult, param_mult, weight_decay, beta1_weight, beta2, one_minus_beta2,
    bias_correction2_sqrt, eps, neg_step_size, amsgrad, stream=None,
):  # fmt: skip
    """One Adam / AdamW step over flat arrays, in place (``rules.adam``).

    ``p ← p·param_mult``, ``g ← g·grad_mult + λ·p``, ``m ← lerp(m, g, beta1_weight)``,
    ``v ← v·β2 + (1 − β2)·g²``, ``v̂ ← max(v̂, v)`` (amsgrad),
    ``p ← p + neg_step_size·m / (√v / bias_correction2_sqrt + ε)``.

    Args:
        param, grad, exp_avg, exp_avg_sq: 1-D contiguous device arrays of one dtype
            (float32 or float64) and length n.
        max_exp_avg_sq: length n with amsgrad, else length 0 (never touched).
        grad_mult ... neg_step_size: floats, cast to the dtype.
        amsgrad: bool.
        stream: a numba stream, or None for the default stream.
    """
    _launch(
        _adam_kernel,
        (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq),
        (grad_mult, param_mult, weight_decay, beta1_weight, beta2, one_minus_beta2,
         bias_correction2_sqrt, eps, neg_step_size),
        (amsgrad,),
        stream,
    )  # fmt: skip


def sgd_update(
    param, grad, momentum_buffer,
    grad_mult, weight_decay, momentum, one_minus_dampening, neg_lr, first, nesterov,
    stream=None,
):  # fmt: skip
    """One SGD step over flat arrays, in place (``rules.sgd``).

    ``g ← g·grad_mult + λ·p``; momentum μ ≠ 0: ``b ← g`` when ``first``, else
    ``b ← μ·b + (1 − dampening)·g``, then ``g ← g + μ·b`` (nesterov) or ``g ← b``;
    ``p ← p + neg_lr·g``.

    Args:
        param, grad: 1-D contiguous device arrays of one dtype (float32 or float64).
        momentum_buffer: length n when momentum != 0 (only written when ``first``), else
            length 0 (never touched).
        grad_mult ... neg_lr: floats, cast to the dtype.
        first, nesterov: bools.
        stream: a numba stream, or None for the default stream.
    """
    _launch(
        _sgd_kernel,
        (param, grad, momentum_buffer),
        (grad_mult, weight_decay, momentum, one_minus_dampening, neg_lr),
        (first, nesterov),
        stream,
    )


def adagrad_update(param, grad, state_sum, grad_mult, weight_decay, eps, neg_clr, stream=None):
    """One Adagrad step over flat arrays, in place (``rules.adagrad``).

    ``g ← g·grad_mult + λ·p``, ``s ← s + g²``, ``p ← p + neg_clr·g / (√s + ε)``.

    Args:
        param, grad, state_sum: 1-D contiguous device arrays of one dtype.
        grad_mult, weight_decay, eps, neg_clr: floats, cast to the dtype.
        stream: a numba stream, or None for the default stream.
    """
    _launch(
        _adagrad_kernel,
        (param, grad, state_sum),
        (grad_mult, weight_decay, eps, neg_clr),
        (),
        stream,
    )


def rmsprop_update(
    param, grad, square_avg, grad_avg, momentum_buffer,
    grad_mult, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, centered,
    stream=None,
):  # fmt: skip
    """One RMSprop step over flat arrays, in place (``rules.rmsprop``).

    ``g ← g·grad_mult + λ·p``, ``v ← α·v + (1 − α)·g²``; centered: ``ḡ ← lerp(ḡ, g, 1 − α)``,
    ``a = √(v − ḡ²) + ε``, else ``a = √v + ε``; momentum μ > 0: ``b ← μ·b + g/a``,
    ``p ← p + neg_lr·b``, else ``p ← p + neg_lr·g/a``.

    Args:
        param, grad, square_avg: 1-D contiguous device arrays of one dtype.
        grad_avg: length n when centered, else length 0 (never touched).
        momentum_buffer: length n when momentum > 0, else length 0 (never touched).
        grad_mult ... neg_lr: floats, cast to the dtype.
        centered: bool.
        stream: a numba stream, or None for the default stream.
    """
    _launch(
        _rmsprop_kernel,
        (param, grad, square_avg, grad_avg, momentum_buffer),
        (grad_mult, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr),
        (centered,),
        stream,
    )


def adadelta_update(
    param, grad, square_avg, acc_delta,
    grad_mult, weight_decay, rho, one_minus_rho, eps, neg_lr, stream=None,
):  # fmt: skip
    """One Adadelta step over flat arrays, in place (``rules.adadelta``).

    ``g ← g·grad_mult + λ·p``, ``v ← ρ·v + (1 − ρ)·g²``, ``Δ = √(u + ε) / √(v + ε)·g``,
    ``u ← ρ·u + (1 − ρ)·Δ²``, ``p ← p + neg_lr·Δ``.

    Args:
        param, grad, square_avg, acc_delta: 1-D contiguous device arrays of one dtype.
        grad_mult ... neg_lr: floats, cast to the dtype.
        stream: a numba stream, or None for the default stream.
    """
    _launch(
        _adadelta_kernel,
        (param, grad, square_avg, acc_delta),
        (grad_mult, weight_decay, rho, one_minus_rho, eps, neg_lr),
        (),
        stream,
    )


def grad_sumsq_blocks(n: int) -> int:
    """Rows ``grad_sumsq`` writes for ``n`` elements: its grid size (0 when n == 0).

    Deterministic for a given ``config`` and device.
    """
    return grid_blocks(n)


def grad_sumsq(grad, out, stream=None):
    """Per-block partials of ``Σg²`` and of the non-finite flag ``Σ(g − g)``, in float64.

    Row ``b`` of ``out`` is ``(Σg², Σ(g − g))`` over block b's elements; the caller sums
    the rows in order (deterministic). One launch, nothing when ``grad`` is empty.

    Args:
        grad: 1-D contiguous float32 or float64 device array.
        out: float64 device array ``(grad_sumsq_blocks(grad.size), 2)``, C-contiguous.
        stream: a numba stream, or None for the default stream.
    """
    _launch(_grad_sumsq_kernel, (grad, out), (), (), stream)
