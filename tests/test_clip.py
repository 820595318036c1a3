"""pyopt.clip_grad_norm_ / clip_grad_value_: parity with torch.nn.utils, O(1) kernel calls
over a flat grad store, non-finite handling, bad input changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import to_backend, to_host

import pyopt
from pyopt.optim import ParamBuffer

torch = pytest.importorskip("torch", reason="torch is needed for the clipping parity tests")

SIZES = [1, 7, 1023, 1025, 4099, 97]
NORM_TYPES = [2.0, 1.0, math.inf, -math.inf, 3.0, 0.5]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _grads(dtype, scale=1.0, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]


def _torch_clip(grads, max_norm, norm_type, **kw):
    params = [torch.zeros(len(g), dtype=getattr(torch, g.dtype.name)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, **kw)
    return float(total), [p.grad.numpy() for p in params]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e30])  # clipping, and a no-op
def test_norm_matches_torch(norm_type, max_norm, dtype):
    grads = _grads(dtype)
    want_total, want = _torch_clip(grads, max_norm, norm_type)
    total = pyopt.clip_grad_norm_(grads, max_norm, norm_type)
    assert isinstance(total, np.generic) and total.dtype == dtype
    assert abs(float(total) - want_total) <= TOL[dtype] * abs(want_total)
    for g, w in zip(grads, want, strict=True):
        assert _rel(g, w) <= TOL[dtype]
    if max_norm > 1e29:  # not clipped: untouched bit for bit, as torch's x * 1
        for g, w in zip(grads, _grads(dtype), strict=True):
            np.testing.assert_array_equal(g, w)


def test_large_flat_buffer_is_accurate():
    """3M float32 elements: the float64-accumulated norm is the float64 norm rounded once;
    torch's float32 reduction is 6e-5 off here, so torch is only checked to 1e-4."""
    g = np.random.default_rng(3).standard_normal(3_000_017).astype(np.float32)
    exact = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    want_total, (want,) = _torch_clip([g], 1.0, 2.0)
    expected = g * (np.float32(1.0) / (np.float32(exact) + np.float32(1e-6)))
    total = pyopt.clip_grad_norm_(g, 1.0)
    assert total == np.float32(exact)
    assert abs(float(total) - want_total) <= 1e-4 * want_total
    np.testing.assert_array_equal(g, expected)
    assert _rel(g, want) <= 1e-4


def test_input_forms_and_empty():
    assert float(pyopt.clip_grad_norm_([], 1.0)) == 0.0
    assert float(pyopt.clip_grad_norm_([None, None], 1.0)) == 0.0
    a, b = np.full(4, 3.0), np.full(9, 4.0)
    total = pyopt.clip_grad_norm_({"a": a, "skip": None, "b": b}, 1.0)
    assert total == pytest.approx(math.sqrt(180))
    assert np.sqrt((a**2).sum() + (b**2).sum()) == pytest.approx(1.0, rel=1e-6)


def test_nonfinite_norm_like_torch():
    grads = _grads(np.float32, sizes=[5, 6])
    grads[1][2] = np.nan
    want_total, want = _torch_clip(grads, 1.0, 2.0)
    total = pyopt.clip_grad_norm_(grads, 1.0)
    assert math.isnan(total) and math.isnan(want_total)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    grads = _grads(np.float32, sizes=[5, 6])
    grads[0][0] = np.inf
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        pyopt.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g, b)
    with pytest.raises(RuntimeError):  # torch raises too
        _torch_clip(before, 1.0, 2.0, error_if_nonfinite=True)


def test_strided_grads_are_written_back():
    base = np.random.default_rng(0).standard_normal((50, 40))
    view = base[:, ::2]
    want_total, (want,) = _torch_clip([np.ascontiguousarray(view).ravel()], 0.1, 2.0)
    total = pyopt.clip_grad_norm_([view], 0.1)
    assert float(total) == pytest.approx(want_total, rel=1e-13)
    np.testing.assert_allclose(view.ravel(), want, rtol=1e-13)


class _Counter:
    def __init__(self, monkeypatch, module, names):
        self.calls = {name: 0 for name in names}
        for name in names:
            original = getattr(module, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, counted)


