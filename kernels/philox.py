"""Philox4x32-10 counter-based random numbers and their maps to floats, written once.

Plain Python functions: ``kernels/cpu/random.py`` compiles them with a plain ``njit``
and ``kernels/cuda/random.py`` with a CUDA device ``jit`` (:func:`compiled`, through
``rules.compiled``), so both backends draw the same words for the same ``(seed, offset)``
and map them with the same formulas.

On the CPU they are not ``inline="always"`` (see ``kernels/rules.py``): LLVM inlines them
anyway, while Numba's own inlining of this nest of calls (ten rounds, each two
``mulhilo32``) doubled Numba's global block-label counter per nested inline. Measured on a
2-core EPYC: with it a ``normal_`` kernel compiled in twice the time, a 2**24-element
float32 ``normal_`` took 2.79 s (0.18 s without), and after ~60 random kernels the labels
(hundreds of digits) broke LLVM's IR parser for every later compile in the process.

Box-Muller's cos and sin are polynomials here too (:func:`sincos_turns`), so only its log
differs between backends (libm against libdevice).

The stream: element ``i`` of a call with ``(seed, offset)`` is lane ``i % 4`` of the
Philox4x32-10 output for counter ``(b mod 2³², b >> 32, offset mod 2³², offset >> 32)``,
``b = i // 4``, and key ``(seed mod 2³², seed >> 32)`` (Salmon, Moraes, Dror & Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011; the constants of Random123).

Integer arithmetic is uint32 held in uint32 or uint64 values, never a signed type: Numba
types a uint64 mixed with an int64 as float64, and it widens uint32 results to uint64, so
every word is cast back with ``np.uint32`` (free: a truncation). Maps to floats take the
output ``dtype`` (a Numba ``DType``, an array's ``.dtype``) and compute in it; the test for
float32 is a constant expression, so each dtype compiles only its own branch.

Numba's on-disk CPU cache does not notice edits to this file: clear
``kernels/cpu/__pycache__`` after changing it.
"""

import math
import types

import numpy as np

from . import rules

_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH = np.uint64(32)
# Round multipliers and Weyl key increments (Random123's PHILOX_M4x32_* / PHILOX_W32_*).
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)


def split64(x):
    """``(x mod 2³², x >> 32)`` as uint32: the two words of a 64-bit counter or key."""
    x = np.uint64(x)
    return np.uint32(x & _LOW32), np.uint32(x >> _HIGH)


def mulhilo32(m, x):
    """``(hi, lo)`` uint32 halves of the 64-bit product ``m·x`` (m a uint64 below 2³²)."""
    product = m * np.uint64(x)
    return np.uint32(product >> _HIGH), np.uint32(product & _LOW32)


def add32(a, w):
    """``(a + w) mod 2³²`` for a uint32 ``a`` and a uint64 ``w`` below 2³²."""
    return np.uint32((np.uint64(a) + w) & _LOW32)


def philox_round(c0, c1, c2, c3, k0, k1):
    """One Philox4x32 round: ``(hi(M1·c2) ⊕ c1 ⊕ k0, lo(M1·c2), hi(M0·c0) ⊕ c3 ⊕ k1,
    lo(M0·c0))``."""
    hi0, lo0 = mulhilo32(_M0, c0)
    hi1, lo1 = mulhilo32(_M1, c2)
    return np.uint32(hi1 ^ c1 ^ k0), lo1, np.uint32(hi0 ^ c3 ^ k1), lo0


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter ``(c0, c1, c2, c3)`` under key ``(k0, k1)`` (all uint32):
    10 rounds, the key bumped by the Weyl increments ``(W0, W1)`` between rounds.

    Four uint32 words per call, each uniform on [0, 2³²); 20 32×32→64-bit multiplies.
    Matches Random123's ``philox4x32(ctr, key)`` (known-answer tests in
    ``tests/test_random_kernels.py``).
    """
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    for _ in range(9):
        k0 = add32(k0, _W0)
        k1 = add32(k1, _W1)
        c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    return c0, c1, c2, c3


def stream_block(block, seed, offset):
    """The 4 words of block ``block`` (elements ``4·block … 4·block + 3``) of the stream
    ``(seed, offset)``: the counter is ``(block, offset)``, the key ``seed``, each split
    into two uint32 words, low first."""
    c0, c1 = split64(block)
    c2, c3 = split64(offset)
    k0, k1 = split64(seed)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


def stream_word(index, seed, offset):
    """The word of element ``index`` of the stream ``(seed, offset)``: lane ``index % 4``
    of block ``index // 4`` (a select, not a tuple index: no local memory on CUDA)."""
    w0, w1, w2, w3 = stream_block(np.uint64(index) >> np.uint64(2), seed, offset)
    lane = np.uint64(index) & np.uint64(3)
    if lane == np.uint64(0):
        return w0
    if lane == np.uint64(1):
        return w1
    return w2 if lane == np.uint64(2) else w3


def dropout(x, word, threshold, scale, dtype):
    """``x·scale`` where ``word ≥ threshold`` (an int64 in [0, 2³²]), else an exact 0.

    A select, not ``x·0``: a dropped inf or NaN gives 0. Keep probability
    ``1 − threshold / 2³²``; the integer compare is the same on every backend.
    """
    kept = x * scale  # unconditional, so the compilers make a select, not a branch
    return kept if np.int64(word) >= threshold else dtype.type(0)


