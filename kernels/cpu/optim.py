"""Fused optimizer steps on the CPU: ``@njit(parallel=True, cache=True)`` kernels.

Each kernel is one pass over flat, C-contiguous 1-D arrays: read every param, grad and
used state element once, write back every updated one once, nothing else (Adam float32:
28 B/param). The work is cut into units of ``config.CPU_OPTIM_CHUNK`` elements, shared
out to the threads by ``prange``; a unit is a loop over its elements that calls the
update rule of ``kernels/rules.py`` and stores what the rule returns. The rules are the
single source of the math, and no fastmath flag is set, so float32 steps round like
torch's single-tensor implementation.

Vectorization. A flag that decides whether a state array is read or written (amsgrad,
SGD momentum and its first step, RMSprop's centered and momentum) is branched on once
per unit, outside the element loop, and each branch inlines the unit loop with that flag
a constant, so LLVM folds the array access away (an unused state array is length 0 and
never touched) and vectorizes each copy (LLVM does not unswitch these loops on its own:
written as one loop, some flag combinations ran 2-12x slower). The conditions that
only choose between arithmetic (weight decay, Nesterov, lerp's form, momentum's value)
stay inside the rule: loop-invariant, they become uniform selects in the vectorized
loop. The formulas are never copied: every branch calls the same rule.

``grad_sumsq`` reduces fixed-size blocks of ``config.CPU_SUMSQ_BLOCK`` elements, one
float64 row each, so its result does not depend on the thread count.
"""

import functools

import numpy as np
from numba import njit, prange

from pyopt.kernels import config, rules
from pyopt.kernels.cpu._launch import parallel_launcher

# Reassociation lets the float64 block sums vectorize (a fixed order per compiled loop,
# the same whatever the thread count). No nnan/ninf: g - g must stay NaN for inf/NaN.
_SUM_FASTMATH = {"reassoc", "contract"}
_KERNEL_OPTIONS = {"parallel": True, "cache": True, "error_model": "numpy"}


_rule = functools.partial(rules.compiled, njit(inline="always", cache=True))

# The shared scalar rules (kernels/rules.py), compiled for the CPU.
_lerp = _rule(rules.lerp)
_decayed_grad = _rule(rules.decayed_grad)
_adam = _rule(rules.adam, lerp=_lerp, decayed_grad=_decayed_grad)
_sgd = _rule(rules.sgd, decayed_grad=_decayed_grad)
_adagrad = _rule(rules.adagrad, decayed_grad=_decayed_grad)
_rmsprop = _rule(rules.rmsprop, lerp=_lerp, decayed_grad=_decayed_grad)
_adadelta = _rule(rules.adadelta, decayed_grad=_decayed_grad)


@njit(inline="always", cache=True)
def _unit(total, chunk, u):
    """Slice of the u-th unit of ``chunk`` elements of ``total`` (the last one shorter)."""
    return slice(u * chunk, min((u + 1) * chunk, total))


@njit(inline="always", cache=True)
def _adam_unit(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, amsgrad):
    """The Adam rule over one unit; ``amsgrad`` is a constant at every call site."""
    zero = param.dtype.type(0)
    gm, pm, wd, b1w, b2, omb2, bc2s, eps, nss = scalars  # (Numba inlines no *args call)
    for i in range(param.size):  # from 0: no negative-index checks, so it vectorizes
        v_max = max_exp_avg_sq[i] if amsgrad else zero
        p, m, v, v_max = _adam(
            param[i], grad[i], exp_avg[i], exp_avg_sq[i], v_max,
            gm, pm, wd, b1w, b2, omb2, bc2s, eps, nss, amsgrad,
        )  # fmt: skip
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            max_exp_avg_sq[i] = v_max


