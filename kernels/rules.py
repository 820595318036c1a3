"""Scalar math shared by the CPU and CUDA kernels, written once.

Plain Python functions: ``kernels/cpu`` compiles them with a plain ``njit`` (with the
calling kernels' fastmath flags) and ``kernels/cuda`` with ``cuda.jit(device=True,
inline="always")``, so the two backends differ only in how they schedule work over
elements, never in a formula.

On the CPU no function that is itself ``inline="always"`` calls an ``inline="always"``
function: LLVM inlines the small calls anyway, while Numba's own inlining re-labels each
callee's blocks above every block label the process has used, so each nested inline
doubles Numba's process-wide label counter. Measured on a 2-core EPYC, cold cache: with
the rules and conversions inlined into inlined element loops, one stochastic-rounding
Adam kernel added 8 digits to the counter, and in one pytest process the labels (hundreds
of digits) broke LLVM's IR parser ("unable to create block named") for every later
compile; without, the 55 optimizer kernels of every storage leave it at 5 digits. Literals are
``np.float32`` so float32 callers stay in float32; float64 callers widen them exactly.

Numba's on-disk CPU cache does not notice edits to this file (it checks only the file of
the kernel it caches): clear ``kernels/cpu/__pycache__`` after changing a rule.
"""

import math
import types

import numpy as np


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries; an empty summary (count 0) is the identity.

    ``n = n_a + n_b``, ``δ = mean_b − mean_a``, ``mean = mean_a + δ·n_b/n``,
    ``M2 = M2_a + M2_b + δ²·n_a·n_b/n`` (Chan, Golub & LeVeque, 1983). Stable: no
    E[x²] − E[x]².
    """
    if n_b == np.float32(0):
        return n_a, mean_a, m2_a
    if n_a == np.float32(0):
        return n_b, mean_b, m2_b
    n = n_a + n_b
    w = n_b / n
    delta = mean_b - mean_a
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


def running_update(running, batch, momentum):
    """``(1 − momentum)·running + momentum·batch``: torch's running-statistics blend."""
    return (np.float32(1) - momentum) * running + momentum * batch


def normalized(x, mean, scale, shift):
    """``y = (x − mean)·scale + shift`` with ``scale = invstd·weight``, ``shift = bias``;
    ``x − mean`` is formed first so that a mean far from zero costs no precision."""
    return (x - mean) * scale + shift


# --- Batch-norm finalize and backward (kernels/*/batchnorm.py) ----------------------
#
# Precision: each backend passes these rules the type it accumulates in, and they
# compute in that type. The CPU merges its partials in float64 and calls them in float64
# (widening the x.dtype per-channel operands); CUDA merges in x.dtype and calls them in
# x.dtype, so a float32 kernel stays float32 (the PTX gate checks). Per-channel results
# are rounded to x.dtype once, when stored; per-element math is in x.dtype on both.


def inverse_std(var, eps):
    """``invstd = 1 / √(var + eps)``, as ``√(1 / (var + eps))``: as accurate (within an
    ulp), and typed by the quotient. (Under the CUDA simulator ``math.sqrt`` returns a
    Python float, which ``np.float32(1) / ·`` would round to float32 even for float64.)"""
    return math.sqrt(np.float32(1) / (var + eps))


def batch_norm_statistics(n, mean, m2, running_mean, running_var, momentum, eps, update_running):
    """One channel's merged statistics (count n, mean, M2 = Σ (x − mean)²) finalized:
    ``(invstd, running_mean, running_var)``.

    ``var = M2 / n`` (biased: what normalizes), ``invstd = 1 / √(var + eps)``. With
    ``update_running``: ``running_mean ← (1 − momentum)·running_mean + momentum·mean``,
    ``running_var ← (1 − momentum)·running_var + momentum·M2 / (n − 1)`` (unbiased; NaN
    for n = 1, as ``torch.native_batch_norm``); else the running statistics are returned
    unchanged. M2 is clamped at 0 first: a corrected two-pass sum can round a zero M2
    below it (NaN passes).
    """
    if m2 < np.float32(0):
        m2 = np.float32(0)
    invstd = inverse_std(m2 / n, eps)
    if update_running:
        running_mean = running_update(running_mean, mean, momentum)
        running_var = running_update(running_var, m2 / (n - np.float32(1)), momentum)
    return invstd, running_mean, running_var


