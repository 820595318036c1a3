"""The clipping kernels (``kernels/cpu/clip.py``, ``kernels/cuda/clip.py``) against NumPy.

Kernel level: the launchers get flat 1-D arrays directly (no public layer).

* ``norm_partials``: every mode (inf, -inf, p = 1, 2, 3, 0.5), float32 and float64, on
  sizes that straddle the CPU's fixed blocks, against float64 NumPy rows (``max |g|``,
  ``min |g|``, ``Σ|g|^p`` per block: exact for max / min, 1e-12 relative for sums) and
  their combined norm; NaN, ±inf, ±0 and subnormal elements. The CPU rows count is
  ``⌈n / CPU_SUMSQ_BLOCK⌉`` whatever the thread count (fixed blocks), also with blocks of
  7 elements. On CUDA (the simulator with ``SMALL_LAUNCH``: 64-thread blocks, at most 4:
  a 256-element grid stride, 2048 elements per trip of the 8-load loop) the rows match
  NumPy per owning block, and their combination the CPU's to 1e-12 relative.
* ``scale_`` / ``clamp_``: bit for bit against ``x * dtype(coef)`` and ``np.clip`` on both
  backends, NaN kept, signed zeros, subnormals, overflow and ``lo > hi`` included.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from helpers import assert_launches_match_gate, record_launches

from pyopt.kernels import config
from pyopt.kernels.cpu import clip as cpu_clip

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
NORM_TYPES = [math.inf, -math.inf, 1.0, 2.0, 3.0, 0.5]
NORM_IDS = ["inf", "-inf", "1", "2", "3", "0.5"]
CPU_SIZES = [
    0,
    1,
    7,  # shorter than any vector
    1023,  # just under a power of two
    1025,  # just over
    99991,  # prime: two default blocks, the second partial
    1048583,  # prime > 2**20: 17 blocks
]
# Under SMALL_LAUNCH: a partial block (1, 7), several blocks (65), several grid strides
# in one trip (300, 1100) and two trips of the norm's 8-load loop (2500).
CUDA_SIZES = [0, 1, 7, 65, 300, 1100, 2500]
SCALE_COEFS = [0.1, -3.0, 0.0, 1e-30, 1e30]  # inexact in float32, sign, 0·inf, under/overflow
CLAMP_BOUNDS = [(-1.5, 2.25), (0.1, 0.2), (-0.0, 0.0), (2.0, 1.0), (-math.inf, math.inf)]
MANY_THREADS = 2  # what "several threads" means on the 2-core CI machines
SENTINEL = -7.0


def _uint(dtype):
    return {4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]


def _grad(n, dtype, seed=0):
    return (3.0 * np.random.default_rng(seed).standard_normal(n)).astype(dtype)


def _with_specials(n, dtype, seed=0):
    """Normal values with NaN, ±inf, ±0, subnormals and huge values spliced in."""
    x = _grad(n, dtype, seed)
    info = np.finfo(dtype)
    specials = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal, -info.tiny, info.max],
        dtype,
    )
    where = np.random.default_rng(seed + 1).permutation(n)[: len(specials)]
    x[where] = specials[: len(where)]
    return x


def _assert_same_bits(got, want, what=""):
    """Bit for bit, except that any NaN matches any NaN (a GPU writes its canonical NaN)."""
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions")
    uint = _uint(want.dtype)
    np.testing.assert_array_equal(got[~nan].view(uint), want[~nan].view(uint), err_msg=what)


def _expected_rows(grad, norm_type, owner):
    """float64 rows: per block (``owner[k]``: element k's block), ``max |g|``, ``min |g|``
    (NaN propagating) or ``Σ|g|^p``."""
    if grad.size == 0:
        return np.zeros(0)
    order = np.argsort(owner, kind="stable")
    a = np.abs(grad.astype(np.float64))[order]
    starts = np.searchsorted(owner[order], np.arange(owner.max() + 1))
    if norm_type == math.inf:
        return np.maximum.reduceat(a, starts)
    if norm_type == -math.inf:
        return np.minimum.reduceat(a, starts)
    with np.errstate(over="ignore"):  # |g|^p of a huge float64 is inf, in the kernels too
        return np.add.reduceat(a**norm_type, starts)


def _combined(rows, norm_type):
    if norm_type == math.inf:
        return rows.max()
    if norm_type == -math.inf:
        return rows.min()
    return rows.sum() ** (1.0 / norm_type)


def _check_rows(rows, expected, norm_type):
    if abs(norm_type) == math.inf:  # a max or min is one of the elements: exact
        np.testing.assert_array_equal(rows, expected)
    else:
        np.testing.assert_allclose(rows, expected, rtol=1e-12)


# --- CPU norm_partials ------------------------------------------------------------


def _cpu_rows(grad, norm_type):
    blocks = cpu_clip.norm_partials_blocks(grad.size)
    out = np.full(blocks + 2, SENTINEL)
    cpu_clip.norm_partials(grad, out[:blocks], norm_type)
    np.testing.assert_array_equal(out[blocks:], SENTINEL, err_msg="rows past the blocks")
    return out[:blocks]


def _cpu_owner(n):
    return np.arange(n) // int(config.CPU_SUMSQ_BLOCK)


@pytest.fixture(params=["default", "tiny"])
def norm_block(request, monkeypatch):
    """Default blocks, or blocks of 7 elements (many rows, a partial last one)."""
    if request.param == "tiny":
        monkeypatch.setattr(config, "CPU_SUMSQ_BLOCK", 7)
    return int(config.CPU_SUMSQ_BLOCK)


@pytest.mark.parametrize("n", CPU_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_cpu_norm_partials_match_numpy(norm_type, dtype, n, norm_block):
    grad = _grad(n, dtype, seed=n)
    rows = _cpu_rows(grad, norm_type)
    assert rows.shape == (-(-n // norm_block),)  # fixed blocks: no thread count in it
    _check_rows(rows, _expected_rows(grad, norm_type, _cpu_owner(n)), norm_type)
    if n:
        a = np.abs(grad.astype(np.float64))
        want = {math.inf: a.max(), -math.inf: a.min()}.get(norm_type)
        if want is None:
            want = np.sum(a**norm_type) ** (1.0 / norm_type)
        np.testing.assert_allclose(_combined(rows, norm_type), want, rtol=1e-12)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "inf+nan"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_cpu_norm_partials_non_finite(norm_type, dtype, bad, where):
    n = 99991
    grad = _grad(n, dtype)
    k = {"first": 0, "middle": n // 2, "last": n - 1}[where]
    if bad == "inf+nan":  # NaN wins over inf in max, min and sums
        grad[[k, k - 1 if k else 1]] = [np.inf, np.nan]
    else:
        grad[k] = bad
    rows = _cpu_rows(grad, norm_type)
    expected = _expected_rows(grad, norm_type, _cpu_owner(n))
    _check_rows(rows, expected, norm_type)
    block = k // int(config.CPU_SUMSQ_BLOCK)
    if isinstance(bad, str) or np.isnan(bad):
        assert np.isnan(rows[block])
    elif norm_type != -math.inf:
        assert rows[block] == np.inf
    assert np.isfinite(np.delete(rows, block)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_cpu_norm_partials_signed_zeros_and_subnormals(norm_type, dtype):
    info = np.finfo(dtype)
    tiny = [-0.0, 0.0, info.smallest_subnormal, -info.smallest_subnormal * 3, info.tiny]
    for values in (tiny[:2], tiny[2:], tiny, [*tiny, -info.max]):
        grad = np.array(values, dtype)
        rows = _cpu_rows(grad, norm_type)
        expected = _expected_rows(grad, norm_type, _cpu_owner(grad.size))
        _check_rows(rows, expected, norm_type)
        assert not np.signbit(rows).any()


@pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < MANY_THREADS, reason="Numba has a single thread here"
)
@pytest.mark.parametrize("norm_type", [math.inf, 2.0, 0.5], ids=["inf", "2", "0.5"])
def test_cpu_norm_partials_bits_do_not_depend_on_thread_count(norm_type):
    grad = _grad(CPU_SIZES[-1], np.float32)
    threads = numba.get_num_threads()
    try:
        rows = []
        for t in (1, MANY_THREADS):
            numba.set_num_threads(t)
            rows.append(_cpu_rows(grad, norm_type))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(rows[0], rows[1])


# --- CUDA norm_partials -----------------------------------------------------------


def _cuda():
    """``(numba.cuda, kernels.cuda.clip)``; only the CUDA tests import them."""
    from numba import cuda

    from pyopt.kernels.cuda import clip

    return cuda, clip


def _cuda_rows(grad, norm_type, stream=None):
    cuda, clip = _cuda()
    blocks = clip.norm_partials_blocks(grad.size)
    out = cuda.to_device(np.full(blocks + 2, SENTINEL))
    clip.norm_partials(cuda.to_device(grad), out[:blocks], norm_type, stream=stream)
    if stream is not None:
        stream.synchronize()
    rows = out.copy_to_host()
    np.testing.assert_array_equal(rows[blocks:], SENTINEL, err_msg="rows past the blocks")
    return rows[:blocks]


def _cuda_owner(n):
    """Block b owns the elements k with (k mod G·T) // T == b."""
    _, clip = _cuda()
    threads = config.CUDA_THREADS
    return (np.arange(n) % (clip.norm_partials_blocks(n) * threads)) // threads


@pytest.mark.sim
@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_cuda_norm_partials_match_cpu(cuda_backend, norm_type, dtype, n):
    from pyopt.kernels.cuda._launch import resident_blocks

    _, clip = _cuda()
    grad = _grad(n, dtype, seed=n)
    rows = _cuda_rows(grad, norm_type)
    blocks = clip.norm_partials_blocks(n)
    assert rows.shape == (blocks,)
    assert blocks == min(-(-n // config.CUDA_THREADS), resident_blocks())
    _check_rows(rows, _expected_rows(grad, norm_type, _cuda_owner(n)), norm_type)
    if n:
        cpu = _combined(_cpu_rows(grad, norm_type), norm_type)
        np.testing.assert_allclose(_combined(rows, norm_type), cpu, rtol=1e-12)


# The simulator computes inf - inf and NaN compares with NumPy scalars, which warn.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.sim
@pytest.mark.parametrize("bad", [np.nan, np.inf, "inf+nan"], ids=["nan", "inf", "inf+nan"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_cuda_norm_partials_non_finite(cuda_backend, norm_type, bad):
    n = 130  # 3 blocks under SMALL_LAUNCH
    grad = _grad(n, np.float32, seed=3)
    k = n // 2
    if bad == "inf+nan":
        grad[[k, k + 1]] = [np.inf, np.nan]
    else:
        grad[k] = bad
    rows = _cuda_rows(grad, norm_type)
    owner = _cuda_owner(n)
    _check_rows(rows, _expected_rows(grad, norm_type, owner), norm_type)
    assert np.isnan(rows[owner[k]]) == (bad != np.inf)


@pytest.mark.sim
def test_cuda_norm_partials_on_a_stream_are_deterministic(cuda_backend):
    cuda, _ = _cuda()
    grad = _grad(1100, np.float32, seed=5)
    stream = cuda.stream()
    first = _cuda_rows(grad, 2.0, stream=stream)
    np.testing.assert_array_equal(_cuda_rows(grad, 2.0, stream=stream), first)
    np.testing.assert_allclose(first.sum(), np.sum(grad.astype(np.float64) ** 2), rtol=1e-12)


# --- scale_ / clamp_, both backends -----------------------------------------------

ELEMENTWISE_SIZES = {"cpu": CPU_SIZES, "cuda": [0, 1, 7, 65, 300, 1100]}


def _run_in_place(backend, launcher, x, *args):
    """``launcher(x, *args)`` on ``backend``; the result on the host."""
    if backend == "cpu":
        y = x.copy()
        getattr(cpu_clip, launcher)(y, *args)
        return y
    cuda, clip = _cuda()
    y = cuda.to_device(x)
    getattr(clip, launcher)(y, *args)
    return y.copy_to_host()


# The simulator multiplies NumPy scalars, which warn where a GPU silently gives inf / NaN.
@pytest.mark.filterwarnings("ignore:.*encountered in scalar multiply:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("coef", SCALE_COEFS)
def test_scale_is_one_rounded_multiply(backend, coef, dtype):
    for n in ELEMENTWISE_SIZES[backend]:
        x = _with_specials(n, dtype, seed=n)
        with np.errstate(invalid="ignore", over="ignore"):  # 0·inf; 1e30 overflows float32
            want = x * np.dtype(dtype).type(coef)
        _assert_same_bits(_run_in_place(backend, "scale_", x, coef), want, f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bounds", CLAMP_BOUNDS, ids=str)
def test_clamp_matches_np_clip(backend, bounds, dtype):
    lo, hi = (np.dtype(dtype).type(b) for b in bounds)
    for n in ELEMENTWISE_SIZES[backend]:
        x = _with_specials(n, dtype, seed=n)
        want = np.clip(x, lo, hi)
        got = _run_in_place(backend, "clamp_", x, *bounds)
        _assert_same_bits(got, want, f"n={n}")
        assert np.isnan(got).sum() == (n >= 1)  # the one NaN spliced in stays


@pytest.mark.sim
def test_cuda_elementwise_on_a_stream(cuda_backend):
    cuda, clip = _cuda()
    x = _with_specials(300, np.float32, seed=7)
    stream = cuda.stream()
    y = cuda.to_device(x, stream=stream)
    clip.scale_(y, 0.5, stream=stream)
    clip.clamp_(y, -1.0, 1.0, stream=stream)
    stream.synchronize()
    _assert_same_bits(y.copy_to_host(), np.clip(x * np.float32(0.5), -1, 1).astype(np.float32))


# --- empty inputs and the compile-gate registry ------------------------------------


def test_cpu_empty_arrays():
    assert cpu_clip.norm_partials_blocks(0) == 0
    empty = np.zeros(0, np.float32)
    for norm_type in NORM_TYPES:
        cpu_clip.norm_partials(empty, np.zeros(0), norm_type)
    cpu_clip.scale_(empty, 2.0)
    cpu_clip.clamp_(empty, -1.0, 1.0)
    assert empty.shape == (0,)


@pytest.mark.sim
def test_cuda_empty_arrays_launch_nothing(cuda_backend, monkeypatch):
    cuda, clip = _cuda()

    class NoLaunch:
        def __getitem__(self, launch):
            raise AssertionError(f"a kernel was launched for n == 0: {launch}")

    for name in ("_norm_partials_kernel", "_scale_kernel", "_clamp_kernel"):
        monkeypatch.setattr(clip, name, NoLaunch())
    assert clip.norm_partials_blocks(0) == 0
    empty = cuda.device_array(0, np.float32)
    for norm_type in NORM_TYPES:
        clip.norm_partials(empty, cuda.device_array(0, np.float64), norm_type)
    clip.scale_(empty, 2.0)
    clip.clamp_(empty, -1.0, 1.0)


@pytest.mark.sim
def test_cuda_launch_signatures_are_registered(cuda_backend, monkeypatch):
    """Every launch's argument types are the compile gate's row for its kernel (the gate
    compiles exactly those: a Python float or an int flag would run unchecked code)."""
    cuda, clip = _cuda()
    seen = record_launches(monkeypatch, "clip")
    for dtype in DTYPES:
        x = cuda.to_device(np.ones(7, dtype))
        for norm_type in NORM_TYPES:
            clip.norm_partials(x, cuda.device_array(1, np.float64), norm_type)
        clip.scale_(x, 2.0)
        clip.clamp_(x, -1.0, 1)
    for fmt in ("float16", "bfloat16"):  # uint16 bits of the 16-bit formats
        x = cuda.to_device(np.ones(7, np.uint16))
        for norm_type in NORM_TYPES:
            clip.norm_partials(x, cuda.device_array(1, np.float64), norm_type, fmt=fmt)
        clip.scale_(x, 2.0, fmt=fmt)
        clip.clamp_(x, -1.0, 1, fmt=fmt)
    assert_launches_match_gate(seen, "clip")
    assert len(seen) == 3 * 4  # three kernels: float32, float64, float16 and bfloat16