@njit(**_KERNEL_OPTIONS)
def _adam_kernel(
    param,  # (n,) updated in place
    grad,  # (n,)
    exp_avg,  # (n,) updated in place
    exp_avg_sq,  # (n,) updated in place
    max_exp_avg_sq,  # (n,) updated in place with amsgrad, else (0,)
    grad_mult,
    param_mult,
    weight_decay,
    beta1_weight,
    beta2,
    one_minus_beta2,
    bias_correction2_sqrt,
    eps,
    neg_step_size,
    amsgrad,
    chunk,  # elements per unit
):
    """Adam / AdamW: ``m ← lerp(m, g, 1 − β1)``, ``v ← β2·v + (1 − β2)·g²``,
    ``p ← p − step_size·m / (√v / √(1 − β2^t) + ε)`` (see ``rules.adam``).

    Memory: reads p, g, m, v and writes p, m, v (28 B/param in float32); amsgrad also
    reads and writes v̂ (36 B/param).
    """
    n = param.size
    scalars = (
        grad_mult, param_mult, weight_decay, beta1_weight, beta2, one_minus_beta2,
        bias_correction2_sqrt, eps, neg_step_size,
    )  # fmt: skip
    for u in prange((n + chunk - 1) // chunk):
        s = _unit(n, chunk, u)
        p, g, m, v = param[s], grad[s], exp_avg[s], exp_avg_sq[s]
        if amsgrad:
            _adam_unit(p, g, m, v, max_exp_avg_sq[s], scalars, True)
        else:
            _adam_unit(p, g, m, v, max_exp_avg_sq, scalars, False)


@njit(inline="always", cache=True)
def _sgd_unit(param, grad, momentum_buffer, scalars, first, nesterov, use_buffer):
    """The SGD rule over one unit; ``first`` and ``use_buffer`` are constants at every
    call site (with ``use_buffer`` False, the momentum in ``scalars`` is the constant 0)."""
    zero = param.dtype.type(0)
    gm, wd, mu, omd, neg_lr = scalars
    for i in range(param.size):
        b = momentum_buffer[i] if use_buffer and not first else zero
        p, b = _sgd(param[i], grad[i], b, gm, wd, mu, omd, neg_lr, first, nesterov)
        param[i] = p
        if use_buffer:
            momentum_buffer[i] = b


@njit(**_KERNEL_OPTIONS)
def _sgd_kernel(
    param,  # (n,) updated in place
    grad,  # (n,)
    momentum_buffer,  # (n,) updated in place (only written when first) if momentum != 0, else (0,)
    grad_mult,
    weight_decay,
    momentum,
    one_minus_dampening,
    neg_lr,
    first,
    nesterov,
    chunk,  # elements per unit
):
    """SGD: ``b ← μ·b + (1 − dampening)·g`` (``b ← g`` on the first step),
    ``p ← p − lr·(g + μ·b)`` (Nesterov) or ``p ← p − lr·b``; ``p ← p − lr·g`` without
    momentum (see ``rules.sgd``).

    Memory: reads p, g, b and writes p, b (20 B/param in float32); 16 on the first step
    (b not read), 12 without momentum.
    """
    n = param.size
    zero = param.dtype.type(0)
    scalars = (grad_mult, weight_decay, momentum, one_minus_dampening, neg_lr)
    no_momentum = (grad_mult, weight_decay, zero, one_minus_dampening, neg_lr)
    for u in prange((n + chunk - 1) // chunk):
        s = _unit(n, chunk, u)
        p, g = param[s], grad[s]
        if momentum == zero:
            _sgd_unit(p, g, momentum_buffer, no_momentum, False, False, False)
        elif first:
            _sgd_unit(p, g, momentum_buffer[s], scalars, True, nesterov, True)
        else:
            _sgd_unit(p, g, momentum_buffer[s], scalars, False, nesterov, True)


@njit(inline="always", cache=True)
def _adagrad_unit(param, grad, state_sum, grad_mult, weight_decay, eps, neg_clr):
    """The Adagrad rule over one unit."""
    for i in range(param.size):
        param[i], state_sum[i] = _adagrad(
            param[i], grad[i], state_sum[i], grad_mult, weight_decay, eps, neg_clr
        )


@njit(**_KERNEL_OPTIONS)
def _adagrad_kernel(
    param,  # (n,) updated in place
    grad,  # (n,)
    state_sum,  # (n,) updated in place
    grad_mult,
    weight_decay,
    eps,
    neg_clr,
    chunk,  # elements per unit
):
    """Adagrad: ``s ← s + g²``, ``p ← p − clr·g / (√s + ε)`` (see ``rules.adagrad``).

    Memory: reads p, g, s and writes p, s (20 B/param in float32).
    """
    n = param.size
    for u in prange((n + chunk - 1) // chunk):
        s = _unit(n, chunk, u)
        _adagrad_unit(param[s], grad[s], state_sum[s], grad_mult, weight_decay, eps, neg_clr)


@njit(inline="always", cache=True)
def _rmsprop_unit(
    param, grad, square_avg, grad_avg, momentum_buffer, scalars, centered, use_buffer
):
    """The RMSprop rule over one unit; ``centered`` and ``use_buffer`` are constants at
    every call site (with ``use_buffer`` False, the momentum in ``scalars`` is the
    constant 0)."""
    zero = param.dtype.type(0)
    gm, wd, alpha, oma, eps, mu, neg_lr = scalars
    for i in range(param.size):
        a = grad_avg[i] if centered else zero
        b = momentum_buffer[i] if use_buffer else zero
        p, v, a, b = _rmsprop(
            param[i], grad[i], square_avg[i], a, b, gm, wd, alpha, oma, eps, mu, neg_lr, centered
        )
        param[i] = p
        square_avg[i] = v
        if centered:
            grad_avg[i] = a
        if use_buffer:
            momentum_buffer[i] = b


@njit(**_KERNEL_OPTIONS)
def _rmsprop_kernel(
    param,  # (n,) updated in place
    grad,  # (n,)
    square_avg,  # (n,) updated in place
    grad_avg,  # (n,) updated in place if centered, else (0,)
    momentum_buffer,  # (n,) updated in place if momentum > 0, else (0,)
    grad_mult,
    weight_decay,
    alpha,
    one_minus_alpha,
    eps,
    momentum,
    neg_lr,
    centered,
    chunk,  # elements per unit
):
    """RMSprop: ``v ← α·v + (1 − α)·g²``, ``a = √(v − ḡ²) + ε`` with
    ``ḡ ← lerp(ḡ, g, 1 − α)`` (centered) or ``a = √v + ε``; ``b ← μ·b + g/a``,
    ``p ← p − lr·b`` with momentum, else ``p ← p − lr·g/a`` (see ``rules.rmsprop``).

    Memory: reads p, g, v and writes p, v (20 B/param in float32), plus 8 B/param each
    for ḡ (centered) and b (momentum): 36 with both.
    """
    n = param.size
    zero = param.dtype.type(0)
    scalars = (grad_mult, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr)
    no_momentum = (grad_mult, weight_decay, alpha, one_minus_alpha, eps, zero, neg_lr)
    for u in prange((n + chunk - 1) // chunk):
        s = _unit(n, chunk, u)
        p, g, v = param[s], grad[s], square_avg[s]
        if centered:
            if momentum > zero:
                _rmsprop_unit(p, g, v, grad_avg[s], momentum_buffer[s], scalars, True, True)
            else:
                _rmsprop_unit(p, g, v, grad_avg[s], momentum_buffer, no_momentum, True, False)
        elif momentum > zero:
            _rmsprop_unit(p, g, v, grad_avg, momentum_buffer[s], scalars, False, True)
        else:
            _rmsprop_unit(p, g, v, grad_avg, momentum_buffer, no_momentum, False, False)


@njit(inline="always", cache=True)
def _adadelta_unit(param, grad, square_avg, acc_delta, scalars):
    """The Adadelta rule over one unit."""
    gm, wd, rho, omr, eps, neg_lr = scalars
    for i in range(param.size):
        param[i], square_avg[i], acc_delta[i] = _adadelta(
            param[i], grad[i], square_avg[i], acc_delta[i], gm, wd, rho, omr, eps, neg_lr
        )


@njit(**_KERNEL_OPTIONS)
def _adadelta_kernel(
    param,  # (n,) updated in place
    grad,  # (n,)
    square_avg,  # (n,) updated in place
    acc_delta,  # (n,) updated in place
    grad_mult,
    weight_decay,
    rho,
    one_minus_rho,
    eps,
    neg_lr,
    chunk,  # elements per unit
):
    """Adadelta: ``v ← ρ·v + (1 − ρ)·g²``, ``Δ = √(u + ε) / √(v + ε)·g``,
    ``u ← ρ·u + (1 − ρ)·Δ²``, ``p ← p − lr·Δ`` (see ``rules.adadelta``).

    Memory: reads p, g, v, u and writes p, v, u (28 B/param in float32).
    """
    n = param.size
    scalars = (grad_mult, weight_decay, rho, one_minus_rho, eps, neg_lr)
    for u in prange((n + chunk - 1) // chunk):
        s = _unit(n, chunk, u)
        _adadelta_unit(param[s], grad[s], square_avg[s], acc_delta[s], scalars)


@njit(parallel=True, cache=True, error_model="numpy", fastmath=_SUM_FASTMATH)
def _grad_sumsq_kernel(
    grad,  # (n,)
    out,  # (blocks, 2) float64 out: (Σ g², Σ (g − g)) per block
    block,  # elements per block
):
    """Per block of ``block`` elements: ``Σ g²`` and ``Σ (g − g)`` (0, or NaN when any
    g is inf or NaN), in float64.

    Memory: reads g once (4 B/param in float32).
    """
    n = grad.size
    for b in prange(out.shape[0]):
        g = grad[_unit(n, block, b)]
        sum_sq = 0.0
        non_finite = 0.0
        for i in range(g.size):
            x = np.float64(g[i])
            sum_sq += x * x
            non_finite += x - x
        out[b, 0] = sum_sq
        out[b, 1] = non_finite


def _chunk():
    return int(config.CPU_OPTIM_CHUNK)


@parallel_launcher
def adam_update(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_mult, param_mult, weight_decay,
    beta1_weight, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, amsgrad,
):  # fmt: skip
    """One Adam / AdamW step (``rules.adam``) over 1-D arrays, in place.

    ``max_exp_avg_sq`` is length 0 (and untouched) unless ``amsgrad``.
    """
    if param.size == 0:
        return
    f = param.dtype.type
    _adam_kernel(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, f(grad_mult), f(param_mult),
        f(weight_decay), f(beta1_weight), f(beta2), f(one_minus_beta2),
        f(bias_correction2_sqrt), f(eps), f(neg_step_size), bool(amsgrad), _chunk(),
    )  # fmt: skip


@parallel_launcher
def sgd_update(
    param, grad, momentum_buffer, grad_mult, weight_decay, momentum, one_minus_dampening,
    neg_lr, first, nesterov,
):  # fmt: skip
    """One SGD step (``rules.sgd``) over 1-D arrays, in place.

    ``momentum_buffer`` is length 0 (and untouched) when ``momentum == 0``; with
    ``first`` it is only written.
    """
    if param.size == 0:
        return
    f = param.dtype.type
    _sgd_kernel(
        param, grad, momentum_buffer, f(grad_mult), f(weight_decay), f(momentum),
        f(one_minus_dampening), f(neg_lr), bool(first), bool(nesterov), _chunk(),
    )  # fmt: skip


@parallel_launcher
def adagrad_update(param, grad, state_sum, grad_mult, weight_decay, eps, neg_clr):
    """One Adagrad step (``rules.adagrad``) over 1-D arrays, in place."""
    if param.size == 0:
        return
    f = param.dtype.type
    _adagrad_kernel(
        param, grad, state_sum, f(grad_mult), f(weight_decay), f(eps), f(neg_clr), _chunk()
    )


@parallel_launcher
def rmsprop_update(
    param, grad, square_avg, grad_avg, momentum_buffer, grad_mult, weight_decay, alpha,
    one_minus_alpha, eps, momentum, neg_lr, centered,
):  # fmt: skip
    """One RMSprop step (``rules.rmsprop``) over 1-D arrays, in place.

    ``grad_avg`` is length 0 (and untouched) unless ``centered``, ``momentum_buffer``
    unless ``momentum > 0``.
    """
    if param.size == 0:
        return
    f = param.dtype.type
    _rmsprop_kernel(
        param, grad, square_avg, grad_avg, momentum_buffer, f(grad_mult), f(weight_decay),
        f(alpha), f(one_minus_alpha), f(eps), f(momentum), f(neg_lr), bool(centered),
        _chunk(),
    )  # fmt: skip


@parallel_launcher
def adadelta_update(
    param, grad, square_avg, acc_delta, grad_mult, weight_decay, rho, one_minus_rho, eps, neg_lr
):
    """One Adadelta step (``rules.adadelta``) over 1-D arrays, in place."""
    if param.size == 0:
        return
    f = param.dtype.type
    _adadelta_kernel(
        param, grad, square_avg, acc_delta, f(grad_mult), f(weight_decay), f(rho),
        f(one_minus_rho), f(eps), f(neg_lr), _chunk(),
    )  # fmt: skip


def grad_sumsq_blocks(n):
    """Rows :func:`grad_sumsq` writes for ``n`` elements: one per ``CPU_SUMSQ_BLOCK``."""
    block = int(config.CPU_SUMSQ_BLOCK)
    return (int(n) + block - 1) // block


@parallel_launcher
def grad_sumsq(grad, out):
    """Per fixed block of ``grad``: ``out[b] = (Σ g², Σ (g − g))`` in float64, in place.

    ``out`` is float64 ``(grad_sumsq_blocks(grad.size), 2)``; the second column is 0 for
    finite blocks and NaN for a block holding inf or NaN. Blocks do not depend on the
    thread count, so summing the rows in order gives the same bits on any machine size.
    """
    if grad.size == 0:
        return
    _grad_sumsq_kernel(grad, out, int(config.CPU_SUMSQ_BLOCK))