def resolution(dtype):
    """``(shift, 2^-bits)``: the word is used as ``word >> shift``, ``bits = 32 − shift``
    significant bits, 24 for float32 (every value exact, none rounds to 1) and 32 for
    float64 (the resolution of one word: multiples of 2⁻³²)."""
    if dtype.type(16777217) == dtype.type(16777216):  # a 24-bit significand: float32
        return np.uint32(8), np.float32(2.0**-24)
    return np.uint32(0), np.float32(2.0**-32)


def uniform01(word, dtype):
    """``u ∈ [0, 1)`` in ``dtype``: ``(word >> 8)·2⁻²⁴`` (float32), ``word·2⁻³²`` (float64)."""
    shift, step = resolution(dtype)
    return dtype.type(word >> shift) * step


def uniform01_open0(word, dtype):
    """``u ∈ (0, 1]`` in ``dtype``: ``((word >> 8) + 1)·2⁻²⁴`` (float32),
    ``(word + 1)·2⁻³²`` (float64); never 0, so its log is finite."""
    shift, step = resolution(dtype)
    return dtype.type(np.uint64(word >> shift) + np.uint64(1)) * step


def uniform(word, low, high, dtype):
    """``low + (high − low)·u``, ``u = uniform01(word)``: in [low, high] (high only when
    the product rounds up)."""
    return low + (high - low) * uniform01(word, dtype)


# Taylor coefficients of sin(a)/a − 1 and cos(a) − 1 as polynomials in a², highest
# degree first: (−1)^k / (2k + 1)! and (−1)^k / (2k)!, k = 8 … 1. On |a| ≤ π/4 the first
# term left out is below 2⁻⁶⁰ (float64 to rounding); float32 evaluates the same terms.
_SIN = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(8, 0, -1))
_COS = tuple((-1) ** k / math.factorial(2 * k) for k in range(8, 0, -1))


def horner(x, coefficients, dtype):
    """``c0·x⁷ + c1·x⁶ + … + c7`` in ``dtype`` (8 coefficients, highest degree first).

    Unrolled by hand: a loop over a tuple compiles to a switch, which stops the CPU
    loops around it from vectorizing.
    """
    c0, c1, c2, c3, c4, c5, c6, c7 = coefficients
    acc = dtype.type(c0)
    acc = acc * x + dtype.type(c1)
    acc = acc * x + dtype.type(c2)
    acc = acc * x + dtype.type(c3)
    acc = acc * x + dtype.type(c4)
    acc = acc * x + dtype.type(c5)
    acc = acc * x + dtype.type(c6)
    return acc * x + dtype.type(c7)


def sincos_turns(u, dtype):
    """``(cos 2πu, sin 2πu)`` for ``u ∈ [0, 1)`` in ``dtype``, with an absolute error
    below one ulp of 1 (measured: 0.8 in float32 and float64).

    Exact reduction to a quarter turn: ``4u = k + f``, ``k`` the nearest integer,
    ``f ∈ [−½, ½)`` (both exact), then Taylor polynomials at ``a = f·π/2 ∈ [−π/4, π/4)``
    and a rotation by ``k`` quarter turns. No libm / libdevice trig: the same arithmetic
    on both backends, and no large-argument reduction path (libdevice's puts float64
    and local memory in the PTX).
    """
    q = u * dtype.type(4)
    k = np.int64(q)
    f = q - dtype.type(k)
    if f >= dtype.type(0.5):
        f -= dtype.type(1)
        k += 1
    a = f * dtype.type(math.pi / 2)
    a2 = a * a
    sin = a + a * a2 * horner(a2, _SIN, dtype)
    cos = dtype.type(1) + a2 * horner(a2, _COS, dtype)
    if k & 1:  # a quarter turn
        cos, sin = -sin, cos
    if k & 2:  # a half turn
        cos, sin = -cos, -sin
    return cos, sin


def normal_pair(word_radius, word_angle, mean, std, dtype):
    """Box-Muller: ``mean + std·(r·cos θ, r·sin θ)`` with ``r = √(−2 ln u1)``,
    ``θ = 2π·u2``, ``u1 = uniform01_open0(word_radius) ∈ (0, 1]``,
    ``u2 = uniform01(word_angle) ∈ [0, 1)``; computed in ``dtype``."""
    r = math.sqrt(dtype.type(-2) * math.log(uniform01_open0(word_radius, dtype)))
    cos, sin = sincos_turns(uniform01(word_angle, dtype), dtype)
    return mean + std * (r * cos), mean + std * (r * sin)


# Dependency order: each function is compiled with those before it bound as its helpers.
_FUNCTIONS = (
    split64,
    mulhilo32,
    add32,
    philox_round,
    philox4x32_10,
    stream_block,
    stream_word,
    dropout,
    resolution,
    uniform01,
    uniform01_open0,
    uniform,
    horner,
    sincos_turns,
    normal_pair,
)


def compiled(jit):
    """Every function of this module compiled by ``jit`` (a plain ``njit`` or a CUDA
    device ``jit``), each calling the compiled versions of the others: a namespace."""
    done = {}
    for fn in _FUNCTIONS:
        done[fn.__name__] = rules.compiled(jit, fn, **done)
    return types.SimpleNamespace(**done)
