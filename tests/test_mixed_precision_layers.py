"""float16 / bfloat16 in dropout, gradient clipping and init fills (issue 14, layers).

16-bit arrays are computed in float32 and rounded once to nearest even: each result is
compared with the float32 computation on the same (16-bit) values, rounded once by
NumPy / ml_dtypes, bit for bit, on both backends; the norm against a float64 reference.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from helpers import to_backend, to_host

from pyopt import clip_grad_norm_, clip_grad_value_, init
from pyopt import functional as F

SIXTEEN_BIT = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
IDS = ["float16", "bfloat16"]
SIZES = [1, 7, 1023, 1025]  # 1, a prime, around a power of two


def _values(n, dtype, seed=0):
    """Normal values with a few exact zeros and an inf, as ``dtype``."""
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3
    x[:: max(1, n // 5)] = 0.0
    return x.astype(dtype)


def _rounded(values32, dtype):
    """The float32 ``values32`` rounded once to ``dtype`` (NumPy / ml_dtypes: ties to even)."""
    return np.asarray(values32, np.float32).astype(dtype)


def _assert_same(actual, expected):
    """Bit-equal 16-bit arrays (NaNs compare by position)."""
    a = np.asarray(actual)
    assert a.dtype == expected.dtype
    np.testing.assert_array_equal(a.view(np.uint16), expected.view(np.uint16))


# --- dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_16bit_is_float32_dropout_rounded_once(backend, dtype, n):
    if backend == "cuda" and n > 7:
        pytest.skip("the simulator is slow: CUDA covers the small sizes")
    x = _values(n, dtype)
    y = to_host(F.dropout(to_backend(x, backend), 0.3, seed=11, offset=5))
    y32 = F.dropout(x.astype(np.float32), 0.3, seed=11, offset=5)
    _assert_same(y, _rounded(y32, dtype))
    dx = to_host(F.dropout_backward(to_backend(x, backend), 0.3, seed=11, offset=5))
    _assert_same(dx, y)  # the same mask regenerated


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
def test_dropout_16bit_mask_equals_float32_mask(dtype):
    x = np.ones(4099, dtype)
    mask = F.dropout(x, 0.5, seed=3) != 0
    mask32 = F.dropout(np.ones(4099, np.float32), 0.5, seed=3) != 0
    np.testing.assert_array_equal(mask, mask32)
    assert 0.4 < mask.mean() < 0.6


def test_dropout_16bit_torch_parity_of_the_scaling():
    torch = pytest.importorskip("torch")
    x = _values(1025, ml_dtypes.bfloat16)
    y = F.dropout(x, 0.25, seed=1)
    kept = y != 0
    # torch scales a bf16 tensor in float32 and rounds once: the same values where kept.
    t = torch.from_numpy(x.view(np.uint16).astype(np.int32)).to(torch.int16)
    tx = t.view(torch.bfloat16) * (1 / 0.75)
    want = tx.float().numpy().astype(ml_dtypes.bfloat16)
    _assert_same(y[kept], want[kept])


# --- init -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
@pytest.mark.parametrize(
    "fill",
    [
        lambda w, **k: init.uniform_(w, -2.0, 3.0, **k),
        lambda w, **k: init.normal_(w, 1.0, 0.5, **k),
        lambda w, **k: init.kaiming_uniform_(w, a=math.sqrt(5), **k),
        lambda w, **k: init.kaiming_normal_(w, **k),
        lambda w, **k: init.xavier_uniform_(w, **k),
        lambda w, **k: init.xavier_normal_(w, gain=2.0, **k),
    ],
    ids=[
        "uniform",
        "normal",
        "kaiming_uniform",
        "kaiming_normal",
        "xavier_uniform",
        "xavier_normal",
    ],
)
def test_init_16bit_is_the_float32_fill_rounded_once(backend, dtype, fill):
    shape = (3, 5) if backend == "cuda" else (31, 33)
    w = to_backend(np.zeros(shape, dtype), backend)
    got = to_host(fill(w, seed=9))
    want32 = fill(np.zeros(shape, np.float32), seed=9)
    if backend == "cuda":  # the device's log/cos differ from libm's by an ulp of float32
        np.testing.assert_allclose(got.astype(np.float32), _rounded(want32, dtype), rtol=1e-2)
    else:
        _assert_same(got, _rounded(want32, dtype))


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
def test_init_16bit_constant_and_strided(dtype):
    w = np.zeros((6, 8), dtype)
    init.constant_(w, 0.1)
    _assert_same(w, np.full((6, 8), 0.1, np.float32).astype(dtype))
    base = np.zeros((6, 16), dtype)
    init.uniform_(base[:, ::2], seed=4)  # a strided view: filled through a copy
    want = init.uniform_(np.zeros((6, 8), np.float32), seed=4)
    _assert_same(base[:, ::2], _rounded(want, dtype))
    assert not base[:, 1::2].any()


# --- clipping ---------------------------------------------------------------------


def _norm64(grads, p):
    a = np.concatenate([np.abs(g.astype(np.float64)).ravel() for g in grads])
    if p == math.inf:
        return a.max()
    if p == -math.inf:
        return a.min()
    return (a**p).sum() ** (1 / p)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf, -math.inf], ids=str)
def test_clip_grad_norm_16bit(backend, dtype, p):
    sizes = (1, 7) if backend == "cuda" else (1, 1023, 1025)
    grads = [_values(n, dtype, seed=n) + dtype.type(0.5) for n in sizes]
    moved = [to_backend(g.copy(), backend) for g in grads]
    total = clip_grad_norm_(moved, max_norm=0.25, norm_type=p)
    want = _norm64(grads, p)
    assert total.dtype == dtype
    assert float(total) == float(dtype.type(want))  # float64 sums, rounded once
    coef = np.float32(0.25) / (np.float32(want) + np.float32(1e-6))
    for g, m in zip(grads, moved, strict=True):
        expected = _rounded(g.astype(np.float32) * coef, dtype) if coef < 1 else g
        _assert_same(to_host(m), expected)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
def test_clip_grad_value_16bit(backend, dtype):
    g = _values(7 if backend == "cuda" else 1025, dtype)
    g[0] = np.nan
    moved = to_backend(g.copy(), backend)
    clip_grad_value_([moved], 0.3)
    _assert_same(to_host(moved), _rounded(np.clip(g.astype(np.float32), -0.3, 0.3), dtype))


def test_clip_grad_norm_16bit_torch_parity():
    torch = pytest.importorskip("torch")
    g = _values(1025, np.float16) + np.float16(0.5)
    t = torch.from_numpy(g.copy())
    ours = g.copy()
    total = clip_grad_norm_([ours], 1.0)
    t.grad = None
    param = torch.nn.Parameter(torch.zeros(1025, dtype=torch.float16))
    param.grad = t
    want = torch.nn.utils.clip_grad_norm_([param], 1.0)
    assert abs(float(total) - float(want)) <= 2e-3 * float(want)
    np.testing.assert_allclose(ours.astype(np.float32), t.numpy().astype(np.float32), rtol=2e-3)


def test_clip_mixed_16bit_dtypes_return_a_float32_norm():
    grads = [np.ones(3, np.float16), np.ones(4, ml_dtypes.bfloat16)]
    total = clip_grad_norm_(grads, 1.0)
    assert total.dtype == np.float32 and float(total) == pytest.approx(math.sqrt(7), rel=1e-6)
    np.testing.assert_allclose(grads[0].astype(np.float32), 1 / math.sqrt(7), rtol=1e-3)


# --- bad input --------------------------------------------------------------------


def test_16bit_bad_inputs_raise_and_change_nothing():
    x = np.ones(5, np.int16)
    with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
        F.dropout(x, 0.5, seed=1)
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        g = np.ones(3, np.float16)
        clip_grad_norm_([g, np.ones(3, np.int32)], 0.1)
    np.testing.assert_array_equal(g, np.ones(3, np.float16))
    with pytest.raises(TypeError, match="tensor"):
        init.uniform_(np.zeros(3, np.int16), seed=0)