def batch_norm_grad_coefficients(sum_dy, sum_dyx, weight, invstd, n):
    """One channel's backward coefficients from ``Σ dy`` and ``Σ dy·(x − mean)`` over its
    n elements: ``(dweight, a, b, d)`` (``dbias`` is ``Σ dy`` itself).

    ``dweight = invstd·Σ dy·(x − mean) = Σ dy·xhat``, and the coefficients of
    :func:`batch_norm_grad_input`: ``a = weight·invstd``, ``b = a·invstd·dweight / n``,
    ``d = a·Σ dy / n``.
    """
    dweight = sum_dyx * invstd
    a = weight * invstd
    return dweight, a, a * invstd * dweight / n, a * sum_dy / n


def batch_norm_grad_input(dy, x, mean, a, b, d, training):
    """One element's ``dx`` from the coefficients of :func:`batch_norm_grad_coefficients`.

    Training (through the batch statistics): ``dx = a·dy − b·(x − mean) − d``, that is
    ``weight·invstd·(dy − mean(dy) − xhat·mean(dy·xhat))``. Eval: ``dx = a·dy``
    (``weight·invstd·dy``; ``x`` is not used).
    """
    if training:
        return a * dy - b * (x - mean) - d
    return a * dy


def compiled_batch_norm(jit):
    """The batch-norm rules compiled by ``jit`` (:func:`compiled`), one call per backend:
    ``(normalized, inverse_std, batch_norm_statistics, batch_norm_grad_coefficients,
    batch_norm_grad_input)``, each bound to the compiled rules it calls."""
    inverse = compiled(jit, inverse_std)
    update = compiled(jit, running_update)
    return (
        compiled(jit, normalized),
        inverse,
        compiled(jit, batch_norm_statistics, inverse_std=inverse, running_update=update),
        compiled(jit, batch_norm_grad_coefficients),
        compiled(jit, batch_norm_grad_input),
    )


def compiled(jit, fn, **helpers):
    """``fn`` compiled by ``jit`` (a CPU ``njit`` or a CUDA device ``jit``),
    with the rules it calls bound to their compiled versions ``helpers``.

    The rules call one another (``adam`` calls ``lerp`` and ``decayed_grad``) as plain
    Python functions, which Numba resolves in the function's globals: the compiled
    function is a copy of ``fn`` whose globals map those names to ``helpers``.
    """
    namespace = dict(fn.__globals__, **helpers)
    clone = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)
    clone.__qualname__ = fn.__qualname__
    clone.__doc__ = fn.__doc__
    return jit(clone)


# --- Optimizer update rules -------------------------------------------------------
#
# One function per algorithm: the update of one element, in the order of operations of
# torch.optim's single-tensor implementation (torch 2.13), so that float32 results agree
# to rounding. The public layer folds policy into the scalars it passes, computed in
# float64 on the host and cast to the parameter dtype:
#
#   grad_mult      ±clip_coef / grad_scale (negative for maximize=True; 1 when unused):
#                  torch negates the gradient first, and x·(−c) == −(x·c) exactly.
#   neg_*          −lr, −lr/(1 − β1^t), ...: the signed multiplier of the final
#                  ``param.add_/addcdiv_``.
#   one_minus_*    1 − β etc., rounded once on the host like torch's Python-float values.
#
# Each returns the new values of everything it updates; arrays it does not use are
# passed through unchanged by the kernels.


def lerp(start, end, weight):
    """torch.lerp: ``start + w·(end − start)`` for |w| < 0.5, else
    ``end − (end − start)·(1 − w)`` (exact at w = 1)."""
    if abs(weight) < np.float32(0.5):
        return start + weight * (end - start)
    return end - (end - start) * (np.float32(1) - weight)


def decayed_grad(p, g, grad_mult, weight_decay):
    """The gradient the rules use: ``g·grad_mult``, plus ``weight_decay·p`` (L2) when
    weight_decay is non-zero (skipped at zero, so an infinite param does not make 0·inf)."""
    g = g * grad_mult
    if weight_decay != np.float32(0):
        g = g + weight_decay * p
    return g


