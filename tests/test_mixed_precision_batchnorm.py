"""float16 / bfloat16 batch norm (issue 14): torch's mixed rule on both backends.

``x``, ``y``, ``dy`` and ``dx`` are 16-bit; ``weight``, ``bias``, the running statistics,
``mean``/``invstd`` and ``dweight``/``dbias`` are float32. Each call is checked three
ways: against pyopt's own float32 call on the same (upcast) values (the statistics and
parameter gradients bit for bit; ``y``/``dx`` that call's rounded to the format, to one
unit in the last place: the elementwise loops may contract ``a*b - c`` into an FMA in one
variant and not the other); against the float64 reference on the same values
(statistics and parameter gradients to float32 accuracy, ``y``/``dx`` within one unit in
the last place of the format); and against torch's CPU batch norm on 16-bit tensors.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from helpers import CUDASIM, to_backend, to_host

import pyopt
from pyopt import _reference as reference
from pyopt.functional import batch_norm, batch_norm_backward

SIXTEEN_BIT = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
IDS = ["float16", "bfloat16"]
# Mantissa bits of each format: one ulp at v is 2**(floor(log2 |v|) - bits).
MANTISSA_BITS = {np.dtype(np.float16): 10, np.dtype(ml_dtypes.bfloat16): 7}
# (shape, axis): both layouts, C=1, primes, 1023/1025 per channel, a middle channel axis.
SHAPES = [
    ((2, 1), 1),
    ((7, 3, 13), 1),
    ((3, 5, 341), 1),  # 1023 per channel
    ((2, 3, 1025), 1),
    ((4, 3, 5, 7), 1),
    ((1031, 17), -1),
    ((3, 11, 31), -1),
    ((2, 3, 4, 5), 2),
    ((16, 64, 9, 9), 1),  # larger: several chunks and threads per channel
    ((2048, 96), -1),
]
# The simulator runs a Python thread per CUDA thread: tiny shapes, several blocks each.
SIM_SHAPES = [((7, 3), 1), ((3, 2, 37), 1), ((29, 5), -1)]


def _shapes(backend):
    return SIM_SHAPES if backend == "cuda" and CUDASIM else SHAPES


def _inputs(shape, axis, dtype, seed=0):
    """16-bit ``x`` and ``dy`` (mean 3, std 2: a mean that dwarfs the spread of a
    16-bit value's rounding) and float32 per-channel arrays."""
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    f32 = np.float32
    weight = rng.uniform(0.5, 1.5, channels).astype(f32)
    bias = rng.standard_normal(channels).astype(f32)
    running_mean = rng.standard_normal(channels).astype(f32)
    running_var = rng.uniform(0.5, 2.0, channels).astype(f32)
    return x, dy, weight, bias, running_mean, running_var


def _assert_within_one_ulp(actual, exact, dtype, what):
    """``actual`` (of 16-bit ``dtype``) within one ulp of the float64 ``exact`` plus the
    float32 computation's own error (1e-5 of the largest value: a ``dx`` that cancels to
    near zero is float32 noise at that scale): a float32 result rounded once."""
    got = np.asarray(to_host(actual))
    assert got.dtype == dtype, what
    got = got.astype(np.float64)
    exponent = np.floor(np.log2(np.maximum(np.abs(exact), 2.0**-14)))
    ulp = np.exp2(exponent - MANTISSA_BITS[dtype])
    float32_error = 1e-5 * max(1.0, float(np.max(np.abs(exact))))
    excess = np.abs(got - exact) - ulp - float32_error
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 0, f"{what}: {got.flat[worst]} vs {exact.flat[worst]}"


def _assert_float32_close(actual, exact, what, rtol=2e-5):
    got = np.asarray(to_host(actual))
    assert got.dtype == np.float32, what
    scale = max(1.0, float(np.max(np.abs(exact)))) if exact.size else 1.0
    np.testing.assert_allclose(got, exact, rtol=0, atol=rtol * scale, err_msg=what)


def _forward(backend, x, weight, bias, rm, rv, training, axis):
    """``batch_norm`` on ``backend``; returns host copies of y, mean, invstd and of the
    running statistics after the call (``rm``, ``rv`` themselves are left as they are)."""
    d_rm, d_rv = to_backend(rm.copy(), backend), to_backend(rv.copy(), backend)
    y, mean, invstd = batch_norm(
        to_backend(x, backend), weight=to_backend(weight, backend),
        bias=to_backend(bias, backend), running_mean=d_rm, running_var=d_rv,
        training=training, momentum=0.1, eps=1e-5, axis=axis,
    )  # fmt: skip
    return [np.asarray(to_host(a)) for a in (y, mean, invstd, d_rm, d_rv)]


def _backward(backend, dy, x, weight, mean, invstd, training, axis):
    dx, dw, db = batch_norm_backward(
        to_backend(dy, backend), to_backend(x, backend), weight=to_backend(weight, backend),
        mean=to_backend(mean, backend), invstd=to_backend(invstd, backend),
        training=training, axis=axis,
    )  # fmt: skip
    return [np.asarray(to_host(a)) for a in (dx, dw, db)]


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_16bit_batch_norm_is_the_float32_call_rounded_once(backend, dtype, training):
    """The 16-bit kernels are the float32 kernels on the upcast values: every float32
    output bit-identical, ``y`` and ``dx`` the float32 ones rounded once (to an ulp)."""
    for shape, axis in _shapes(backend):
        x, dy, w, b, rm, rv = _inputs(shape, axis, dtype)
        x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
        what = f"{shape} axis={axis}"
        got = _forward(backend, x, w, b, rm, rv, training, axis)
        want = _forward(backend, x32, w, b, rm, rv, training, axis)
        _assert_within_one_ulp(got[0], want[0].astype(np.float64), dtype, f"y {what}")
        for name, g, e in zip(("mean", "invstd", "rm", "rv"), got[1:], want[1:], strict=True):
            np.testing.assert_array_equal(g, e, f"{name} {what}")
        mean, invstd = want[1], want[2]
        grads = _backward(backend, dy, x, w, mean, invstd, training, axis)
        grads32 = _backward(backend, dy32, x32, w, mean, invstd, training, axis)
        _assert_within_one_ulp(grads[0], grads32[0].astype(np.float64), dtype, f"dx {what}")
        np.testing.assert_array_equal(grads[1], grads32[1], f"dweight {what}")
        np.testing.assert_array_equal(grads[2], grads32[2], f"dbias {what}")


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_16bit_batch_norm_matches_the_float64_reference(backend, dtype, training):
    for shape, axis in _shapes(backend):
        x, dy, w, b, rm, rv = _inputs(shape, axis, dtype, seed=1)
        x64 = x.astype(np.float64)
        what = f"{shape} axis={axis}"
        ref = reference.batch_norm(x64, w, b, rm, rv, training=training, momentum=0.1, axis=axis)
        y, mean, invstd, new_rm, new_rv = _forward(backend, x, w, b, rm, rv, training, axis)
        _assert_within_one_ulp(y, ref[0], dtype, f"y {what}")
        for name, got, exact in zip(
            ("mean", "invstd", "running_mean", "running_var"),
            (mean, invstd, new_rm, new_rv),
            ref[1:],
            strict=True,
        ):
            _assert_float32_close(got, exact, f"{name} {what}")
        ref_dx, ref_dw, ref_db = reference.batch_norm_backward(
            dy.astype(np.float64), x64, w, mean, invstd, training=training, axis=axis
        )
        dx, dw, db = _backward(backend, dy, x, w, mean, invstd, training, axis)
        _assert_within_one_ulp(dx, ref_dx, dtype, f"dx {what}")
        n = x.size // x.shape[axis]
        tol = 2e-5 * max(1.0, math.sqrt(n))  # sums of n float32 terms
        _assert_float32_close(dw, ref_dw, f"dweight {what}", tol)
        _assert_float32_close(db, ref_db, f"dbias {what}", tol)


def test_16bit_batch_norm_keeps_nan_and_inf_in_their_channel(backend):
    dtype = np.dtype(ml_dtypes.bfloat16)
    x = np.random.default_rng(3).standard_normal((6, 3, 5)).astype(dtype)
    x[2, 0, 1] = np.nan
    x[4, 2, 3] = np.inf
    y, mean, invstd = (to_host(a) for a in batch_norm(to_backend(x, backend), training=True))
    y = np.asarray(y).astype(np.float32)
    assert np.isnan(y[:, 0]).all() and np.isnan(mean[0])
    assert np.isfinite(y[:, 1]).all() and np.isfinite(mean[1]) and np.isfinite(invstd[1])
    assert np.isnan(y[:, 2]).all()  # inf - inf in the mean's channel


# --- against torch's CPU batch norm -------------------------------------------------


@pytest.mark.parametrize("tdtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_torch_cpu_16bit_batch_norm_parity(tdtype, memory_format):
    """``pyopt.torch.nn.BatchNorm2d`` on a 16-bit input beside float32 parameters, and
    on a model cast to the 16-bit dtype, against torch's CPU modules.

    Outputs and input gradients within two ulps of the format of torch's (each side
    rounds a float32 result once). Running statistics and parameter gradients against
    the float64 reference: to float32 accuracy beside float32 parameters, within an ulp
    (rounded once) beside 16-bit ones, and never further from it than torch's (torch 2.13
    sums a channels-last bfloat16 ``dbias`` with errors up to 0.06 on values near 20, and
    its bfloat16-parameter ``dweight`` reads 1.22 where the exact sum is 1.1675).
    """
    torch = pytest.importorskip("torch")
    import pyopt.torch.nn as pnn

    dtype = getattr(torch, tdtype)
    np_dtype = np.dtype(np.float16 if tdtype == "float16" else ml_dtypes.bfloat16)
    ulp = 2.0 ** -MANTISSA_BITS[np_dtype]
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    x = (3 + 2 * torch.randn(8, 6, 7, 5)).to(dtype).to(memory_format=fmt)
    dy = torch.randn(8, 6, 7, 5).to(dtype)
    x64, dy64 = x.double().numpy(), dy.double().numpy()
    for params_dtype in (torch.float32, dtype):
        ref, ours = torch.nn.BatchNorm2d(6), pnn.BatchNorm2d(6)
        with torch.no_grad():
            for m in (ref, ours):
                m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
                m.bias.normal_(generator=torch.Generator().manual_seed(2))
                m.to(params_dtype)
        outs = []
        for module in (ref, ours):
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.backward(dy)
            assert y.dtype == xi.grad.dtype == dtype
            outs.append((y, xi.grad, module))
        (y_ref, dx_ref, m_ref), (y, dx, m) = outs
        what = f"{tdtype} params={params_dtype}"
        for got, want, name in ((y, y_ref, "y"), (dx, dx_ref, "dx")):
            torch.testing.assert_close(
                got.float(), want.float(), rtol=2 * ulp, atol=2 * ulp, msg=f"{name} {what}"
            )
        weight64 = m.weight.detach().double().numpy()
        _, mean, invstd, rm, rv = reference.batch_norm(
            x64, weight64, None, np.zeros(6), np.ones(6), training=True, momentum=0.1
        )
        _, dw, db = reference.batch_norm_backward(dy64, x64, weight64, mean, invstd)
        names = ("running_mean", "running_var", "weight.grad", "bias.grad")
        for name, exact in zip(names, (rm, rv, dw, db), strict=True):
            got, want = (
                (getattr(mod, name) if "." not in name else getattr(mod, name[:-5]).grad)
                for mod in (m, m_ref)
            )
            assert got.dtype == want.dtype == params_dtype, name
            got64, want64 = got.double().numpy(), want.double().numpy()
            if params_dtype == torch.float32:
                tol = 2e-5 * max(1.0, float(np.max(np.abs(exact)))) * math.sqrt(280)
                _assert_float32_close(got.numpy(), exact, f"{name} {what}", tol)
            else:
                tol = ulp * float(np.max(np.abs(exact)))
                _assert_within_one_ulp(got64.astype(np_dtype), exact, np_dtype, f"{name} {what}")
            assert np.all(np.abs(got64 - exact) <= np.abs(want64 - exact) + tol), name


# --- layers and validation ----------------------------------------------------------


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=IDS)
def test_float32_layer_takes_16bit_inputs(dtype):
    bn = pyopt.nn.BatchNorm2d(4, device="cpu")
    x = np.random.default_rng(0).standard_normal((5, 4, 3, 3)).astype(dtype)
    y = bn(x)
    dx = bn.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == dtype
    assert bn.weight_grad.dtype == bn.running_mean.dtype == np.float32
    assert int(bn.num_batches_tracked) == 1
    want = batch_norm(x.astype(np.float32), weight=np.ones(4, np.float32))[0].astype(dtype)
    np.testing.assert_array_equal(y.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weight": "x"}, "weight has dtype bfloat16 but must be float32 for bfloat16 x"),
        ({"running_var": "float64"}, "running_var has dtype float64 but must be float32"),
    ],
)
def test_16bit_per_channel_arrays_must_be_float32_and_nothing_changes(backend, change, message):
    dtype = np.dtype(ml_dtypes.bfloat16)
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(dtype)
    arrays = {
        "weight": np.ones(3, np.float32),
        "running_mean": np.zeros(3, np.float32),
        "running_var": np.ones(3, np.float32),
    }
    for name, to in change.items():
        arrays[name] = arrays[name].astype(dtype if to == "x" else to)
    before = {name: arr.copy() for name, arr in arrays.items()}
    device = {name: to_backend(arr, backend) for name, arr in arrays.items()}
    with pytest.raises(TypeError, match=message):
        batch_norm(to_backend(x, backend), training=True, **device)
    for name, arr in device.items():
        np.testing.assert_array_equal(np.asarray(to_host(arr)), before[name], name)


def test_16bit_dy_must_match_x(backend):
    dtype = np.dtype(np.float16)
    x = np.ones((4, 3), dtype)
    mean, invstd = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="dy has dtype float32 but x has dtype float16"):
        batch_norm_backward(
            to_backend(np.ones((4, 3), np.float32), backend), to_backend(x, backend),
            weight=None, mean=to_backend(mean, backend), invstd=to_backend(invstd, backend),
        )  # fmt: skip
