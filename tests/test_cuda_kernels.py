"""The CUDA batch-norm launchers and ``as_contiguous`` against float64 NumPy references.

Kernel level: the launchers get Numba device arrays directly (no public layer). Runs on
a real GPU, or on the Numba CUDA simulator (a Python thread per CUDA thread), so shapes
are tiny and most tests apply ``SMALL_LAUNCH`` (64-thread blocks, 4 resident blocks,
tiny chunks), under which each case below spans the paths its comment names.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CUDASIM, assert_close, cuda_skip_reason

from pyopt import _reference as reference

_reason = cuda_skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

from numba import cuda  # noqa: E402

from pyopt.kernels.cuda import batchnorm, copy, gate  # noqa: E402

pytestmark = pytest.mark.sim

DTYPES = [np.float32, np.float64]
MOMENTUM, EPS = 0.1, 1e-5

# (outer, C, inner) -> what it exercises under SMALL_LAUNCH (64 threads, 4 blocks, tile 8).
TRAIN_CASES = [
    ((3, 2, 67), "NCHW: 2 partials per channel, rows end mid-warp"),
    ((1, 3, 601), "NCHW: several tiles per thread, prime inner, 1 partial per channel"),
    ((5, 1, 2), "NCHW: C=1, inner=2 (a row change at every step)"),
    ((2, 7, 3), "NCHW: C > blocks, most threads idle"),
    ((600, 3, 1), "channels-last: bx=4 x by=16, 4 partials, several tiles per thread"),
    ((37, 40, 1), "channels-last: bx=32, a part-empty second channel block, 2 tiles"),
    ((65, 1, 1), "channels-last: C=1 (bx=1, whole-warp reduction)"),
    ((2, 33, 1), "channels-last: one row per block"),
]


def _inputs(shape, dtype, seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    nch = shape[1]
    return {
        "x": (loc + scale * rng.standard_normal(shape)).astype(dtype),
        "weight": rng.uniform(0.5, 1.5, nch).astype(dtype),
        "bias": rng.standard_normal(nch).astype(dtype),
        "running_mean": rng.standard_normal(nch).astype(dtype),
        "running_var": rng.uniform(0.5, 2.0, nch).astype(dtype),
        "dy": rng.standard_normal(shape).astype(dtype),
    }


def _forward(inp, training, update_running, stream=None):
    """Run ``batch_norm_forward`` on device copies; host results by name."""
    x = inp["x"]
    nch = x.shape[1]
    dev = {
        k: cuda.to_device(inp[k]) for k in ("x", "weight", "bias", "running_mean", "running_var")
    }
    out = {
        "y": cuda.device_array(x.shape, x.dtype),
        "mean": cuda.device_array(nch, x.dtype),
        "invstd": cuda.device_array(nch, x.dtype),
    }
    batchnorm.batch_norm_forward(
        dev["x"], dev["weight"], dev["bias"], dev["running_mean"], dev["running_var"],
        out["y"], out["mean"], out["invstd"], training, update_running, MOMENTUM, EPS,
        stream=stream,
    )  # fmt: skip
    if stream is not None:
        stream.synchronize()
    host = {k: v.copy_to_host() for k, v in out.items()}
    host["running_mean"] = dev["running_mean"].copy_to_host()
    host["running_var"] = dev["running_var"].copy_to_host()
    return host


def _backward(inp, mean, invstd, training, stream=None):
    x = inp["x"]
    nch = x.shape[1]
    dx = cuda.device_array(x.shape, x.dtype)
    dweight = cuda.device_array(nch, x.dtype)
    dbias = cuda.device_array(nch, x.dtype)
    batchnorm.batch_norm_backward(
        cuda.to_device(inp["dy"]), cuda.to_device(x), cuda.to_device(inp["weight"]),
        cuda.to_device(mean), cuda.to_device(invstd), dx, dweight, dbias, training,
        stream=stream,
    )  # fmt: skip
    if stream is not None:
        stream.synchronize()
    return dx.copy_to_host(), dweight.copy_to_host(), dbias.copy_to_host()


def _check_forward(inp, got, training, update_running):
    dtype = inp["x"].dtype
    y, mean, invstd, rm, rv = reference.batch_norm(
        inp["x"], inp["weight"], inp["bias"], inp["running_mean"], inp["running_var"],
        training, MOMENTUM, EPS,
    )  # fmt: skip
    assert_close(got["y"], y, dtype, what="y")
    assert_close(got["mean"], mean, dtype, what="mean")
    assert_close(got["invstd"], invstd, dtype, what="invstd")
    if update_running:
        assert_close(got["running_mean"], rm, dtype, what="running_mean")
        assert_close(got["running_var"], rv, dtype, what="running_var")
    else:
        np.testing.assert_array_equal(got["running_mean"], inp["running_mean"])
        np.testing.assert_array_equal(got["running_var"], inp["running_var"])


def _check_backward(inp, got, mean, invstd, training):
    dtype = inp["x"].dtype
    dx, dweight, dbias = reference.batch_norm_backward(
        inp["dy"], inp["x"], inp["weight"], mean, invstd, training
    )
    for name, actual, expected in zip(
        ("dx", "dweight", "dbias"), got, (dx, dweight, dbias), strict=True
    ):
        assert_close(actual, expected, dtype, what=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("shape", "what"), TRAIN_CASES, ids=[str(c[0]) for c in TRAIN_CASES])
def test_training_forward_and_backward(small_launch, shape, what, dtype):
    inp = _inputs(shape, dtype)
    got = _forward(inp, training=True, update_running=True)
    _check_forward(inp, got, training=True, update_running=True)
    grads = _backward(inp, got["mean"], got["invstd"], training=True)
    _check_backward(inp, grads, got["mean"], got["invstd"], training=True)


@pytest.mark.parametrize("shape", [(4, 3, 5), (9, 5, 1)], ids=["nchw", "channels_last"])
def test_default_launch_config(shape):
    """The shipped configuration (256-thread blocks), on a stream of our own."""
    inp = _inputs(shape, np.float32, seed=1)
    stream = cuda.stream()
    got = _forward(inp, training=True, update_running=True, stream=stream)
    _check_forward(inp, got, training=True, update_running=True)
    grads = _backward(inp, got["mean"], got["invstd"], training=True, stream=stream)
    _check_backward(inp, grads, got["mean"], got["invstd"], training=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(3, 2, 7), (23, 3, 1)], ids=["nchw", "channels_last"])
def test_eval_uses_running_statistics(small_launch, shape, dtype):
    inp = _inputs(shape, dtype, seed=2)
    got = _forward(inp, training=False, update_running=False)
    _check_forward(inp, got, training=False, update_running=False)
    assert_close(got["mean"], inp["running_mean"], dtype, what="mean is running_mean")
    grads = _backward(inp, got["mean"], got["invstd"], training=False)
    _check_backward(inp, grads, got["mean"], got["invstd"], training=False)
    dx_eval = inp["dy"] * (inp["weight"] * got["invstd"])[None, :, None]
    assert_close(grads[0], dx_eval, dtype, what="eval dx = dy * weight * invstd")


@pytest.mark.parametrize("shape", [(2, 3, 11), (13, 3, 1)], ids=["nchw", "channels_last"])
def test_training_without_running_update(small_launch, shape):
    inp = _inputs(shape, np.float64, seed=3)
    got = _forward(inp, training=True, update_running=False)
    _check_forward(inp, got, training=True, update_running=False)


@pytest.mark.parametrize("shape", [(3, 4, 9), (31, 4, 1)], ids=["nchw", "channels_last"])
def test_nan_stays_in_its_channel(small_launch, shape):
    inp = _inputs(shape, np.float32, seed=4)
    inp["x"][1, 2, 0] = np.nan
    got = _forward(inp, training=True, update_running=True)
    for name in ("mean", "invstd", "running_mean", "running_var"):
        assert np.isnan(got[name][2]), name
    assert np.isnan(got["y"][:, 2]).all()
    clean = [0, 1, 3]
    sub = {k: (v[:, clean] if v.ndim == 3 else v[clean]) for k, v in inp.items()}
    got_clean = {k: (v[:, clean] if v.ndim == 3 else v[clean]) for k, v in got.items()}
    _check_forward(sub, got_clean, training=True, update_running=True)

    dx, dweight, dbias = _backward(inp, got["mean"], got["invstd"], training=True)
    assert np.isnan(dweight[2]) and np.isnan(dx[:, 2]).all()
    assert np.isfinite(dbias[2]), "dbias = sum(dy) does not involve x"
    sub_grads = (dx[:, clean], dweight[clean], dbias[clean])
    _check_backward(sub, sub_grads, got["mean"][clean], got["invstd"][clean], training=True)


@pytest.mark.parametrize("shape", [(4, 2, 150), (600, 2, 1)], ids=["nchw", "channels_last"])
def test_float32_variance_when_mean_is_1e4_std(small_launch, shape):
    """E[x²] − E[x]² would lose every digit here; Welford/Chan keeps 1e-3 relative."""
    inp = _inputs(shape, np.float32, seed=5, loc=1e4, scale=1.0)
    got = _forward(inp, training=True, update_running=False)
    x64 = inp["x"].astype(np.float64)
    var = x64.var(axis=(0, 2))
    var_got = 1.0 / got["invstd"].astype(np.float64) ** 2 - EPS
    np.testing.assert_allclose(var_got, var, rtol=1e-3)
    np.testing.assert_allclose(got["mean"], x64.mean(axis=(0, 2)), rtol=1e-6)


def test_launch_signatures_are_registered(small_launch, monkeypatch):
    """Every launch's argument types match the compile gate's registry row.

    The gate compiles exactly the registered signatures, so a launcher passing other
    types would run code the gate never checked.
    """
    from numba.cuda.core import sigutils
    from numba.cuda.typing.typeof import typeof

    def numba_type(arg):
        if getattr(arg, "size", 1) == 0:  # Numba types empty device arrays 'C'
            return typeof(arg).copy(layout="C")
        return typeof(arg)

    seen: dict[tuple[str, str], set[tuple]] = {}

    class Recorder:
        def __init__(self, kernel_id, kernel):
            self.kernel_id, self.kernel = kernel_id, kernel

        def __getitem__(self, launch):
            def launch_and_record(*args):
                types = tuple(numba_type(a) for a in args)
                seen.setdefault((self.kernel_id, str(types[0].dtype)), set()).add(types)
                return self.kernel[launch](*args)

            return launch_and_record

    specs = [s for s in gate.KERNELS if s.module in ("batchnorm", "copy")]
    for spec in specs:
        module = {"batchnorm": batchnorm, "copy": copy}[spec.module]
        monkeypatch.setattr(module, spec.name, Recorder(spec.id, getattr(module, spec.name)))

    for dtype in DTYPES:
        for shape in [(2, 3, 5), (7, 3, 1)]:
            inp = _inputs(shape, dtype)
            got = _forward(inp, training=True, update_running=True)
            _forward(inp, training=False, update_running=False)
            _backward(inp, got["mean"], got["invstd"], training=True)
        base = np.ones(12, dtype)
        copy.as_contiguous(_device_view(base[::2], base, cuda.to_device(base)))

    for kernel_id, dtype, signature in gate.cases(specs):
        assert (kernel_id, dtype) in seen, f"{kernel_id} was not launched for {dtype}"
        expected, _ = sigutils.normalize_signature(signature)
        assert seen[(kernel_id, dtype)] == {expected}, kernel_id
    assert len(seen) == len(gate.cases(specs))


# --- warp shuffles (the simulator's must match the hardware's) -----------------------

FULL_MASK = 0xFFFFFFFF


@cuda.jit
def _shuffles(out):
    t = np.int64(cuda.threadIdx.x)
    v = t * 10
    out[0, t] = cuda.shfl_sync(FULL_MASK, v, 5)
    out[1, t] = cuda.shfl_up_sync(FULL_MASK, v, 3)
    out[2, t] = cuda.shfl_down_sync(FULL_MASK, v, 3)
    out[3, t] = cuda.shfl_xor_sync(FULL_MASK, v, 6)


def test_warp_shuffles_follow_hardware_semantics():
    out = cuda.device_array((4, 64), np.int64)
    _shuffles[1, 64](out)
    t = np.arange(64)
    lane, base = t % 32, t - t % 32
    expected = 10 * np.stack(
        [
            base + 5,
            np.where(lane >= 3, t - 3, t),  # from below the warp: own value
            np.where(lane + 3 < 32, t + 3, t),  # from above the warp: own value
            base + (lane ^ 6),
        ]
    )
    np.testing.assert_array_equal(out.copy_to_host(), expected)


# --- as_contiguous ----------------------------------------------------------------

# NumPy views of a contiguous 720-element base; the device arrays under test have the
# same layout. Most have more elements than SMALL_LAUNCH's 256 threads, so the gather's
# incremental index (with carries) is exercised, not just each thread's first element.
VIEWS = {
    "step": lambda b: b[::3],
    "reversed": lambda b: b[::-1],
    "sliced_2d": lambda b: b.reshape(24, 30)[1:20:2, 3:],
    "transposed": lambda b: b.reshape(24, 30).T,
    "negative_rows": lambda b: b.reshape(24, 30)[::-2, ::3],
    "permuted_3d": lambda b: b.reshape(6, 10, 12).transpose(2, 0, 1),
    "mixed_signs_4d": lambda b: b.reshape(6, 4, 10, 3)[::-1, ::-1, ::2, ::-1],
    # six dimensions, none of which merge: the launcher loops over the outer two
    "reversed_axes_6d": lambda b: b[:216].reshape(2, 3, 2, 3, 2, 3).transpose(5, 4, 3, 2, 1, 0),
    "broadcast_rows": lambda b: np.broadcast_to(b[:70], (5, 70)),  # stride 0
}


def _device_view(view, base, dev_base):
    """The view of the device copy ``dev_base`` of ``base`` laid out like ``view``."""
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if CUDASIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        host = np.asarray(dev_base)[offset // base.itemsize :]  # shares dev_base's memory
        return FakeCUDAArray(np.lib.stride_tricks.as_strided(host, view.shape, view.strides))
    desc = {
        "shape": view.shape,
        "strides": view.strides,
        "typestr": view.dtype.str,
        "data": (dev_base.__cuda_array_interface__["data"][0] + offset, False),
        "version": 3,
    }
    return cuda.from_cuda_array_interface(desc, owner=dev_base, sync=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("view", list(VIEWS))
def test_as_contiguous_gathers_strided_views(small_launch, view, dtype):
    base = np.arange(720, dtype=dtype)
    expected = VIEWS[view](base)
    assert not expected.flags.c_contiguous
    src = _device_view(expected, base, cuda.to_device(base))
    assert not src.is_c_contiguous()
    out = copy.as_contiguous(src)
    assert out.is_c_contiguous() and out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out.copy_to_host(), expected)


def test_as_contiguous_returns_contiguous_input_itself():
    arr = cuda.to_device(np.arange(6.0).reshape(2, 3))
    assert copy.as_contiguous(arr) is arr


@pytest.mark.skipif(not CUDASIM, reason="a fix for the CUDA simulator's shared arrays")
def test_simulator_shared_array_is_one_array_per_block():
    """Threads of a block creating a shared array at once get the same array: the
    simulator's lookup-or-create is unlocked, so a slow lookup made threads diverge."""
    import threading
    import time

    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    class SlowDict(dict):
        def get(self, key, default=None):
            found = super().get(key, default)
            time.sleep(0.02)  # widen the window between the lookup and the insert
            return found

    shared = FakeCUDAShared(0)
    shared._allocations = SlowDict()
    got = []

    def create():
        got.append(shared.array((64,), np.float64))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(a is got[0] for a in got)
