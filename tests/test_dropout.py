"""pyopt.functional.dropout / dropout_backward and the Dropout layer: mask statistics,
the regenerated backward mask, CPU == CUDA bit for bit, p = 0 and p = 1, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_backend, to_host

import pyopt
from pyopt import _reference as reference
from pyopt.functional import dropout, dropout_backward
from pyopt.nn import Dropout

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1 / 3])
def test_kept_fraction_and_scale(p, dtype):
    n = 1_000_000
    x = np.ones(n, dtype)
    y = dropout(x, p, seed=2024, offset=7)
    kept = y != 0
    expected, half_width = reference.dropout_keep_bounds(p, n)
    assert abs(kept.sum() - expected) < half_width
    assert (y[kept] == dtype(1 / (1 - p))).all()
    # mean preserved in expectation: E[y] = 1, sd of the mean = √(p / (1 - p) / n)
    assert abs(y.astype(np.float64).mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)


def test_masks_are_independent_across_offsets_and_seeds():
    n = 200_000
    x = np.ones(n, np.float32)
    a = dropout(x, 0.5, seed=1, offset=0) != 0
    for other in (dropout(x, 0.5, seed=1, offset=1), dropout(x, 0.5, seed=2, offset=0)):
        b = other != 0  # independent of a: P(a and b) = 1/4
        assert abs((a & b).sum() - n / 4) < 5 * np.sqrt(n * 0.25 * 0.75)
    assert np.array_equal(a, dropout(x, 0.5, seed=1, offset=0) != 0)
    # consecutive elements are independent too (lanes of one Philox block, and blocks)
    assert abs((a[1:] & a[:-1]).sum() - (n - 1) / 4) < 5 * np.sqrt(n * 0.25 * 0.75)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1023,), (1025,), (3, 5, 7), (64, 97)])
def test_backward_regenerates_the_forward_mask(shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = dropout(x, 0.3, seed=99, offset=2**40)
    dx = dropout_backward(dy, 0.3, seed=99, offset=2**40)
    scale = dtype(1 / 0.7)
    kept = y != 0
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, np.where(kept, x * scale, 0))
    np.testing.assert_array_equal(dx, np.where(kept, dy * scale, 0))


def test_p_zero_and_p_one():
    x = np.array([1.0, -2.0, np.inf, np.nan, 0.0], np.float32)
    y0 = dropout(x, 0.0, seed=0)
    assert y0 is not x
    np.testing.assert_array_equal(y0, x)
    y1 = dropout(x, 1.0, seed=0)
    assert (y1 == 0).all() and not np.isnan(y1).any()
    assert (dropout_backward(x, 1.0, seed=0) == 0).all()


def test_eval_returns_the_input_itself():
    x = np.ones((4, 4), np.float32)
    assert dropout(x, 0.5, training=False, seed=0) is x


def test_non_contiguous_input_uses_c_order_indices():
    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) + 1
    view = x.transpose(2, 0, 1)
    np.testing.assert_array_equal(
        dropout(view, 0.5, seed=5), dropout(np.ascontiguousarray(view), 0.5, seed=5)
    )


@pytest.mark.sim
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7, 11), (1025,)])
def test_cuda_equals_cpu_bit_for_bit(cuda_backend, shape, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    for seed, offset in ((0, 0), (2**63 + 5, 2**33 + 1)):
        y_cpu = dropout(x, 0.37, seed=seed, offset=offset)
        y_gpu = to_host(dropout(to_backend(x, cuda_backend), 0.37, seed=seed, offset=offset))
        np.testing.assert_array_equal(y_gpu, y_cpu)
        dx_gpu = dropout_backward(to_backend(x, cuda_backend), 0.37, seed=seed, offset=offset)
        np.testing.assert_array_equal(to_host(dx_gpu), y_cpu)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(p=-0.1, seed=0), ValueError, "p must be in"),
        (dict(p=1.5, seed=0), ValueError, "p must be in"),
        (dict(p=float("nan"), seed=0), ValueError, "p must not be NaN"),
        (dict(p=0.5, seed=-1), ValueError, "seed"),
        (dict(p=0.5, seed=2**64), ValueError, "seed"),
        (dict(p=0.5, seed=1.0), TypeError, "seed"),
        (dict(p=0.5, seed=0, offset=-3), ValueError, "offset"),
        (dict(p=0.5, seed=0, offset=None), TypeError, "offset"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    x = np.ones(8, np.float32)
    with pytest.raises(exc, match=match):
        dropout(x, **kwargs)


def test_bad_arrays():
    with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
        dropout(np.ones(3, np.int64), 0.5, seed=0)
    with pytest.raises(TypeError, match="dy must be a NumPy array"):
        dropout_backward([1.0, 2.0], 0.5, seed=0)
    with pytest.raises(TypeError, match="seed"):
        dropout(np.ones(3), 0.5)  # seed is required


class TestDropoutLayer:
    def test_offset_advances_and_backward_matches_the_last_forward(self):
        drop = Dropout(0.5, seed=42)
        x = np.ones(4096, np.float32)
        y1, y2 = drop(x), drop(x)
        assert drop.offset == 2 and not np.array_equal(y1, y2)
        np.testing.assert_array_equal(drop.backward(x), y2)
        np.testing.assert_array_equal(y1, dropout(x, 0.5, seed=42, offset=0))

    def test_eval_is_the_identity_both_ways(self):
        drop = Dropout(0.5, seed=1).eval()
        x = np.ones(10, np.float32)
        assert drop(x) is x and drop.backward(x) is x and drop.offset == 0
        drop.train()
        assert (drop(x) != x).any()

    def test_layers_seeded_from_the_global_generator(self):
        pyopt.manual_seed(7)
        a, b = Dropout(0.5), Dropout(0.5)
        pyopt.manual_seed(7)
        c = Dropout(0.5)
        assert a.seed != b.seed and a.seed == c.seed

    def test_bad_p(self):
        with pytest.raises(ValueError, match="p must be in"):
            Dropout(1.2)


def test_resume_from_state_dict_draws_the_same_masks(tmp_path):
    """The stream position is layer state: a model resumed from a checkpoint (even one
    built with other seeds) draws the masks of the uninterrupted run, bit for bit."""
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)

    def model(seed):
        return pyopt.nn.Sequential(Dropout(0.5, seed=seed), pyopt.nn.ReLU(), Dropout(0.2))

    run = model(11)
    for _ in range(3):
        run(x)
    pyopt.save(tmp_path / "ckpt.pyopt", run.state_dict())
    expected = [run(x) for _ in range(3)]
    resumed = model(99)
    resumed.load_state_dict(pyopt.load(tmp_path / "ckpt.pyopt"))
    assert set(resumed.state_dict()) == {"0._extra_state", "2._extra_state"}
    for want in expected:
        np.testing.assert_array_equal(resumed(x), want)
    with pytest.raises(RuntimeError, match="before forward"):
        model(1)[0].backward(x)
    with pytest.raises(ValueError, match="shape"):
        resumed[0].backward(x[:3])
