"""The Philox4x32-10 random kernels (``kernels/philox.py``, ``kernels/{cpu,cuda}/random.py``).

Kernel level: the launchers get flat arrays and Python scalars directly (no public layer).

* The generator: Random123's known-answer vectors, on the CPU-compiled function and on
  the CUDA-compiled one (through a one-thread kernel), and a pure-Python (int arithmetic)
  Philox here that also reproduces them and defines the stream the kernels must follow,
  element by element, at small n.
* dropout: the CPU mask equals the CUDA mask bit for bit (awkward sizes, both dtypes,
  seeds and offsets past 2³², the tail block of n % 4 != 0 writing nothing past n);
  threshold 0 is ``x·scale``, 2³² is all zeros even for inf / NaN; the kept fraction of
  10⁶ elements is within 5σ of 1 − p; masks depend on (seed, offset) and on nothing else
  (not the work units).
* uniform / normal: moments of 10⁶ samples within 5σ, uniform within [low, high] on its
  24- / 32-bit grid, the maps against float64 NumPy, CPU against CUDA (exact or 1 ulp for
  uniform, 1e-6 relative for normal).

CUDA cases run on a real GPU or under the simulator with ``SMALL_LAUNCH`` (64-thread
blocks, 4 blocks: 1025 elements take each thread round the grid-stride loop once more).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from helpers import assert_launches_match_gate, record_launches, to_backend, to_host

from pyopt.kernels import config
from pyopt.kernels.cpu import random as cpu_random

DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 3, 4, 5, 7, 1023, 1025]
# (seed, offset) pairs: zero, past 2³² in one or the other word, and the largest.
STREAMS = [(0, 0), (1, 2**32 + 5), (2**32 + 7, 3), (2**64 - 1, 2**64 - 1), (12345, 678)]
TWO32 = 2**32

# --- a pure-Python Philox4x32-10 ---------------------------------------------------

_MASK = 0xFFFFFFFF

# Random123 tests/kat_vectors: counter[4], key[2] -> philox4x32_10 output[4].
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_MASK,) * 4, (_MASK,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def philox_reference(counter, key):
    """Philox4x32-10 with Python ints (the textbook definition, no NumPy types)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK, (k1 + 0xBB67AE85) & _MASK
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