def adam(
    p,
    g,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
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
):
    """Adam / AdamW (torch ``_single_tensor_adam``).

    ``p ← p·param_mult`` (AdamW's ``1 − lr·λ``; 1 for Adam), ``g ← g·grad_mult + λ·p``
    (Adam's L2 term; λ = 0 for AdamW), ``m ← lerp(m, g, 1 − β1)``,
    ``v ← v·β2 + (1 − β2)·g²``, ``v̂ ← max(v̂, v)`` with amsgrad,
    ``p ← p − step_size·m / (√v / √(1 − β2^t) + ε)``, ``step_size = lr / (1 − β1^t)``.
    """
    p = p * param_mult
    g = decayed_grad(p, g, grad_mult, weight_decay)
    exp_avg = lerp(exp_avg, g, beta1_weight)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    second = exp_avg_sq
    if amsgrad:
        # torch.maximum: a NaN on either side wins.
        if exp_avg_sq > max_exp_avg_sq or exp_avg_sq != exp_avg_sq:
            max_exp_avg_sq = exp_avg_sq
        second = max_exp_avg_sq
    denom = math.sqrt(second) / bias_correction2_sqrt + eps
    p = p + neg_step_size * exp_avg / denom
    return p, exp_avg, exp_avg_sq, max_exp_avg_sq


def sgd(
    p,
    g,
    momentum_buffer,
    grad_mult,
    weight_decay,
    momentum,
    one_minus_dampening,
    neg_lr,
    first,
    nesterov,
):
    """SGD with momentum (torch ``_single_tensor_sgd``); momentum = 0 means none.

    ``g ← g·grad_mult + λ·p``; with momentum μ: ``b ← g`` on the buffer's first step, else
    ``b ← μ·b + (1 − dampening)·g``; then ``g ← g + μ·b`` (Nesterov) or ``g ← b``;
    ``p ← p − lr·g``.
    """
    g = decayed_grad(p, g, grad_mult, weight_decay)
    if momentum != np.float32(0):
        if first:
            momentum_buffer = g
        else:
            momentum_buffer = momentum_buffer * momentum + one_minus_dampening * g
        if nesterov:
            g = g + momentum * momentum_buffer
        else:
            g = momentum_buffer
    return p + neg_lr * g, momentum_buffer


def adagrad(p, g, state_sum, grad_mult, weight_decay, eps, neg_clr):
    """Adagrad (torch ``_single_tensor_adagrad``).

    ``g ← g·grad_mult + λ·p``, ``s ← s + g²``, ``p ← p − clr·g / (√s + ε)`` with
    ``clr = lr / (1 + (t − 1)·lr_decay)``.
    """
    g = decayed_grad(p, g, grad_mult, weight_decay)
    state_sum = state_sum + g * g
    return p + neg_clr * g / (math.sqrt(state_sum) + eps), state_sum


def rmsprop(
    p,
    g,
    square_avg,
    grad_avg,
    momentum_buffer,
    grad_mult,
    weight_decay,
    alpha,
    one_minus_alpha,
    eps,
    momentum,
    neg_lr,
    centered,
):
    """RMSprop (torch ``_single_tensor_rmsprop``); momentum = 0 means none.

    ``g ← g·grad_mult + λ·p``, ``v ← α·v + (1 − α)·g²``; centered:
    ``ḡ ← lerp(ḡ, g, 1 − α)``, ``a = √(v − ḡ²) + ε``, else ``a = √v + ε``; with momentum
    μ: ``b ← μ·b + g/a``, ``p ← p − lr·b``, else ``p ← p − lr·g/a``.
    """
    g = decayed_grad(p, g, grad_mult, weight_decay)
    square_avg = square_avg * alpha + one_minus_alpha * g * g
    if centered:
        grad_avg = lerp(grad_avg, g, one_minus_alpha)
        avg = math.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = math.sqrt(square_avg) + eps
    if momentum > np.float32(0):
        momentum_buffer = momentum_buffer * momentum + g / avg
        p = p + neg_lr * momentum_buffer
    else:
        p = p + neg_lr * g / avg
    return p, square_avg, grad_avg, momentum_buffer


