"""The batch-norm launchers of both backends against the float64 NumPy reference.

Kernel level: ``pyopt.kernels.cpu.batchnorm`` and ``pyopt.kernels.cuda.batchnorm`` get
C-contiguous ``(outer, C, inner)`` arrays directly (no public layer): ``inner > 1`` is
NCHW (channel axis 1), ``inner == 1`` channels-last (axis -1). Each test runs on every
backend (the ``backend`` fixture: the CPU, and CUDA on a GPU or the simulator), under a
launch configuration that makes small inputs span many pieces of work:

* CPU: the shipped constants, and ``TINY`` ones (NCHW units of 5 elements; channels-last
  periods of 2 rows when C=3, blocks of 6 periods: a group of four and two single ones;
  one row per period and two per block when C=17), each with one thread range per core
  and with 7 (ranges that split a channel, and empty ranges);
* CUDA: ``SMALL_LAUNCH`` (64-thread blocks, 4 resident blocks, tiny chunks), under which
  each shape of ``SHAPES`` spans the paths its comment names. The simulator runs a
  Python thread per CUDA thread, so CUDA's shapes there are the tiny ones.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from _cudasim import SMALL_LAUNCH
from helpers import CUDASIM, to_host

from pyopt import _reference as reference
from pyopt.kernels import config
from pyopt.kernels.cpu import batchnorm as cpu_batchnorm

DTYPES = [np.float32, np.float64]
MOMENTUM, EPS = 0.1, 1e-5
# Relative to the scale of the expected values (max(1, max |expected|)).
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
TINY = {"CPU_CHUNK": 5, "CPU_PERIOD": 8, "CPU_BLOCK": 40}
SHIPPED = {name: getattr(config, name) for name in (*TINY, *SMALL_LAUNCH)}

# (outer, C, inner): what each exercises (CUDA: under SMALL_LAUNCH, 64 threads, tile 8).
SHAPES = [
    (1, 1, 1),  # one value: n = 1
    (2, 1, 1),  # two rows, one column
    (3, 2, 67),  # NCHW: 2 partials per channel, rows end mid-warp
    (1, 3, 601),  # NCHW: several tiles per thread, prime inner, 1 partial per channel
    (5, 1, 2),  # NCHW: C=1, inner=2 (a row change at every step)
    (2, 7, 3),  # NCHW: C > blocks, most threads idle
    (3, 1, 341),  # NCHW: 1023 per channel, just under a power of two
    (65, 1, 1),  # channels-last: C=1 (bx=1, whole-warp reduction)
    (1025, 1, 1),  # channels-last: 1025 rows, just over a power of two
    (600, 3, 1),  # channels-last: bx=4 x by=16, 4 partials, several tiles per thread
    (37, 40, 1),  # channels-last: bx=32, a part-empty second channel block, 2 tiles
    (2, 33, 1),  # channels-last: one row per block
]
# Too large for the simulator.
LARGE_SHAPES = [
    (4, 1, 1),
    (7, 3, 13),  # primes
    (3, 5, 1023),  # just under a power of two per row
    (2, 3, 1025),  # just over: a row spans two default units
    (1, 1, 10007),  # C=1, one row: the channel is split between threads
    (1031, 17, 1),  # channels-last, prime rows and columns
    (50, 300, 1),  # channels-last, C larger than the tiny period
    (5, 2, 3),  # tiny inner
]
CPU_LAUNCHES = ["shipped", "shipped-7", "tiny", "tiny-7"]
# The simulator computes on NumPy scalars (in its threads, out of np.errstate's reach),
# which warn where the GPU silently makes the NaN a test asks for.
SIMULATOR_NAN = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def cases(shapes, cuda_shapes=None):
    """``(backend, launch, shape)`` parameters: every CPU launch configuration over
    ``shapes``; CUDA over ``cuda_shapes`` (default: ``shapes``), and over ``shapes`` too on
    a real GPU."""
    cuda_shapes = shapes if cuda_shapes is None else cuda_shapes
    if not CUDASIM:
        cuda_shapes = cuda_shapes + [s for s in shapes if s not in cuda_shapes]
    return [
        *(pytest.param("cpu", ln, s, id=f"cpu-{ln}-{s}") for ln in CPU_LAUNCHES for s in shapes),
        *(pytest.param("cuda", "small", s, marks=pytest.mark.sim, id=f"cuda-{s}") for s in cuda_shapes),
    ]  # fmt: skip


def with_launch(shapes, cuda_shapes=None):
    """Parametrize a test over ``cases(shapes, cuda_shapes)``."""
    return pytest.mark.parametrize(
        ("backend", "launch", "shape"), cases(shapes, cuda_shapes), indirect=["backend", "launch"]
    )


@pytest.fixture
def launch(request, backend, monkeypatch):
    """The case's launch configuration: CPU ``shipped`` or ``tiny`` constants, ``-7``
    with 7 thread ranges; CUDA ``SMALL_LAUNCH``."""
    if backend == "cuda":
        request.getfixturevalue("small_launch")
        return request.param
    if request.param.startswith("tiny"):
        for name, value in TINY.items():
            monkeypatch.setattr(config, name, value)
    if request.param.endswith("-7"):
        monkeypatch.setattr(numba, "get_num_threads", lambda: 7)
    return request.param


def kernels(backend):
    if backend == "cpu":
        return cpu_batchnorm
    from pyopt.kernels.cuda import batchnorm

    return batchnorm


def on(backend, arr):
    """A copy of the NumPy array ``arr`` for ``backend``'s launchers."""
    if backend == "cpu":
        return np.array(arr)
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(arr))