def stream_reference(n, seed, offset):
    """Words 0 … n − 1 of the stream (seed, offset): element i is lane i % 4 of block
    i // 4, counter (block, offset) and key seed, each as (low, high) 32-bit words."""
    key = (seed & _MASK, seed >> 32)
    words = []
    for block in range((n + 3) // 4):
        counter = (block & _MASK, block >> 32, offset & _MASK, offset >> 32)
        words.extend(philox_reference(counter, key))
    return np.array(words[:n], dtype=np.uint64)


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_reference_philox_matches_random123(counter, key, expected):
    assert philox_reference(counter, key) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_cpu_philox_matches_random123(counter, key, expected):
    words = cpu_random._philox4x32_10(*(np.uint32(v) for v in (*counter, *key)))
    assert tuple(int(w) for w in words) == expected


@functools.cache
def _cuda_kat_kernel():
    from numba import cuda

    from pyopt.kernels.cuda import random as cuda_random

    philox4x32_10 = cuda_random._philox4x32_10

    @cuda.jit
    def kat_kernel(words, out):  # uint32 (6,): counter then key; uint32 (4,) out
        r0, r1, r2, r3 = philox4x32_10(words[0], words[1], words[2], words[3], words[4], words[5])
        out[0], out[1], out[2], out[3] = r0, r1, r2, r3

    return kat_kernel


@pytest.mark.sim
@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_cuda_philox_matches_random123(cuda_backend, counter, key, expected):
    from numba import cuda

    out = cuda.to_device(np.zeros(4, np.uint32))
    _cuda_kat_kernel()[1, 1](cuda.to_device(np.array([*counter, *key], np.uint32)), out)
    assert tuple(int(w) for w in out.copy_to_host()) == expected


@pytest.mark.parametrize(("seed", "offset"), STREAMS)
def test_stream_block_follows_the_contract(seed, offset):
    for block in (0, 1, 2**32 - 1, 2**32 + 3):
        counter = (block & _MASK, block >> 32, offset & _MASK, offset >> 32)
        want = philox_reference(counter, (seed & _MASK, seed >> 32))
        got = cpu_random._stream_block(block, np.uint64(seed), np.uint64(offset))
        assert tuple(int(w) for w in got) == want


# --- helpers ----------------------------------------------------------------------


def _module(backend):
    if backend == "cpu":
        return cpu_random
    from pyopt.kernels.cuda import random as cuda_random

    return cuda_random


def _with_guard(values, backend, guard=4):
    """``values`` on ``backend`` as the first n elements of a buffer with ``guard`` NaN
    elements after them; returns (buffer, view of length n)."""
    buf = np.full(values.size + guard, np.nan, values.dtype)
    buf[: values.size] = values
    dev = to_backend(buf, backend)
    return dev, dev[: values.size]


def _dropout(backend, x, threshold, scale, seed, offset):
    """y = dropout(x) on ``backend``; asserts that nothing past y's n elements moved."""
    _, dx = _with_guard(x, backend)
    ybuf, y = _with_guard(np.zeros_like(x), backend)
    _module(backend).dropout(dx, y, threshold, scale, seed, offset)
    out = to_host(ybuf)
    assert np.isnan(out[x.size :]).all(), "dropout wrote past n"
    return out[: x.size]


def _fill(backend, name, n, dtype, a, b, seed, offset):
    """The fill of ``name`` (uniform_ / normal_) into a fresh length-n array on
    ``backend``; nothing past n."""
    buf, out = _with_guard(np.zeros(n, dtype), backend)
    _module(backend).fill(out, name.rstrip("_"), a, b, seed, offset)
    host = to_host(buf)
    assert np.isnan(host[n:]).all(), f"{name} wrote past n"
    return host[:n]


def _inputs(n, dtype, seed=0):
    return (1.0 + np.random.default_rng(seed).standard_normal(n)).astype(dtype)


# --- dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cpu_dropout_follows_the_reference_stream(dtype, n):
    seed, offset = STREAMS[n % len(STREAMS)]
    threshold, scale = 3 * 2**30, 4.0  # p = 0.75
    x = _inputs(n, dtype, seed=n)
    y = _dropout("cpu", x, threshold, scale, seed, offset)
    keep = stream_reference(n, seed, offset) >= threshold
    np.testing.assert_array_equal(y, np.where(keep, x * dtype(scale), dtype(0)))
    assert y.dtype == dtype


@pytest.mark.sim
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cuda_dropout_equals_cpu_bit_for_bit(cuda_backend, dtype, n):
    seed, offset = STREAMS[(n + 1) % len(STREAMS)]
    x = _inputs(n, dtype, seed=n)
    threshold, scale = 2**31 + 12345, 1.0 / 0.4999
    want = _dropout("cpu", x, threshold, scale, seed, offset)
    got = _dropout(cuda_backend, x, threshold, scale, seed, offset)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.sim
@pytest.mark.parametrize(("seed", "offset"), STREAMS)
def test_cuda_dropout_streams_equal_cpu(cuda_backend, seed, offset):
    x = _inputs(1025, np.float32, seed=seed % 97)
    want = _dropout("cpu", x, 2**31, 2.0, seed, offset)
    keep = stream_reference(1025, seed, offset) >= 2**31
    np.testing.assert_array_equal(want != 0, keep)  # no zero inputs: y != 0 is the mask
    np.testing.assert_array_equal(_dropout(cuda_backend, x, 2**31, 2.0, seed, offset), want)


SPECIALS = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.5, -3.25, 1e30])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 1e30·1e30 in NumPy
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dropout_threshold_zero_keeps_everything(backend, dtype):
    x = np.resize(SPECIALS, 37).astype(dtype)
    scale = 1e30
    y = _dropout(backend, x, 0, scale, 5, 6)
    np.testing.assert_array_equal(y, x * dtype(scale))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dropout_threshold_two32_drops_everything_even_inf_and_nan(backend, dtype):
    x = np.resize(SPECIALS, 37).astype(dtype)
    y = _dropout(backend, x, TWO32, 2.0, 5, 6)
    np.testing.assert_array_equal(y, 0.0)
    assert not np.signbit(y).any()  # an exact +0 (a select), not x·0


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_dropout_kept_fraction_within_5_sigma(p):
    n = 10**6
    threshold = round(p * TWO32)
    y = _dropout("cpu", np.ones(n, np.float32), threshold, 1.0, 2024, 7)
    q = 1.0 - threshold / TWO32
    kept = np.count_nonzero(y)
    assert abs(kept - n * q) < 5 * math.sqrt(n * q * (1 - q)), (kept, n * q)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_dropout_mask_depends_on_seed_and_offset_only(monkeypatch):
    n = 4099
    x = np.ones(n, np.float32)
    mask = _dropout("cpu", x, 2**31, 1.0, 11, 22)
    np.testing.assert_array_equal(_dropout("cpu", x, 2**31, 1.0, 11, 22), mask)
    for other in [(11, 23), (12, 22), (11, 22 + 2**32), (11 + 2**32, 22)]:
        changed = np.mean(_dropout("cpu", x, 2**31, 1.0, *other) != mask)
        assert 0.4 < changed < 0.6, other  # independent masks differ in about half
    for chunk in (4, 8, 1024):  # units of 1, 2 and 256 blocks: the same stream
        monkeypatch.setattr(config, "CPU_RANDOM_CHUNK", chunk)
        np.testing.assert_array_equal(_dropout("cpu", x, 2**31, 1.0, 11, 22), mask)