def adadelta(p, g, square_avg, acc_delta, grad_mult, weight_decay, rho, one_minus_rho, eps, neg_lr):
    """Adadelta (torch ``_single_tensor_adadelta``).

    ``g ← g·grad_mult + λ·p``, ``v ← ρ·v + (1 − ρ)·g²``,
    ``Δ = √(u + ε) / √(v + ε) · g``, ``u ← ρ·u + (1 − ρ)·Δ²``, ``p ← p − lr·Δ``.
    """
    g = decayed_grad(p, g, grad_mult, weight_decay)
    square_avg = square_avg * rho + one_minus_rho * g * g
    std = math.sqrt(square_avg + eps)
    delta = math.sqrt(acc_delta + eps) / std * g
    acc_delta = acc_delta * rho + one_minus_rho * delta * delta
    return p + neg_lr * delta, square_avg, acc_delta


# --- Gradient norms (kernels/*/clip.py) -------------------------------------------

# Modes of norm_partials: the reduction of one block.
NORM_MAX = 0  # max |g|        (norm_type = inf)
NORM_MIN = 1  # min |g|        (norm_type = -inf)
NORM_L1 = 2  # Σ |g|
NORM_L2 = 3  # Σ g²
NORM_POW = 4  # Σ |g|^p       (any other finite p > 0)


def norm_mode(norm_type) -> tuple[int, float]:
    """``(mode, p)`` of the kernels for ``norm_type``: inf, -inf or a finite p > 0."""
    p = float(norm_type)
    if p == math.inf:
        return NORM_MAX, p
    if p == -math.inf:
        return NORM_MIN, p
    return {1.0: NORM_L1, 2.0: NORM_L2}.get(p, NORM_POW), p


def norm_identity(mode):
    """The value a reduction of no elements starts from: +inf for min, else 0."""
    return math.inf if mode == NORM_MIN else 0.0


def norm_term(x, mode, p):
    """One float64 element's term: ``g²`` (L2), ``|g|^p`` (POW) or ``|g|`` (the others)."""
    if mode == NORM_L2:
        return x * x
    if mode == NORM_POW:
        return math.pow(abs(x), p)
    return abs(x)


def norm_combine(acc, term, mode):
    """``acc`` combined with ``term``: max or min (a NaN on either side stays), else sum."""
    if mode == NORM_MAX:
        return term if term > acc or term != term else acc
    if mode == NORM_MIN:
        return term if term < acc or term != term else acc
    return acc + term


# --- 16-bit floats (every kernel that loads or stores float16/bfloat16) -------------
#
# Kernels hold float16 and bfloat16 data as their uint16 bit patterns and convert with
# these integer rules, so both backends (and the float64 reference) round identically
# and the PTX gate sees 16-bit loads and stores around float32 arithmetic. The bit casts
# ``float32_bits``/``float32_from_bits`` below are NumPy's scalar views; the kernels bind
# them to LLVM bitcasts (``_codegen.bitcast_intrinsics``). Integers are uint32 constants
# (Numba widens them to uint64, never to a signed or float type).

_U16 = np.uint32(16)
_SIGN32 = np.uint32(0x80000000)
_ABS32 = np.uint32(0x7FFFFFFF)
_INF32 = np.uint32(0x7F800000)


def float32_bits(x):
    """The IEEE bits of float32 ``x`` as a uint32."""
    return np.float32(x).view(np.uint32)


def float32_from_bits(u):
    """The float32 whose IEEE bits are ``u`` (a uint32)."""
    return np.uint32(u).view(np.float32)


def bfloat16_to_float32(h):
    """bfloat16 bits ``h`` (uint16) as a float32: the top half of its bits (exact)."""
    return float32_from_bits(np.uint32(np.uint32(h) << _U16))


def float32_to_bfloat16(x):
    """float32 ``x`` rounded to the nearest bfloat16, ties to even; its uint16 bits.

    ``(u + 0x7FFF + lsb) >> 16`` of the bits ``u`` (``lsb`` the last kept bit): overflow
    rounds to ±inf like IEEE. A NaN stays a NaN (its sign and top payload bits, quieted).
    """
    u = float32_bits(x)
    if (u & _ABS32) > _INF32:
        return np.uint16((u >> _U16) | np.uint32(0x0040))
    lsb = (u >> _U16) & np.uint32(1)
    return np.uint16((u + np.uint32(0x7FFF) + lsb) >> _U16)


