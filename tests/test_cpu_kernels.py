"""The CPU batch-norm launchers against the float64 NumPy reference.

Kernel level: the launchers get C-contiguous ``(outer, C, inner)`` NumPy arrays directly
(no public layer). Each case runs under the default configuration and under a tiny one
(``TINY``) that makes small inputs span many NCHW units, channels-last periods and
statistics blocks, and with the work cut into more thread ranges than this machine has
cores (ranges that split a channel, and empty ranges).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from pyopt import _reference as reference
from pyopt.kernels import config
from pyopt.kernels.cpu import batchnorm

DTYPES = [np.float32, np.float64]
MOMENTUM, EPS = 0.1, 1e-5
# Relative to the scale of the expected values (max(1, max |expected|)).
TOL = {np.float32: 1e-5, np.float64: 1e-12}
# Under TINY: NCHW units of 5 elements; channels-last periods of 2 rows when C=3
# (R * C <= 8) and blocks of 6 periods (one group of four, two single ones), one row
# per period and two per block when C=17.
TINY = {"CPU_CHUNK": 5, "CPU_PERIOD": 8, "CPU_BLOCK": 40}

SHAPES = [
    (1, 1, 1),  # one value: training only without running stats (n = 1)
    (2, 1, 1),  # two rows, one column
    (4, 1, 1),
    (7, 3, 13),  # primes
    (3, 5, 1023),  # just under a power of two per row
    (2, 3, 1025),  # just over: a row spans two default units
    (1, 1, 10007),  # C=1, one row: the channel is split between threads
    (1031, 17, 1),  # channels-last, prime rows and columns
    (50, 300, 1),  # channels-last, C larger than the tiny period
    (5, 2, 3),  # tiny inner
]


@pytest.fixture(params=["default", "tiny"])
def launch(request, monkeypatch):
    """Default launch constants, or tiny ones (many units, periods and blocks)."""
    if request.param == "tiny":
        for name, value in TINY.items():
            monkeypatch.setattr(config, name, value)
    return request.param


@pytest.fixture(params=[None, 7])
def parts(request, monkeypatch):
    """One thread range per core, or 7 ranges (as on a 7-core machine)."""
    if request.param is not None:
        monkeypatch.setattr(numba, "get_num_threads", lambda: request.param)
    return request.param


def assert_close(actual, expected, dtype, what, tol=None):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = TOL[dtype] if tol is None else tol
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale, err_msg=what)


def make_inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    return x, dy, weight, bias, running_mean, running_var


def forward(x, weight, bias, running_mean, running_var, training, update_running):
    """Run the launcher on fresh outputs; returns ``(y, mean, invstd)``."""
    channels = x.shape[1]
    y = np.full_like(x, np.nan)
    mean = np.full(channels, np.nan, x.dtype)
    invstd = np.full(channels, np.nan, x.dtype)
    batchnorm.batch_norm_forward(
        x, weight, bias, running_mean, running_var, y, mean, invstd,
        training, update_running, MOMENTUM, EPS,
    )  # fmt: skip
    return y, mean, invstd


def backward(dy, x, weight, mean, invstd, training):
    """Run the launcher on fresh outputs; returns ``(dx, dweight, dbias)``."""
    channels = x.shape[1]
    dx = np.full_like(x, np.nan)
    dweight = np.full(channels, np.nan, x.dtype)
    dbias = np.full(channels, np.nan, x.dtype)
    batchnorm.batch_norm_backward(dy, x, weight, mean, invstd, dx, dweight, dbias, training)
    return dx, dweight, dbias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_training_forward_and_running_update(shape, dtype, launch, parts):
    x, _, w, b, rm, rv = make_inputs(shape, dtype)
    n = shape[0] * shape[2]
    update = n > 1  # the caller never asks for the unbiased update when n == 1
    rm_k, rv_k = rm.copy(), rv.copy()
    y, mean, invstd = forward(x, w, b, rm_k, rv_k, True, update)
    with np.errstate(divide="ignore", invalid="ignore"):  # n / (n - 1) at n = 1
        ref_y, ref_mean, ref_invstd, ref_rm, ref_rv = reference.batch_norm(
            x, w, b, rm, rv, training=True, momentum=MOMENTUM, eps=EPS
        )
    assert_close(y, ref_y, dtype, "y")
    assert_close(mean, ref_mean, dtype, "mean")
    # invstd is relative: 1/sqrt(var + eps) can be large for small variances.
    np.testing.assert_allclose(invstd, ref_invstd, rtol=TOL[dtype] * 10)
    if update:
        assert_close(rm_k, ref_rm, dtype, "running_mean")
        assert_close(rv_k, ref_rv, dtype, "running_var")
    else:
        np.testing.assert_array_equal(rm_k, rm)
        np.testing.assert_array_equal(rv_k, rv)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_eval_forward_uses_running_stats_and_leaves_them(shape, dtype, launch):
    x, _, w, b, rm, rv = make_inputs(shape, dtype)
    rm_k, rv_k = rm.copy(), rv.copy()
    y, mean, invstd = forward(x, w, b, rm_k, rv_k, False, False)
    ref_y, ref_mean, ref_invstd, _, _ = reference.batch_norm(
        x, w, b, rm, rv, training=False, eps=EPS
    )
    assert_close(y, ref_y, dtype, "y")
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_array_equal(mean, ref_mean.astype(dtype))
    np.testing.assert_allclose(invstd, ref_invstd, rtol=TOL[dtype])
    np.testing.assert_array_equal(rm_k, rm)
    np.testing.assert_array_equal(rv_k, rv)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_backward(shape, dtype, training, launch, parts):
    x, dy, w, _, rm, rv = make_inputs(shape, dtype)
    if training:
        _, mean, invstd = reference.batch_norm(x, training=True, eps=EPS)[:3]
    else:
        mean, invstd = rm.astype(np.float64), 1.0 / np.sqrt(rv.astype(np.float64) + EPS)
    mean, invstd = mean.astype(dtype), invstd.astype(dtype)
    dx, dweight, dbias = backward(dy, x, w, mean, invstd, training)
    ref_dx, ref_dw, ref_db = reference.batch_norm_backward(
        dy, x, w, mean, invstd, training=training
    )
    assert_close(dx, ref_dx, dtype, "dx")
    assert_close(dweight, ref_dw, dtype, "dweight")
    assert_close(dbias, ref_db, dtype, "dbias")


@pytest.mark.parametrize("shape", [(64, 4, 97), (6000, 4, 1)], ids=["NCHW", "channels-last"])
@pytest.mark.parametrize("config_name", ["default", "tiny"])
def test_float32_variance_is_stable_when_mean_dwarfs_std(shape, config_name, monkeypatch):
    """Mean 1e4 times the std: float32 variance to 1e-3 relative (E[x²]-E[x]² fails)."""
    if config_name == "tiny":
        for name, value in TINY.items():
            monkeypatch.setattr(config, name, value)
    rng = np.random.default_rng(3)
    std = np.array([1.0, 1e-2, 3.0, 1e2])
    offset = np.array([1e4, -1e4, 1e4, 1e4]) * std  # |mean| = 1e4 std, both signs
    x = (offset[None, :, None] + std[None, :, None] * rng.standard_normal(shape)).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    eps = 1e-30  # so that invstd measures the variance alone
    y = np.empty_like(x)
    mean, invstd = np.empty(4, np.float32), np.empty(4, np.float32)
    batchnorm.batch_norm_forward(
        x, ones, zeros, zeros.copy(), ones.copy(), y, mean, invstd, True, False, 0.1, eps
    )
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=(0, 2))
    ref_var = x64.var(axis=(0, 2))
    np.testing.assert_allclose(1.0 / invstd.astype(np.float64) ** 2, ref_var, rtol=1e-3)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    # The normalized output keeps its precision too: x - mean is formed before scaling.
    ref_y = (x64 - ref_mean[None, :, None]) / np.sqrt(ref_var)[None, :, None]
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=2e-3)
    assert abs(float(y.astype(np.float64).std()) - 1.0) < 1e-3


@pytest.mark.parametrize("shape", [(3, 4, 1000), (4, 4, 7), (900, 4, 1), (7, 4, 1)], ids=str)
@pytest.mark.parametrize("config_name", ["default", "tiny"])
def test_non_finite_values_stay_in_their_channel(shape, config_name, monkeypatch):
    if config_name == "tiny":
        for name, value in TINY.items():
            monkeypatch.setattr(config, name, value)
    dtype = np.float32
    x, dy, w, b, rm, rv = make_inputs(shape, dtype, seed=1)
    x[shape[0] - 1, 1, shape[2] - 1] = np.nan  # channel 1: NaN in its last element
    x[0, 2, 0] = np.inf  # channel 2: +inf in its first element
    dy[shape[0] // 2, 3, 0] = np.nan  # channel 3: NaN gradient
    rm_k, rv_k = rm.copy(), rv.copy()
    y, mean, invstd = forward(x, w, b, rm_k, rv_k, True, True)
    good = [0, 3]
    assert np.isnan(y[:, 1]).all() and np.isnan(mean[1]) and np.isnan(rv_k[1])
    assert not np.isfinite(y[:, 2]).any() and not np.isfinite(mean[2])
    assert np.isfinite(y[:, good]).all() and np.isfinite(mean[good]).all()
    assert np.isfinite(invstd[good]).all() and np.isfinite(rm_k[good]).all()
    assert np.isfinite(rv_k[good]).all()
    ref_y, ref_mean, _, ref_rm, ref_rv = reference.batch_norm(
        x[:, good], w[good], b[good], rm[good], rv[good], momentum=MOMENTUM, eps=EPS
    )
    assert_close(y[:, good], ref_y, dtype, "y of the finite channels")
    assert_close(mean[good], ref_mean, dtype, "mean of the finite channels")
    assert_close(rm_k[good], ref_rm, dtype, "running_mean of the finite channels")
    assert_close(rv_k[good], ref_rv, dtype, "running_var of the finite channels")

    dx, dweight, dbias = backward(dy, x, w, mean, invstd, True)
    for c in (1, 2, 3):
        assert not np.isfinite(dx[:, c]).any(), f"channel {c}"
        assert not np.isfinite(dweight[c]), f"channel {c}"
    assert np.isnan(dbias[3]) and np.isfinite(dbias[[0, 1, 2]]).all()
    ref_dx, ref_dw, ref_db = reference.batch_norm_backward(
        dy[:, [0]], x[:, [0]], w[[0]], mean[[0]], invstd[[0]]
    )
    assert_close(dx[:, [0]], ref_dx, dtype, "dx of the finite channel")
    assert_close(dweight[[0]], ref_dw, dtype, "dweight of the finite channel")
    assert_close(dbias[[0]], ref_db, dtype, "dbias of the finite channel")


@pytest.mark.parametrize("shape", [(16, 8, 3136), (16384, 24, 1)], ids=["NCHW", "channels-last"])
def test_float32_matches_float64_on_well_conditioned_data(shape):
    """Large enough for several chunks, blocks and partials per channel at the defaults."""
    x, dy, w, b, rm, rv = make_inputs(shape, np.float32, seed=2)
    y, mean, invstd = forward(x, w, b, rm.copy(), rv.copy(), True, True)
    y64, mean64, invstd64 = forward(*(a.astype(np.float64) for a in (x, w, b, rm, rv)), True, True)
    np.testing.assert_allclose(mean, mean64, rtol=1e-6)
    np.testing.assert_allclose(invstd, invstd64, rtol=1e-5)
    assert_close(y, y64, np.float32, "y")
    dx, dweight, dbias = backward(dy, x, w, mean, invstd, True)
    dx64, dweight64, dbias64 = backward(
        *(a.astype(np.float64) for a in (dy, x, w, mean, invstd)), True
    )
    assert_close(dx, dx64, np.float32, "dx")
    np.testing.assert_allclose(dweight, dweight64, rtol=1e-5, atol=1e-5 * np.abs(dweight64).max())
    np.testing.assert_allclose(dbias, dbias64, rtol=1e-5, atol=1e-5 * np.abs(dbias64).max())


def test_constant_channel_has_zero_variance():
    x = np.full((3, 2, 1000), 0.1, np.float32)
    x[:, 1] = np.random.default_rng(0).standard_normal((3, 1000))
    for arr in (x, np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(3000, 2, 1)):
        ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
        y, mean, invstd = forward(arr, ones, zeros, zeros.copy(), ones.copy(), True, True)
        np.testing.assert_allclose(mean[0], 0.1, rtol=1e-6)
        np.testing.assert_allclose(invstd[0], 1.0 / np.sqrt(EPS), rtol=1e-3)
        assert np.all(np.abs(y[:, 0]) < 1e-2)


def test_rounded_negative_m2_gives_zero_variance():
    """``Σd² - (Σd)²/n`` can round below zero for (near-)constant data: var clamps to 0."""
    count = np.array([[3.0], [5.0]])
    mu = np.array([[0.5], [0.5]])
    m2 = np.array([[-1e-12], [0.0]])
    rm, rv = np.zeros(1), np.ones(1)
    mean, invstd = np.empty(1), np.empty(1)
    batchnorm._finalize_statistics(count, mu, m2, rm, rv, mean, invstd, True, 0.5, EPS)
    assert mean[0] == 0.5
    assert invstd[0] == 1.0 / np.sqrt(EPS)
    assert rm[0] == 0.25 and rv[0] == 0.5


@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
def test_float32_outlier_where_the_provisional_mean_starts(layout):
    """The first value of a channel seeds the provisional mean; an outlier there must not
    cost precision (the chunk is passed again around its own mean)."""
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
    _, mean, invstd = forward(x, ones, zeros, zeros.copy(), ones.copy(), True, False)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=0, atol=1e-6)
    ref_var = x64.var(axis=(0, 2))
    np.testing.assert_allclose(1.0 / invstd.astype(np.float64) ** 2 - EPS, ref_var, rtol=1e-5)


def test_stream_argument_is_accepted_and_ignored():
    x, dy, w, b, rm, rv = make_inputs((2, 3, 4), np.float64)
    y, mean, invstd = np.empty_like(x), np.empty(3), np.empty(3)
    batchnorm.batch_norm_forward(
        x, w, b, rm, rv, y, mean, invstd, True, True, MOMENTUM, EPS, stream=object()
    )
    dx, dw, db = np.empty_like(x), np.empty(3), np.empty(3)
    batchnorm.batch_norm_backward(dy, x, w, mean, invstd, dx, dw, db, True, stream=0)
    ref = reference.batch_norm_backward(dy, x, w, mean, invstd)
    assert_close(dx, ref[0], np.float64, "dx")
