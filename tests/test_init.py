"""pyopt.init: torch's gain table and fans, sample moments against the formulas, seeding,
CPU/CUDA agreement, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import to_backend, to_host

import pyopt
from pyopt import _reference as reference
from pyopt import init

torch = pytest.importorskip("torch", reason="torch is needed for the gain/fan parity tests")

GAINS = [
    ("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None),
    ("conv_transpose1d", None), ("conv_transpose2d", None), ("conv_transpose3d", None),
    ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
    ("leaky_relu", 0.2), ("leaky_relu", 3), ("selu", None),
]  # fmt: skip


@pytest.mark.parametrize("nonlinearity, param", GAINS)
def test_calculate_gain_matches_torch(nonlinearity, param):
    assert init.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(
        nonlinearity, param
    )


@pytest.mark.parametrize(
    "args, match",
    [(("gelu",), "Unsupported nonlinearity"), (("leaky_relu", "x"), "not a valid number")],
)
def test_calculate_gain_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        init.calculate_gain(*args)


SHAPES = [(7, 3), (1, 1), (64, 32, 3, 3), (5, 4, 3, 2, 7), (10, 1023)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_torch(shape):
    want = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init._fans(np.empty(shape)) == want == reference.fans(shape)


# (initializer, kwargs, shape): every function, every mode and nonlinearity branch.
MOMENT_CASES = [
    ("uniform_", dict(a=-2.0, b=3.0), (512, 300)),
    ("normal_", dict(mean=1.5, std=0.25), (600, 301)),
    ("xavier_uniform_", dict(), (512, 384)),
    ("xavier_uniform_", dict(gain=2.0), (64, 32, 5, 5)),
    ("xavier_normal_", dict(gain=0.5), (512, 384)),
    ("kaiming_uniform_", dict(), (256, 769)),
    ("kaiming_uniform_", dict(a=math.sqrt(5)), (256, 769)),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu"), (128, 64, 3, 3)),
    ("kaiming_normal_", dict(nonlinearity="relu"), (1024, 257)),
    ("kaiming_normal_", dict(mode="fan_out", nonlinearity="tanh"), (96, 48, 7, 7)),
    ("lecun_normal_", dict(), (300, 1025)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs, shape", MOMENT_CASES)
def test_sample_moments_match_formulas(name, kwargs, shape, dtype):
    w = getattr(init, name)(np.empty(shape, dtype), **kwargs, seed=11)
    assert w.dtype == dtype and w.shape == shape
    kind, mean, std, bound = reference.init_distribution(name, shape, **kwargs)
    n = w.size
    mean_tol, var_tol = reference.moment_bounds(kind, std, n)
    sample = w.astype(np.float64)
    assert abs(sample.mean() - mean) < mean_tol, (sample.mean(), mean)
    assert abs(sample.var() - std**2) < var_tol, (sample.var(), std**2)
    if bound is not None:
        assert sample.min() >= bound[0] and sample.max() <= bound[1]
        # the whole range is used: both ends within 0.1% of the bounds
        assert sample.min() < bound[0] + 1e-3 * (bound[1] - bound[0])
        assert sample.max() > bound[1] - 1e-3 * (bound[1] - bound[0])


def test_normal_is_gaussian_in_the_tails():
    """Box-Muller output: the fraction beyond 1, 2 and 3 std matches the normal law."""
    w = init.normal_(np.empty(2_000_000), seed=5)
    for k, p in ((1, 0.31731), (2, 0.04550), (3, 0.0026998)):
        frac = np.mean(np.abs(w) > k)
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / w.size), (k, frac)


def test_returns_the_array_and_fills_non_contiguous_views():
    base = np.zeros((40, 60), np.float32)
    view = base[:, ::2].T  # (30, 40), strided
    out = init.uniform_(view, 1.0, 2.0, seed=3)
    assert out is view
    assert (base[:, ::2] >= 1.0).all() and (base[:, 1::2] == 0.0).all()
    # the values are those a contiguous array of the same shape gets (C order)
    np.testing.assert_array_equal(view, init.uniform_(np.empty((30, 40), np.float32), 1, 2, seed=3))


def test_seeding():
    a = init.normal_(np.empty(1000), seed=1)
    assert np.array_equal(a, init.normal_(np.empty(1000), seed=1))
    assert not np.array_equal(a, init.normal_(np.empty(1000), seed=2))
    big = init.normal_(np.empty(1000), seed=2**64 - 1)
    assert np.isfinite(big).all() and not np.array_equal(big, a)
    pyopt.manual_seed(123)
    first = [init.uniform_(np.empty(50)) for _ in range(2)]
    assert not np.array_equal(first[0], first[1])  # each call takes a new offset
    pyopt.manual_seed(123)
    again = [init.uniform_(np.empty(50)) for _ in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    pyopt.manual_seed(-1)  # wraps like torch
    c = init.uniform_(np.empty(50))
    pyopt.manual_seed(2**64 - 1)
    assert np.array_equal(c, init.uniform_(np.empty(50)))


def test_float64_uses_the_same_stream():
    """float32 and float64 fills of one key agree to float32 rounding (same words)."""
    a = init.uniform_(np.empty(1001, np.float32), seed=9)
    b = init.uniform_(np.empty(1001, np.float64), seed=9)
    np.testing.assert_allclose(a, b, rtol=0, atol=2**-24)


@pytest.mark.sim
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 300])
def test_cuda_fills_match_cpu(cuda_backend, dtype, n):
    for fn, kwargs in ((init.uniform_, dict(a=-1.0, b=2.0)), (init.normal_, dict(std=3.0))):
        host = fn(np.empty(n, dtype), **kwargs, seed=2**40 + 3)
        dev = to_backend(np.zeros(n, dtype), cuda_backend)
        assert fn(dev, **kwargs, seed=2**40 + 3) is dev
        np.testing.assert_allclose(
            to_host(dev), host, rtol=4e-7 if dtype == np.float32 else 1e-15, atol=1e-6
        )
    dev = to_backend(np.zeros((4, 3, 2, 2), dtype), cuda_backend)
    init.kaiming_normal_(dev, nonlinearity="relu", seed=1)
    np.testing.assert_allclose(
        to_host(dev),
        init.kaiming_normal_(np.empty((4, 3, 2, 2), dtype), nonlinearity="relu", seed=1),
        rtol=1e-6,
        atol=1e-6,
    )
    init.ones_(dev)
    assert (to_host(dev) == 1).all()


def test_constant_zeros_ones():
    w = np.full((3, 4), 7.0, np.float32)
    assert init.zeros_(w) is w and (w == 0).all()
    assert (init.ones_(w) == 1).all()
    assert (init.constant_(w, -2.5) == -2.5).all()


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: init.xavier_uniform_(np.empty(5)), ValueError, "fewer than 2 dimensions"),
        (lambda: init.kaiming_normal_(np.empty((3, 3)), mode="fan"), ValueError, "mode 'fan'"),
        (lambda: init.kaiming_normal_(np.empty((3, 3)), nonlinearity="gelu"), ValueError, "gelu"),
        (lambda: init.normal_(np.empty(3), std=-1.0), ValueError, "std"),
        (lambda: init.normal_(np.empty(3, np.int32)), TypeError, "tensor must be float32"),
        (lambda: init.normal_([1.0, 2.0]), TypeError, "tensor must be a NumPy array"),
        (lambda: init.normal_(np.empty(3), seed=-1), ValueError, "seed"),
        (lambda: init.normal_(np.empty(3), seed=1.5), TypeError, "seed"),
        (lambda: init.uniform_(np.empty(3), a=float("nan")), ValueError, "a must not be NaN"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_array_is_rejected_untouched():
    w = np.zeros(4)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.normal_(w, seed=0)
    assert (w == 0).all()


@pytest.mark.parametrize(
    "name",
    ["xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "lecun_normal_"],
)
def test_zero_element_warning_names_the_callers_line(name):
    w = np.empty((3, 0))
    with pytest.warns(UserWarning, match="zero-element") as record:
        assert getattr(init, name)(w) is w
    assert [r.filename for r in record] == [__file__]


def test_zero_element_kaiming_is_a_warned_no_op():
    w = np.empty((0, 3))
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_uniform_(w) is w
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert init.uniform_(np.empty((0, 3)), seed=0).shape == (0, 3)