def float32_to_bfloat16_stochastic(x, word):
    """float32 ``x`` rounded to one of its two neighbouring bfloat16 values, up with
    probability (distance from the lower one) / (their spacing): the low 16 bits of the
    random uint32 ``word`` added to the 16 bits dropped, then truncated (torchao's and
    Gupta et al.'s stochastic rounding). Exact values stay exact; ±inf stays ±inf; the
    largest finite values round up to inf with that probability; a NaN stays a NaN."""
    u = float32_bits(x)
    if (u & _ABS32) > _INF32:
        return np.uint16((u >> _U16) | np.uint32(0x0040))
    return np.uint16((u + (np.uint32(word) & np.uint32(0xFFFF))) >> _U16)


def float16_to_float32(h):
    """float16 bits ``h`` (uint16) as a float32 (exact): the exponent rebiased; a
    subnormal is ``m·2⁻²⁴`` (exact in float32, a normal number there); inf and NaN keep
    their payload. Every candidate is computed and one selected (no branches: the CPU
    loops vectorize)."""
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << _U16
    magnitude = h & np.uint32(0x7FFF)
    normal = (magnitude << np.uint32(13)) + np.uint32(0x38000000)  # exponent + (127 − 15)
    special = (magnitude << np.uint32(13)) | _INF32
    subnormal = float32_bits(np.float32(magnitude) * np.float32(2.0**-24))
    bits = subnormal if magnitude < np.uint32(0x0400) else normal
    bits = special if magnitude >= np.uint32(0x7C00) else bits
    return float32_from_bits(np.uint32(bits | sign))


def float32_to_float16(x):
    """float32 ``x`` rounded to the nearest float16, ties to even; its uint16 bits.

    Magnitudes from 65520 round to inf; normal results drop 13 bits with
    ``(a − rebias + 0xFFF + lsb) >> 13``. Subnormal results (below 2⁻¹⁴) come from one
    float32 addition, ``a + 0.5``: its exponent is that of 0.5, so IEEE addition rounds
    ``a`` to a multiple of 2⁻²⁴ (the float16 subnormal step), ties to even, on every
    backend alike (an input below float32's normal range rounds to 0 either way, flushed
    or not). A NaN stays a NaN (sign and top payload bits, quieted). Every candidate is
    computed and one selected: no branches, so the CPU loops vectorize.
    """
    u = float32_bits(x)
    sign = (u >> _U16) & np.uint32(0x8000)
    a = u & _ABS32
    lsb = (a >> np.uint32(13)) & np.uint32(1)
    normal = (a - np.uint32(0x38000000) + np.uint32(0xFFF) + lsb) >> np.uint32(13)
    half = np.float32(0.5)
    subnormal = float32_bits(float32_from_bits(a) + half) - np.uint32(0x3F000000)
    nan = np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF))
    bits = subnormal if a < np.uint32(0x38800000) else normal
    bits = np.uint32(0x7C00) if a >= np.uint32(0x477FF000) else bits
    bits = nan if a > _INF32 else bits
    return np.uint16(sign | bits)


# The 16-bit formats, by the name the kernels and the public layer use: (to float32,
# from float32 rounding to nearest even).
SIXTEEN_BIT = {
    "float16": (float16_to_float32, float32_to_float16),
    "bfloat16": (bfloat16_to_float32, float32_to_bfloat16),
}


def compiled_conversions(jit, float32_bits, float32_from_bits):
    """The 16-bit conversions compiled by ``jit`` with the backend's bit casts: a dict
    name → compiled function, for every conversion of this section."""
    casts = {"float32_bits": float32_bits, "float32_from_bits": float32_from_bits}
    names = (
        "bfloat16_to_float32",
        "float32_to_bfloat16",
        "float32_to_bfloat16_stochastic",
        "float16_to_float32",
        "float32_to_float16",
    )
    return {name: compiled(jit, globals()[name], **casts) for name in names}