def assert_close(actual, expected, dtype, what, tol=None):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = TOL[np.dtype(dtype)] if tol is None else tol
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale, err_msg=what)


def make_inputs(shape, dtype, seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    return {
        "x": (loc + scale * rng.standard_normal(shape)).astype(dtype),
        "dy": rng.standard_normal(shape).astype(dtype),
        "weight": rng.uniform(0.5, 1.5, channels).astype(dtype),
        "bias": rng.standard_normal(channels).astype(dtype),
        "running_mean": rng.standard_normal(channels).astype(dtype),
        "running_var": rng.uniform(0.5, 2.0, channels).astype(dtype),
    }


def forward(backend, inp, training, update_running, stream=None, eps=EPS):
    """Run ``batch_norm_forward`` on copies and NaN-filled outputs; host results by name
    (``y``, ``mean``, ``invstd`` and the running statistics after the call)."""
    x = inp["x"]
    nch = x.shape[1]
    names = ("x", "weight", "bias", "running_mean", "running_var")
    args = {k: on(backend, inp[k]) for k in names}
    out = {
        "y": on(backend, np.full_like(x, np.nan)),
        "mean": on(backend, np.full(nch, np.nan, x.dtype)),
        "invstd": on(backend, np.full(nch, np.nan, x.dtype)),
    }
    kernels(backend).batch_norm_forward(
        *args.values(), *out.values(), training, update_running, MOMENTUM, eps, stream=stream
    )
    if hasattr(stream, "synchronize"):
        stream.synchronize()
    got = {k: to_host(v) for k, v in out.items()}
    got.update(running_mean=to_host(args["running_mean"]), running_var=to_host(args["running_var"]))
    return got


def backward(backend, inp, mean, invstd, training, stream=None):
    """Run ``batch_norm_backward`` on NaN-filled outputs; ``(dx, dweight, dbias)`` on the
    host."""
    x = inp["x"]
    nch = x.shape[1]
    args = [on(backend, a) for a in (inp["dy"], x, inp["weight"], mean, invstd)]
    out = [on(backend, np.full(shape, np.nan, x.dtype)) for shape in (x.shape, nch, nch)]
    kernels(backend).batch_norm_backward(*args, *out, training, stream=stream)
    if hasattr(stream, "synchronize"):
        stream.synchronize()
    return tuple(to_host(a) for a in out)


def check_forward(inp, got, training, update_running):
    dtype = inp["x"].dtype
    with np.errstate(divide="ignore", invalid="ignore"):  # n / (n - 1) at n = 1
        y, mean, invstd, rm, rv = reference.batch_norm(
            inp["x"], inp["weight"], inp["bias"], inp["running_mean"], inp["running_var"],
            training=training, momentum=MOMENTUM, eps=EPS,
        )  # fmt: skip
    assert_close(got["y"], y, dtype, "y")
    assert_close(got["mean"], mean, dtype, "mean")
    # invstd is also relative: 1/sqrt(var + eps) can be large for small variances (from
    # the batch: 10x the tolerance; eval: one rounding of the running variance's).
    assert_close(got["invstd"], invstd, dtype, "invstd")
    np.testing.assert_allclose(got["invstd"], invstd, rtol=TOL[dtype] * (10 if training else 1))
    if update_running:
        assert_close(got["running_mean"], rm, dtype, "running_mean")
        assert_close(got["running_var"], rv, dtype, "running_var")
    else:
        np.testing.assert_array_equal(got["running_mean"], inp["running_mean"])
        np.testing.assert_array_equal(got["running_var"], inp["running_var"])


def check_backward(inp, got, mean, invstd, training):
    dtype = inp["x"].dtype
    expected = reference.batch_norm_backward(
        inp["dy"], inp["x"], inp["weight"], mean, invstd, training=training
    )
    for name, actual, want in zip(("dx", "dweight", "dbias"), got, expected, strict=True):
        assert_close(actual, want, dtype, name)


def saved_statistics(inp, training):
    """``(mean, invstd)`` a forward call saves, from the reference, in ``x.dtype``."""
    dtype = inp["x"].dtype
    if training:
        mean, invstd = reference.batch_norm(inp["x"], training=True, eps=EPS)[1:3]
    else:
        mean = inp["running_mean"].astype(np.float64)
        invstd = 1.0 / np.sqrt(inp["running_var"].astype(np.float64) + EPS)
    return mean.astype(dtype), invstd.astype(dtype)


def sub(inp, channels):
    """The inputs (or results) of ``channels`` only."""
    return {k: (v[:, channels] if v.ndim == 3 else v[channels]) for k, v in inp.items()}


# --- forward ------------------------------------------------------------------------


@with_launch(SHAPES + LARGE_SHAPES, SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_training_forward_and_running_update(backend, launch, shape, dtype):
    """The running variance is updated with the unbiased ``M2 / (n - 1)``."""
    inp = make_inputs(shape, dtype)
    update = shape[0] * shape[2] > 1  # n = 1: see test_one_value_per_channel
    got = forward(backend, inp, training=True, update_running=update)
    check_forward(inp, got, training=True, update_running=update)


@pytest.mark.parametrize(
    "shape", [(2, 3, 11), (13, 3, 1)], ids=["NCHW", "channels-last"]
)  # fmt: skip
def test_training_without_running_update_leaves_them(backend, shape):
    inp = make_inputs(shape, np.float64, seed=3)
    got = forward(backend, inp, training=True, update_running=False)
    check_forward(inp, got, training=True, update_running=False)


@SIMULATOR_NAN
def test_one_value_per_channel(backend):
    """n = 1: var = 0, invstd = 1/sqrt(eps); the unbiased running variance 0 / 0 is NaN,
    as in ``torch.native_batch_norm`` (the public layer rejects n = 1 in training)."""
    shape = (1, 3, 1)
    inp = make_inputs(shape, np.float64)
    got = forward(backend, inp, training=True, update_running=True)
    np.testing.assert_allclose(got["invstd"], 1.0 / np.sqrt(EPS), rtol=1e-12)
    assert_close(got["y"], np.broadcast_to(inp["bias"][None, :, None], shape), np.float64, "y")
    expected_rm = (1 - MOMENTUM) * inp["running_mean"] + MOMENTUM * inp["x"][0, :, 0]
    assert_close(got["running_mean"], expected_rm, np.float64, "running_mean")
    assert np.isnan(got["running_var"]).all()


@with_launch(SHAPES + LARGE_SHAPES, [(3, 2, 7), (23, 3, 1), (1, 1, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_eval_forward_uses_running_stats_and_leaves_them(backend, launch, shape, dtype):
    inp = make_inputs(shape, dtype, seed=2)
    got = forward(backend, inp, training=False, update_running=False)
    check_forward(inp, got, training=False, update_running=False)
    np.testing.assert_array_equal(got["mean"], inp["running_mean"])


# --- backward -----------------------------------------------------------------------


@with_launch(SHAPES + LARGE_SHAPES, SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_training_backward(backend, launch, shape, dtype):
    """``dx = w·invstd·(dy − mean(dy) − xhat·mean(dy·xhat))``, ``dweight``, ``dbias``."""
    inp = make_inputs(shape, dtype)
    mean, invstd = saved_statistics(inp, training=True)
    got = backward(backend, inp, mean, invstd, training=True)
    check_backward(inp, got, mean, invstd, training=True)


@with_launch(SHAPES + LARGE_SHAPES, [(3, 2, 7), (23, 3, 1), (37, 40, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_eval_backward(backend, launch, shape, dtype):
    """``dx = dy·w·invstd``: x is not differentiated through (nor read)."""
    inp = make_inputs(shape, dtype, seed=2)
    mean, invstd = saved_statistics(inp, training=False)
    got = backward(backend, inp, mean, invstd, training=False)
    check_backward(inp, got, mean, invstd, training=False)
    dx = inp["dy"] * (inp["weight"] * invstd)[None, :, None]
    assert_close(got[0], dx, dtype, "eval dx = dy * weight * invstd")


def test_forward_then_backward_agree_with_the_reference(backend):
    """The backward pass fed the forward kernel's own saved statistics."""
    for shape in [(3, 2, 67), (600, 3, 1)]:
        inp = make_inputs(shape, np.float32, seed=6)
        got = forward(backend, inp, training=True, update_running=True)
        grads = backward(backend, inp, got["mean"], got["invstd"], training=True)
        check_backward(inp, grads, got["mean"], got["invstd"], training=True)


# --- numerics -----------------------------------------------------------------------


@SIMULATOR_NAN
@with_launch([(3, 4, 1000), (4, 4, 7), (900, 4, 1), (7, 4, 1)], [(3, 4, 9), (31, 4, 1)])
def test_non_finite_values_stay_in_their_channel(backend, launch, shape):
    inp = make_inputs(shape, np.float32, seed=1)
    inp["x"][shape[0] - 1, 1, shape[2] - 1] = np.nan  # channel 1: NaN in its last element
    inp["x"][0, 2, 0] = np.inf  # channel 2: +inf in its first element
    inp["dy"][shape[0] // 2, 3, 0] = np.nan  # channel 3: NaN gradient
    got = forward(backend, inp, training=True, update_running=True)
    for name in ("mean", "invstd", "running_mean", "running_var"):
        assert np.isnan(got[name][1]), name
    assert np.isnan(got["y"][:, 1]).all()
    assert not np.isfinite(got["y"][:, 2]).any() and not np.isfinite(got["mean"][2])
    good = [0, 3]
    for name, value in sub(got, good).items():
        assert np.isfinite(value).all(), name
    check_forward(sub(inp, good), sub(got, good), training=True, update_running=True)

    dx, dweight, dbias = backward(backend, inp, got["mean"], got["invstd"], training=True)
    for c in (1, 2, 3):
        assert not np.isfinite(dx[:, c]).any(), f"channel {c}"
        assert not np.isfinite(dweight[c]), f"channel {c}"
    assert np.isnan(dbias[3]) and np.isfinite(dbias[[0, 1, 2]]).all(), "dbias = Σ dy: no x"
    clean = sub(inp, [0])
    grads = (dx[:, [0]], dweight[[0]], dbias[[0]])
    check_backward(clean, grads, got["mean"][[0]], got["invstd"][[0]], training=True)


@with_launch([(64, 4, 97), (6000, 4, 1)], [(4, 4, 150), (600, 4, 1)])
def test_float32_variance_is_stable_when_mean_dwarfs_std(backend, launch, shape):
    """Mean 1e4 times the std: float32 variance to 1e-3 relative (E[x²]-E[x]² fails)."""
    rng = np.random.default_rng(3)
    std = np.array([1.0, 1e-2, 3.0, 1e2])
    offset = np.array([1e4, -1e4, 1e4, 1e4]) * std  # |mean| = 1e4 std, both signs
    x = (offset[None, :, None] + std[None, :, None] * rng.standard_normal(shape)).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    inp = {"x": x, "weight": ones, "bias": zeros, "running_mean": zeros, "running_var": ones}
    eps = 1e-30  # so that invstd measures the variance alone
    got = forward(backend, inp, training=True, update_running=False, eps=eps)
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=(0, 2))
    ref_var = x64.var(axis=(0, 2))
    np.testing.assert_allclose(1.0 / got["invstd"].astype(np.float64) ** 2, ref_var, rtol=1e-3)
    np.testing.assert_allclose(got["mean"], ref_mean, rtol=1e-6)
    # The normalized output keeps its precision too: x - mean is formed before scaling.
    ref_y = (x64 - ref_mean[None, :, None]) / np.sqrt(ref_var)[None, :, None]
    np.testing.assert_allclose(got["y"], ref_y, rtol=0, atol=2e-3)
    assert abs(float(got["y"].astype(np.float64).std()) - 1.0) < 1e-3


@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
def test_constant_channel_has_zero_variance(backend, layout):
    rows = 1000 if backend == "cpu" else 40
    x = np.full((3, 2, rows), 0.1, np.float32)
    x[:, 1] = np.random.default_rng(0).standard_normal((3, rows))
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(3 * rows, 2, 1)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    inp = {"x": x, "weight": ones, "bias": zeros, "running_mean": zeros, "running_var": ones}
    got = forward(backend, inp, training=True, update_running=True)
    np.testing.assert_allclose(got["mean"][0], 0.1, rtol=1e-6)
    np.testing.assert_allclose(got["invstd"][0], 1.0 / np.sqrt(EPS), rtol=1e-3)
    assert np.all(np.abs(got["y"][:, 0]) < 1e-2)


def test_rounded_negative_m2_gives_zero_variance(backend):
    """``Σd² - (Σd)²/n`` can round below zero for (near-)constant data: the finalize step
    (``rules.batch_norm_statistics``) clamps it, so var = 0."""
    partials = np.array([[[3.0], [5.0]], [[0.5], [0.5]], [[-1e-12], [0.0]]])  # (3, P=2, C=1)
    rm, rv = np.zeros(1), np.ones(1)
    mean, invstd = np.empty(1), np.empty(1)
    if backend == "cpu":
        ones, params = np.ones(1), np.empty((4, 1))
        cpu_batchnorm._statistics(
            partials, ones, ones, rm, rv, mean, invstd, params, True, True, 0.5, EPS
        )
    else:
        from pyopt.kernels.cuda import batchnorm

        dev = [on(backend, a) for a in (partials, rm, rv, mean, invstd)]
        grid, block = batchnorm._finalize_grid(1)
        batchnorm._bn_stats_finalize_kernel[grid, block](*dev, True, True, 0.5, EPS)
        rm, rv, mean, invstd = (to_host(a) for a in dev[1:])
    assert mean[0] == 0.5
    assert invstd[0] == 1.0 / np.sqrt(EPS)
    assert rm[0] == 0.25 and rv[0] == 0.5


@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
def test_float32_outlier_where_the_provisional_mean_starts(layout):
    """The first value of a CPU channel seeds the provisional mean; an outlier there must
    not cost precision (the chunk is passed again around its own mean)."""
    rng = np.random.default_rng(4)
    if layout == "NCHW":
        x = rng.standard_normal((2, 3, 4096)).astype(np.float32)
        x[0, :, 0] = 300.0  # first value of every channel
        x[1, :, 0] = -300.0  # the first value of the other thread's range (channel 1)
    else:
        x = rng.standard_normal((8192, 3, 1)).astype(np.float32)
        x[0] = 300.0  # first row of thread 0
        x[4096] = -300.0  # first row of thread 1
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    inp = {"x": x, "weight": ones, "bias": zeros, "running_mean": zeros, "running_var": ones}
    got = forward("cpu", inp, training=True, update_running=False)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(got["mean"], x64.mean(axis=(0, 2)), rtol=0, atol=1e-6)
    ref_var = x64.var(axis=(0, 2))
    np.testing.assert_allclose(
        1.0 / got["invstd"].astype(np.float64) ** 2 - EPS, ref_var, rtol=1e-5
    )


@pytest.mark.parametrize("shape", [(16, 8, 3136), (16384, 24, 1)], ids=["NCHW", "channels-last"])
def test_cpu_float32_matches_float64_on_well_conditioned_data(shape):
    """Large enough for several chunks, blocks and partials per channel at the defaults."""
    inp = make_inputs(shape, np.float32, seed=2)
    inp64 = {k: v.astype(np.float64) for k, v in inp.items()}
    got = forward("cpu", inp, training=True, update_running=True)
    got64 = forward("cpu", inp64, training=True, update_running=True)
    np.testing.assert_allclose(got["mean"], got64["mean"], rtol=1e-6)
    np.testing.assert_allclose(got["invstd"], got64["invstd"], rtol=1e-5)
    assert_close(got["y"], got64["y"], np.float32, "y")
    dx, dweight, dbias = backward("cpu", inp, got["mean"], got["invstd"], training=True)
    mean64, invstd64 = (got[k].astype(np.float64) for k in ("mean", "invstd"))
    dx64, dweight64, dbias64 = backward("cpu", inp64, mean64, invstd64, training=True)
    assert_close(dx, dx64, np.float32, "dx")
    np.testing.assert_allclose(dweight, dweight64, rtol=1e-5, atol=1e-5 * np.abs(dweight64).max())
    np.testing.assert_allclose(dbias, dbias64, rtol=1e-5, atol=1e-5 * np.abs(dbias64).max())


# --- launchers ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 5), (9, 5, 1)], ids=["NCHW", "channels-last"])
def test_shipped_configuration_on_an_explicit_stream(backend, shape, monkeypatch):
    """The shipped launch constants (CUDA: 256-thread blocks), on a stream of our own;
    the CPU launchers take ``stream`` too, and ignore it."""
    for name, value in SHIPPED.items():
        monkeypatch.setattr(config, name, value)
    if backend == "cpu":
        streams = (object(), 0)
    else:
        from numba import cuda

        streams = (cuda.stream(), cuda.stream())
    inp = make_inputs(shape, np.float32, seed=1)
    got = forward(backend, inp, training=True, update_running=True, stream=streams[0])
    check_forward(inp, got, training=True, update_running=True)
    grads = backward(backend, inp, got["mean"], got["invstd"], training=True, stream=streams[1])
    check_backward(inp, grads, got["mean"], got["invstd"], training=True)


def test_cuda_launch_signatures_are_registered(cuda_backend, monkeypatch):
    """Every launch's argument types match the compile gate's registry row: the gate
    compiles exactly the registered signatures, so a launcher passing other types would
    run code the gate never checked."""
    from helpers import assert_launches_match_gate, record_launches

    seen = record_launches(monkeypatch, "batchnorm")
    for dtype in DTYPES:
        for shape in [(2, 3, 5), (7, 3, 1)]:
            inp = make_inputs(shape, dtype)
            got = forward(cuda_backend, inp, training=True, update_running=True)
            forward(cuda_backend, inp, training=False, update_running=False)
            backward(cuda_backend, inp, got["mean"], got["invstd"], training=True)
    # The 16-bit launchers (through the public layer): uint16 data, float32 vectors.
    import ml_dtypes
    from helpers import to_backend

    from pyopt.functional import batch_norm, batch_norm_backward

    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = to_backend(np.linspace(-2, 2, 30).reshape(2, 3, 5).astype(dtype), cuda_backend)
        stats = {"running_mean": to_backend(np.zeros(3, np.float32), cuda_backend)}
        stats["running_var"] = to_backend(np.ones(3, np.float32), cuda_backend)
        _, mean, invstd = batch_norm(x, training=True, **stats)
        batch_norm(x, training=False, **stats)
        batch_norm_backward(x, x, weight=None, mean=mean, invstd=invstd)
    assert_launches_match_gate(seen, "batchnorm")
