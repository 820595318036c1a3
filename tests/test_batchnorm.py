"""Batch normalization through the public API against the float64 reference, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import CUDASIM, TOL, assert_close, to_backend, to_host
from hypothesis import given, settings
from hypothesis import strategies as st

import pyopt
from pyopt import _reference as reference
from pyopt.functional import batch_norm, batch_norm_backward

DTYPES = [np.float32, np.float64]

# (shape, axis): ranks 2-5, both layouts, C=1, one sample, primes, 1023/1025 per channel.
SHAPES = [
    ((2, 1), 1),
    ((7, 3), 1),
    ((1, 5, 2), 1),
    ((3, 4, 341), 1),  # 1023 per channel
    ((5, 2, 205), 1),  # 1025 per channel
    ((4, 3, 5, 7), 1),
    ((2, 3, 2, 5, 3), 1),
    ((1025, 3), -1),
    ((3, 11, 31), -1),
    ((4, 5, 7, 3), -1),
    ((2, 3, 2, 5, 4), -1),
    ((2, 3, 4, 5), 2),  # a middle channel axis
]
LARGE_SHAPES = [((256, 64, 7, 7), 1), ((8192, 96), -1), ((16, 5, 13, 13, 3), -1)]
# The simulator runs a Python thread per CUDA thread: tiny shapes, several blocks each
# under the shrunken launch configuration.
SIM_SHAPES = [
    ((2, 1), 1),
    ((7, 3), 1),
    ((3, 2, 37), 1),
    ((2, 3, 2, 5, 3), 1),
    ((29, 5), -1),
    ((3, 4, 2, 7), -1),
]


def shapes_for(backend, with_large=False):
    if backend == "cuda" and CUDASIM:
        return SIM_SHAPES
    return SHAPES + (LARGE_SHAPES if with_large else [])


def make_inputs(shape, axis, dtype, seed=0, mean=3.0, std=2.0):
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    x = (mean + std * rng.standard_normal(shape)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    return x, weight, bias, running_mean, running_var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_reference(backend, dtype, training):
    for shape, axis in shapes_for(backend, with_large=True):
        x, w, b, rm, rv = make_inputs(shape, axis, dtype)
        ref = reference.batch_norm(x, w, b, rm, rv, training=training, momentum=0.1, axis=axis)
        d_rm, d_rv = to_backend(rm, backend), to_backend(rv, backend)
        y, mean, invstd = batch_norm(
            to_backend(x, backend), weight=to_backend(w, backend), bias=to_backend(b, backend),
            running_mean=d_rm, running_var=d_rv, training=training, momentum=0.1, eps=1e-5,
            axis=axis,
        )  # fmt: skip
        what = f"{shape} axis={axis}"
        assert_close(y, ref[0], dtype, what=f"y {what}")
        assert_close(mean, ref[1], dtype, what=f"mean {what}")
        assert_close(invstd, ref[2], dtype, what=f"invstd {what}")
        assert_close(d_rm, ref[3], dtype, what=f"running_mean {what}")
        assert_close(d_rv, ref[4], dtype, what=f"running_var {what}")
        assert to_host(y).dtype == dtype and to_host(mean).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_backward_matches_reference(backend, dtype, training, affine):
    for shape, axis in shapes_for(backend, with_large=True):
        x, w, b, rm, rv = make_inputs(shape, axis, dtype, seed=1)
        w = w if affine else None
        dy = np.random.default_rng(2).standard_normal(shape).astype(dtype)
        _, mean, invstd, _, _ = reference.batch_norm(x, w, b, rm, rv, training=training, axis=axis)
        mean, invstd = mean.astype(dtype), invstd.astype(dtype)
        ref_dx, ref_dw, ref_db = reference.batch_norm_backward(
            dy, x, w, mean, invstd, training=training, axis=axis
        )
        dx, dw, db = batch_norm_backward(
            to_backend(dy, backend), to_backend(x, backend), weight=to_backend(w, backend),
            mean=to_backend(mean, backend), invstd=to_backend(invstd, backend),
            training=training, axis=axis,
        )  # fmt: skip
        what = f"{shape} axis={axis}"
        assert_close(dx, ref_dx, dtype, scale_tol=TOL[np.dtype(dtype)] * 5, what=f"dx {what}")
        if affine:
            n = x.size // x.shape[axis]
            # sums of n terms: the error grows with sqrt(n) at worst
            tol = TOL[np.dtype(dtype)] * max(1.0, math.sqrt(n))
            assert_close(dw, ref_dw, dtype, scale_tol=tol, what=f"dweight {what}")
            assert_close(db, ref_db, dtype, scale_tol=tol, what=f"dbias {what}")
        else:
            assert dw is None and db is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_affine_no_tracking(backend, dtype):
    for shape, axis in shapes_for(backend):
        x = make_inputs(shape, axis, dtype)[0]
        y, mean, invstd = batch_norm(to_backend(x, backend), axis=axis)
        ref = reference.batch_norm(x, axis=axis)
        assert_close(y, ref[0], dtype, what=f"y {shape}")
        assert_close(mean, ref[1], dtype, what=f"mean {shape}")
        assert_close(invstd, ref[2], dtype, what=f"invstd {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
def test_running_stats_over_several_steps(backend, dtype, axis):
    shape = (6, 3, 5) if axis == 1 else (6, 5, 3)
    channels = shape[axis]
    rm64, rv64 = np.zeros(channels), np.ones(channels)
    d_rm = to_backend(np.zeros(channels, dtype), backend)
    d_rv = to_backend(np.ones(channels, dtype), backend)
    for step in range(4):
        x = make_inputs(shape, axis, dtype, seed=10 + step, mean=step, std=1 + step)[0]
        momentum = (0.1, 0.5, 1.0, 0.0)[step]
        batch_norm(
            to_backend(x, backend),
            running_mean=d_rm,
            running_var=d_rv,
            momentum=momentum,
            axis=axis,
        )
        _, _, _, rm64, rv64 = reference.batch_norm(
            x, None, None, rm64, rv64, momentum=momentum, axis=axis
        )
    assert_close(d_rm, rm64, dtype, what="running_mean")
    assert_close(d_rv, rv64, dtype, what="running_var")


@pytest.mark.parametrize("axis", [1, -1])
def test_variance_is_stable_when_mean_dwarfs_std(backend, axis):
    """Mean 1e4 times the std: float32 variance to 1e-3 relative (E[x^2]-E[x]^2 fails)."""
    shape = (64, 4, 33) if axis == 1 else (2112, 4)
    if backend == "cuda" and CUDASIM:
        shape = (8, 3, 11) if axis == 1 else (88, 3)
    rng = np.random.default_rng(5)
    std = np.array([1.0, 1e-2, 3.0, 1e2][: shape[axis]])
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    x = (1e4 * std).reshape(bshape) + std.reshape(bshape) * rng.standard_normal(shape)
    x = x.astype(np.float32)
    eps = 1e-30  # so that invstd measures the variance alone
    _, mean, invstd = batch_norm(to_backend(x, backend), eps=eps, axis=axis)
    var = 1.0 / to_host(invstd).astype(np.float64) ** 2
    ref = reference.batch_norm(x, eps=eps, axis=axis)
    ref_var = 1.0 / ref[2] ** 2
    np.testing.assert_allclose(var, ref_var, rtol=1e-3)
    np.testing.assert_allclose(to_host(mean), ref[1], rtol=1e-6)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # simulator
def test_nan_and_inf_stay_in_their_channel(backend, axis):
    shape = (4, 3, 5) if axis == 1 else (4, 5, 3)
    x, w, b, rm, rv = make_inputs(shape, axis, np.float32)
    bad = [slice(None)] * 3
    bad[axis] = 1
    x[tuple(bad)][0, 0] = np.nan
    bad[axis] = 2
    x[tuple(bad)][1, 1] = np.inf
    d_x, d_w, d_rm = (to_backend(a, backend) for a in (x, w, rm))
    y, mean, invstd = batch_norm(
        d_x,
        weight=d_w,
        bias=to_backend(b, backend),
        running_mean=d_rm,
        running_var=to_backend(rv, backend),
        axis=axis,
    )
    y = np.moveaxis(to_host(y), axis, -1)
    assert np.isfinite(y[..., 0]).all()
    assert np.isnan(y[..., 1]).all() and not np.isfinite(y[..., 2]).any()
    assert np.isfinite(to_host(mean)[0]) and np.isnan(to_host(mean)[1])
    running = to_host(d_rm)
    assert np.isfinite(running[0]) and np.isnan(running[1]) and not np.isfinite(running[2])
    dy = to_backend(np.ones(shape, np.float32), backend)
    dx, dw, _ = batch_norm_backward(dy, d_x, weight=d_w, mean=mean, invstd=invstd, axis=axis)
    dx = np.moveaxis(to_host(dx), axis, -1)
    assert np.isfinite(dx[..., 0]).all() and np.isfinite(to_host(dw)[0])
    assert np.isnan(dx[..., 1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(backend, dtype):
    rng = np.random.default_rng(7)
    base = (2.0 + rng.standard_normal((6, 4, 5, 3))).astype(dtype)
    cases = [
        (np.transpose(base, (0, 3, 1, 2)), 1),  # NHWC memory read as NCHW
        (base[:, ::2, :, :], -1),  # strided rows, channels-last
        (base[::-1, :, 1:, :], 1),  # negative stride and an offset
    ]
    wide = rng.uniform(0.5, 1.5, 16).astype(dtype)
    for x, axis in cases:
        channels = x.shape[axis]
        w = wide[: 2 * channels : 2]  # a strided weight
        d_x = to_backend(np.ascontiguousarray(base), backend)
        d_x = _same_view(d_x, base, x)
        d_w = _same_view(to_backend(wide, backend), wide, w)
        rm = np.zeros(2 * channels, dtype)
        if backend == "cpu":
            rm_view = rm[::2]  # non-contiguous running stats are updated in place
            rv = np.ones(channels, dtype)
            y, _, _ = batch_norm(d_x, weight=d_w, running_mean=rm_view, running_var=rv, axis=axis)
            ref = reference.batch_norm(x, w, None, np.zeros(channels), np.ones(channels), axis=axis)
            assert_close(rm_view, ref[3], dtype, what="strided running_mean")
            assert_close(rv, ref[4], dtype, what="running_var")
            assert np.all(rm[1::2] == 0)
        else:
            y, _, _ = batch_norm(d_x, weight=d_w, axis=axis)
            ref = reference.batch_norm(x, w, None, axis=axis)
        assert_close(y, ref[0], dtype, what=f"y strides={x.strides}")
        dy = np.ascontiguousarray(x)[..., ::-1].copy()
        mean, invstd = ref[1].astype(dtype), ref[2].astype(dtype)
        dx, dw, db = batch_norm_backward(
            to_backend(dy, backend), d_x, weight=d_w, mean=to_backend(mean, backend),
            invstd=to_backend(invstd, backend), axis=axis,
        )  # fmt: skip
        rdx, rdw, rdb = reference.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
        assert_close(dx, rdx, dtype, scale_tol=TOL[np.dtype(dtype)] * 5, what="dx strided")
        assert_close(dw, rdw, dtype, scale_tol=TOL[np.dtype(dtype)] * 20, what="dweight strided")
        assert_close(db, rdb, dtype, scale_tol=TOL[np.dtype(dtype)] * 20, what="dbias strided")


def _same_view(device_base, host_base, host_view):
    """Apply to ``device_base`` the slicing/transpose that turned host_base into host_view."""
    if isinstance(device_base, np.ndarray):
        return host_view
    if host_view.ndim == 1:
        return device_base[: 2 * host_view.shape[0] : 2]
    if host_view.shape == tuple(host_base.shape[i] for i in (0, 3, 1, 2)):
        return device_base.transpose((0, 3, 1, 2))
    if host_view.strides[0] < 0:
        return device_base[::-1, :, 1:, :]
    return device_base[:, ::2, :, :]


@pytest.mark.sim
def test_cuda_running_stats_must_be_contiguous(cuda_backend):
    backend = cuda_backend  # the CPU updates strided running stats through a copy (above)
    x = to_backend(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), backend)
    rm = to_backend(np.zeros(6, np.float32), backend)[::2]
    rv = to_backend(np.ones(3, np.float32), backend)
    with pytest.raises(ValueError, match="running_mean"):
        batch_norm(x, running_mean=rm, running_var=rv)
    assert np.all(to_host(rv) == 1)


def test_empty_batch_leaves_running_stats(backend):
    x = to_backend(np.zeros((0, 3, 4), np.float32), backend)
    rm = to_backend(np.full(3, 0.5, np.float32), backend)
    rv = to_backend(np.full(3, 2.0, np.float32), backend)
    y, mean, _ = batch_norm(x, running_mean=rm, running_var=rv)
    assert to_host(y).shape == (0, 3, 4)
    assert np.isnan(to_host(mean)).all()
    assert np.all(to_host(rm) == 0.5) and np.all(to_host(rv) == 2.0)
    ones = to_backend(np.ones(3, np.float32), backend)
    dx, dw, db = batch_norm_backward(x, x, weight=ones, mean=mean, invstd=mean)
    assert to_host(dx).shape == (0, 3, 4)
    assert np.all(to_host(dw) == 0) and np.all(to_host(db) == 0)


def test_results_have_the_callers_array_type(backend):
    x = to_backend(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), backend)
    y, mean, invstd = batch_norm(x)
    dx, _, _ = batch_norm_backward(y, x, weight=None, mean=mean, invstd=invstd)
    for out in (y, mean, invstd, dx):
        assert type(out) is type(x)


# --- bad input: a clear error naming the argument, and nothing modified ----------------------


def _bad_calls():
    f32, f64 = np.float32, np.float64
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(f32)
    ones3 = np.ones(3, f32)
    return [
        ("rank", ValueError, "rank", dict(x=x[0, 0])),
        ("weight C", ValueError, "weight", dict(weight=np.ones(4, f32))),
        ("bias C", ValueError, "bias", dict(bias=np.ones(2, f32))),
        ("running_var C", ValueError, "running_var", dict(running_var=np.ones(5, f32))),
        ("int x", TypeError, "x", dict(x=x.astype(np.int32))),
        ("mixed dtype", TypeError, "weight", dict(weight=ones3.astype(f64))),
        ("mixed running dtype", TypeError, "running_mean", dict(running_mean=np.zeros(3, f64))),
        ("eps 0", ValueError, "eps", dict(eps=0.0)),
        ("eps negative", ValueError, "eps", dict(eps=-1e-5)),
        ("eps nan", ValueError, "eps", dict(eps=float("nan"))),
        ("momentum > 1", ValueError, "momentum", dict(momentum=1.5)),
        ("momentum < 0", ValueError, "momentum", dict(momentum=-0.1)),
        ("momentum str", TypeError, "momentum", dict(momentum="0.1")),
        ("one value", ValueError, "more than 1 value", dict(x=x[:1, :, :1])),
        ("eval without stats", ValueError, "running_mean", dict(training=False, running_mean=None, running_var=None)),
        ("half stats", ValueError, "running_var", dict(running_var=None)),
        ("axis range", ValueError, "axis", dict(axis=3)),
        ("axis batch", ValueError, "axis", dict(axis=0)),
        ("axis type", TypeError, "axis", dict(axis=1.0)),
        ("list x", TypeError, "x", dict(x=[[1.0, 2.0]])),
        ("float16 weight", TypeError, "weight has dtype float16 but must be float32", dict(x=x.astype(np.float16), weight=ones3.astype(np.float16))),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_forward_arguments_raise_and_modify_nothing(backend, case):
    _, error, match, override = case
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    args = dict(
        x=x, weight=np.ones(3, np.float32), bias=np.zeros(3, np.float32),
        running_mean=np.full(3, 0.25, np.float32), running_var=np.full(3, 4.0, np.float32),
    )  # fmt: skip
    args.update(override)
    kwargs = {k: args.pop(k) for k in ("training", "momentum", "eps", "axis") if k in args}
    device = {k: v if isinstance(v, list) else to_backend(v, backend) for k, v in args.items()}
    with pytest.raises(error, match=match):
        batch_norm(**device, **kwargs)
    for name in ("running_mean", "running_var"):
        if device.get(name) is not None:
            np.testing.assert_array_equal(to_host(device[name]), args[name], err_msg=name)


def test_bad_backward_arguments(backend):
    rng = np.random.default_rng(0)
    x = to_backend(rng.standard_normal((4, 3, 5)).astype(np.float32), backend)
    ones = to_backend(np.ones(3, np.float32), backend)
    saved = dict(weight=ones, mean=ones, invstd=ones)
    with pytest.raises(ValueError, match="dy"):
        batch_norm_backward(to_backend(np.ones((4, 3, 4), np.float32), backend), x, **saved)
    with pytest.raises(TypeError, match="dy"):
        batch_norm_backward(to_backend(np.ones((4, 3, 5)), backend), x, **saved)
    with pytest.raises(ValueError, match="invstd"):
        batch_norm_backward(
            x, x, **{**saved, "invstd": to_backend(np.ones(4, np.float32), backend)}
        )
    with pytest.raises(TypeError, match="mean"):
        batch_norm_backward(x, x, **{**saved, "mean": None})


def test_arguments_after_x_are_keyword_only(backend):
    """A positional port of ``torch.nn.functional.batch_norm(x, running_mean, running_var,
    weight, bias)`` would swap the running statistics and the affine parameters: it is a
    TypeError, and the running statistics stay as they were."""
    x = to_backend(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), backend)
    rm = to_backend(np.zeros(3, np.float32), backend)
    rv = to_backend(np.ones(3, np.float32), backend)
    with pytest.raises(TypeError, match="positional argument"):
        batch_norm(x, rm, rv)
    assert np.all(to_host(rm) == 0) and np.all(to_host(rv) == 1)
    y, mean, invstd = batch_norm(x)
    with pytest.raises(TypeError, match="positional argument"):
        batch_norm_backward(y, x, None, mean, invstd)


@pytest.mark.sim
def test_mixing_host_and_device_arrays_is_a_type_error(cuda_backend):
    backend = cuda_backend
    x = to_backend(np.ones((4, 3), np.float32), backend)
    with pytest.raises(TypeError, match="weight"):
        batch_norm(x, weight=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="x"):
        batch_norm(
            np.ones((4, 3), np.float32), running_mean=to_backend(np.zeros(3, np.float32), backend)
        )


# --- properties over random shapes (CPU) --------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=5).map(tuple),
    axis_pick=st.sampled_from([1, -1]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_cpu(shape, axis_pick, dtype, seed):
    axis = axis_pick % len(shape)
    n = math.prod(shape) // shape[axis]
    x, w, b, rm, rv = make_inputs(shape, axis, dtype, seed=seed)
    params = dict(weight=w, bias=b, running_mean=rm, running_var=rv, axis=axis)
    if n < 2:
        with pytest.raises(ValueError, match="more than 1 value"):
            batch_norm(x, **params)
        return
    y, mean, invstd = batch_norm(x, **params)
    ref = reference.batch_norm(x, w, b, axis=axis)
    assert_close(y, ref[0], dtype, what="y")
    dy = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    dx, dw, db = batch_norm_backward(dy, x, weight=w, mean=mean, invstd=invstd, axis=axis)
    rdx, rdw, rdb = reference.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
    assert_close(dx, rdx, dtype, scale_tol=TOL[np.dtype(dtype)] * 10, what="dx")
    assert_close(dw, rdw, dtype, scale_tol=TOL[np.dtype(dtype)] * 10, what="dweight")
    assert_close(db, rdb, dtype, scale_tol=TOL[np.dtype(dtype)] * 10, what="dbias")


def test_backends_lists_cpu_first():
    names = pyopt.backends()
    assert names[0] == "cpu" and set(names) <= {"cpu", "cuda"}