def test_dropout_of_dy_is_its_own_backward():
    """The backward is the same call on dy: dx = dy·scale exactly where y = x·scale."""
    x, dy = _inputs(1001, np.float32, 1), _inputs(1001, np.float32, 2)
    y = _dropout("cpu", x, 2**30, 4.0 / 3.0, 9, 10)
    dx = _dropout("cpu", dy, 2**30, 4.0 / 3.0, 9, 10)
    np.testing.assert_array_equal(dx != 0, y != 0)


# --- uniform / normal: the maps ----------------------------------------------------


def _uniform01_reference(words, dtype):
    if dtype == np.float32:
        return (words >> 8).astype(np.float32) * np.float32(2.0**-24)
    return words.astype(np.float64) * 2.0**-32


@pytest.mark.parametrize("n", [1, 7, 1025])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cpu_uniform_follows_the_reference_stream(dtype, n):
    seed, offset = STREAMS[n % len(STREAMS)]
    low, high = dtype(-2.5), dtype(4.0)
    got = _fill("cpu", "uniform_", n, dtype, -2.5, 4.0, seed, offset)
    u = _uniform01_reference(stream_reference(n, seed, offset), dtype)
    np.testing.assert_array_equal(got, low + (high - low) * u)  # no FMA on the CPU


def _normal_reference(n, seed, offset, mean, std, dtype):
    """Box-Muller in float64 on the word pairs (w0, w1), (w2, w3) of each block (a
    partial last block still draws its whole pairs)."""
    shift, bits = (8, 24) if dtype == np.float32 else (0, 32)
    words = stream_reference(-(-n // 4) * 4, seed, offset)
    u1 = ((words[0::2] >> shift) + 1).astype(np.float64) * 2.0**-bits
    u2 = (words[1::2] >> shift).astype(np.float64) * 2.0**-bits
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(words.size)
    z[0::2], z[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return mean + std * z[:n]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1025])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cpu_normal_follows_the_reference_stream(dtype, n):
    seed, offset = STREAMS[n % len(STREAMS)]
    got = _fill("cpu", "normal_", n, dtype, 0.5, 2.0, seed, offset)
    want = _normal_reference(n, seed, offset, 0.5, 2.0, dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-14  # relative to max(|z|, 1)·std
    np.testing.assert_allclose(got, want, rtol=tol, atol=2.0 * tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sincos_turns_is_accurate_on_its_grid(dtype):
    bits = 24 if dtype == np.float32 else 32
    words = np.concatenate(
        [
            np.arange(0, 2**bits, 2 ** (bits - 14), dtype=np.uint64),  # every 1/16384 turn
            np.arange(2**bits - 64, 2**bits, dtype=np.uint64),  # just under a full turn
            np.random.default_rng(1).integers(0, 2**bits, 20000, dtype=np.uint64),
        ]
    )
    u = (words.astype(np.float64) * 2.0**-bits).astype(dtype)
    cos, sin = _sincos_turns(u)
    assert cos.dtype == sin.dtype == dtype
    angle = 2 * np.pi * u.astype(np.float64)  # 2π·u rounds by ≤ 7e-16: below the tolerance
    tol = np.finfo(dtype).eps * (1.0 if dtype == np.float32 else 4.0)  # abs, about ±1
    np.testing.assert_allclose(cos, np.cos(angle), rtol=0, atol=tol)
    np.testing.assert_allclose(sin, np.sin(angle), rtol=0, atol=tol)


@functools.cache
def _sincos_kernel():
    from numba import njit

    sincos = cpu_random.PHILOX.sincos_turns

    @njit
    def run(u, cos, sin):
        for i in range(u.size):
            cos[i], sin[i] = sincos(u[i], u.dtype)

    return run


def _sincos_turns(u):
    cos, sin = np.empty_like(u), np.empty_like(u)
    _sincos_kernel()(u, cos, sin)
    return cos, sin


# --- uniform / normal: statistics and range ----------------------------------------


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-3.0, 5.0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_uniform_moments_and_range(dtype, low, high):
    n = 10**6
    x = _fill("cpu", "uniform_", n, dtype, low, high, 77, 1)
    assert x.dtype == dtype and low <= x.min() and x.max() <= high
    width = high - low
    var = width**2 / 12
    mu4 = width**4 / 80  # fourth central moment of a uniform
    x64 = x.astype(np.float64)
    assert abs(x64.mean() - (low + high) / 2) < 5 * math.sqrt(var / n)
    assert abs(x64.var() - var) < 5 * math.sqrt((mu4 - var**2) / n)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_uniform_values_lie_on_their_grid(dtype):
    bits = 24 if dtype == np.float32 else 32
    u = _fill("cpu", "uniform_", 4099, dtype, 0.0, 1.0, 3, 4)
    steps = u.astype(np.float64) * 2.0**bits
    np.testing.assert_array_equal(steps, np.floor(steps))
    assert 0.0 <= u.min() and u.max() < 1.0
    if bits == 32:  # the 8 low bits float32 drops are used: most values are off its grid
        assert np.count_nonzero(steps % 256) > 4000


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (-2.0, 0.25)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_normal_moments(dtype, mean, std):
    n = 10**6
    x = _fill("cpu", "normal_", n, dtype, mean, std, 99, 2**40).astype(np.float64)
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2.0 / n)
    z = (x - mean) / std  # third and fourth moments: 0 and 3 (sd √(6/n), √(96/n))
    assert abs(np.mean(z**3)) < 5 * math.sqrt(15.0 / n)
    assert abs(np.mean(z**4) - 3.0) < 5 * math.sqrt(96.0 / n)
    # Even and odd lanes (cos and sin of one angle) are uncorrelated.
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / math.sqrt(n / 2)


# --- CPU against CUDA for the fills --------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("n", [1, 5, 7, 1025])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cuda_uniform_equals_cpu_to_an_ulp(cuda_backend, dtype, n):
    seed, offset = STREAMS[n % len(STREAMS)]
    want = _fill("cpu", "uniform_", n, dtype, -1.0, 3.0, seed, offset)
    got = _fill(cuda_backend, "uniform_", n, dtype, -1.0, 3.0, seed, offset)
    np.testing.assert_array_max_ulp(got, want, maxulp=1)


@pytest.mark.sim
@pytest.mark.parametrize("n", [1, 3, 6, 1025])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cuda_normal_equals_cpu(cuda_backend, dtype, n):
    seed, offset = STREAMS[(n + 2) % len(STREAMS)]
    want = _fill("cpu", "normal_", n, dtype, 1.0, 3.0, seed, offset)
    got = _fill(cuda_backend, "normal_", n, dtype, 1.0, 3.0, seed, offset)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=3.0 * 1e-6)


# --- launches -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_empty_arrays(backend, dtype):
    module = _module(backend)
    empty = to_backend(np.zeros(0, dtype), backend)
    module.dropout(empty, empty, 2**31, 2.0, 1, 2)
    module.fill(empty, "uniform", 0.0, 1.0, 1, 2)
    module.fill(empty, "normal", 0.0, 1.0, 1, 2)
    assert to_host(empty).size == 0


@pytest.mark.sim
def test_cuda_empty_arrays_launch_nothing(cuda_backend, monkeypatch):
    from numba import cuda

    cuda_random = _module(cuda_backend)

    class NoLaunch:
        def __getitem__(self, launch):
            raise AssertionError(f"a kernel was launched for n == 0: {launch}")

    for name in ("_dropout_kernel", "_uniform_kernel", "_normal_kernel"):
        monkeypatch.setattr(cuda_random, name, NoLaunch())
    empty = cuda.device_array(0, np.float32)
    cuda_random.dropout(empty, empty, 2**31, 2.0, 1, 2)
    cuda_random.fill(empty, "uniform", 0.0, 1.0, 1, 2)
    cuda_random.fill(empty, "normal", 0.0, 1.0, 1, 2)


@pytest.mark.sim
def test_cuda_launchers_on_an_explicit_stream(cuda_backend):
    from numba import cuda

    cuda_random = _module(cuda_backend)
    n, stream = 301, cuda.stream()
    x = _inputs(n, np.float32)
    dx, dy = cuda.to_device(x), cuda.device_array(n, np.float32)
    cuda_random.dropout(dx, dy, 2**31, 2.0, 5, 6, stream=stream)
    out = cuda.device_array(n, np.float32)
    cuda_random.fill(out, "uniform", 0.0, 1.0, 5, 6, stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(dy.copy_to_host(), _dropout("cpu", x, 2**31, 2.0, 5, 6))
    want = _fill("cpu", "uniform_", n, np.float32, 0.0, 1.0, 5, 6)
    np.testing.assert_array_max_ulp(out.copy_to_host(), want, maxulp=1)
    cuda_random.fill(out, "normal", 0.0, 1.0, 5, 6, stream=stream)
    stream.synchronize()
    want = _fill("cpu", "normal_", n, np.float32, 0.0, 1.0, 5, 6)
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.sim
def test_cuda_launch_signatures_are_registered(cuda_backend, monkeypatch):
    """Every launch's argument types match the compile gate's row for its kernel."""
    from numba import cuda

    cuda_random = _module(cuda_backend)
    seen = record_launches(monkeypatch, "random")
    for dtype in DTYPES:
        x = cuda.to_device(np.ones(5, dtype))
        y = cuda.device_array(5, dtype)
        cuda_random.dropout(x, y, 2**31, 2.0, 2**63, 1)
        cuda_random.fill(y, "uniform", 0, 1, 1, 2**63)
        cuda_random.fill(y, "normal", 0.0, 1, 0, 0)
    for fmt in ("float16", "bfloat16"):  # uint16 bits of the 16-bit formats
        x = cuda.to_device(np.ones(5, np.uint16))
        y = cuda.device_array(5, np.uint16)
        cuda_random.dropout(x, y, 2**31, 2.0, 2**63, 1, fmt=fmt)
        cuda_random.fill(y, "uniform", 0, 1, 1, 2**63, fmt=fmt)
        cuda_random.fill(y, "normal", 0.0, 1, 0, 0, fmt=fmt)
    assert_launches_match_gate(seen, "random")
    assert len(seen) == 3 * 4  # three kernels: float32, float64, float16 and bfloat16