def test_flat_store_is_one_call_per_pass(backend, monkeypatch):
    """Over a ParamBuffer's grads (many tensors, one allocation): one norm call and one
    scale call (one launch each on CUDA), however many tensors."""
    from pyopt._backend import copy_into, kernels_for

    shapes = {f"t{i}": (i % 5 + 1, 3) for i in range(40)}
    buf = ParamBuffer(shapes, dtype=np.float64, device="cpu" if backend == "cpu" else "cuda")
    host = np.random.default_rng(1).standard_normal(buf.size)
    copy_into(buf.grad, host)
    counter = _Counter(
        monkeypatch, kernels_for(backend, "clip"), ["norm_partials", "scale_", "clamp_"]
    )
    total = pyopt.clip_grad_norm_(buf.grads, 1.0)
    assert float(total) == pytest.approx(np.linalg.norm(host), rel=1e-12)
    np.testing.assert_allclose(to_host(buf.grad), host / (np.linalg.norm(host) + 1e-6), rtol=1e-12)
    pyopt.clip_grad_value_(buf.grads, 0.01)
    assert counter.calls == {"norm_partials": 1, "scale_": 1, "clamp_": 1}
    assert np.abs(to_host(buf.grad)).max() <= 0.01


@pytest.mark.sim
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.5])
def test_cuda_matches_cpu(cuda_backend, norm_type):
    grads = _grads(np.float32, sizes=[1, 33, 300], seed=4)
    dev = [to_backend(g, cuda_backend) for g in grads]
    total_cpu = pyopt.clip_grad_norm_(grads, 0.3, norm_type)
    total_gpu = pyopt.clip_grad_norm_(dev, 0.3, norm_type)
    assert float(total_gpu) == pytest.approx(float(total_cpu), rel=1e-7)
    for g, d in zip(grads, dev, strict=True):
        np.testing.assert_allclose(to_host(d), g, rtol=2e-7, atol=0)
    pyopt.clip_grad_value_(dev, 0.01)
    pyopt.clip_grad_value_(grads, 0.01)
    for g, d in zip(grads, dev, strict=True):
        np.testing.assert_array_equal(to_host(d), g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip_value", [0.5, 0.0, -0.25, 1e9])
def test_clip_value_matches_torch(clip_value, dtype):
    grads = _grads(dtype, sizes=[7, 1025])
    grads[0][3] = np.nan
    grads[1][5] = -np.inf
    params = [torch.zeros(len(g), dtype=getattr(torch, np.dtype(dtype).name)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_value_(params, clip_value)
    assert pyopt.clip_grad_value_(grads, clip_value) is None
    for g, p in zip(grads, params, strict=True):
        np.testing.assert_array_equal(g, p.grad.numpy())


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda g: pyopt.clip_grad_norm_(g, 1.0, norm_type=0), ValueError, "norm_type"),
        (lambda g: pyopt.clip_grad_norm_(g, 1.0, norm_type=-2), ValueError, "norm_type"),
        (lambda g: pyopt.clip_grad_norm_(g, float("nan")), ValueError, "max_norm"),
        (lambda g: pyopt.clip_grad_norm_(g, "1"), TypeError, "max_norm"),
        (lambda g: pyopt.clip_grad_value_(g, None), TypeError, "clip_value"),
        (
            lambda g: pyopt.clip_grad_norm_([*g, np.ones(3, np.int32)], 0.1),
            TypeError,
            r"grads\[2\]",
        ),
        (lambda g: pyopt.clip_grad_norm_([*g, [1.0]], 0.1), TypeError, r"grads\[2\]"),
    ],
)
def test_bad_input_changes_nothing(call, exc, match):
    grads = _grads(np.float32, sizes=[3, 4])
    before = [g.copy() for g in grads]
    with pytest.raises(exc, match=match):
        call(grads)
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g, b)


@pytest.mark.sim
def test_mixed_devices_are_rejected(cuda_backend):
    grads = _grads(np.float32, sizes=[3])
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        pyopt.clip_grad_norm_([grads[0], to_backend(grads[0], cuda_backend)], 0.1)
    np.testing.assert_array_equal(grads[0], _grads(np.float32, sizes=[3])[0])
