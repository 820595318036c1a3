"""``pyopt.kernels.cuda.copy.as_contiguous`` against NumPy's views of the same layout.

Kernel level, CUDA only (the CPU needs no gather kernel: NumPy copies). Runs on a real
GPU, or on the Numba CUDA simulator under ``SMALL_LAUNCH`` (the ``cuda_backend``
fixture).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CUDASIM, assert_launches_match_gate, record_launches

pytestmark = pytest.mark.sim

DTYPES = [np.float32, np.float64, np.uint16]  # uint16: the bits of float16/bfloat16 arrays

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
    from numba import cuda

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
def test_as_contiguous_gathers_strided_views(cuda_backend, small_launch, view, dtype):
    from numba import cuda

    from pyopt.kernels.cuda import copy

    base = np.arange(720, dtype=dtype)
    expected = VIEWS[view](base)
    assert not expected.flags.c_contiguous
    src = _device_view(expected, base, cuda.to_device(base))
    assert not src.is_c_contiguous()
    out = copy.as_contiguous(src)
    assert out.is_c_contiguous() and out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out.copy_to_host(), expected)


def test_as_contiguous_returns_contiguous_input_itself(cuda_backend):
    from numba import cuda

    from pyopt.kernels.cuda import copy

    arr = cuda.to_device(np.arange(6.0).reshape(2, 3))
    assert copy.as_contiguous(arr) is arr


def test_cuda_launch_signatures_are_registered(cuda_backend, small_launch, monkeypatch):
    """The gather's launches match the compile gate's registry row (see
    ``helpers.record_launches``)."""
    from numba import cuda

    from pyopt.kernels.cuda import copy

    seen = record_launches(monkeypatch, "copy")
    for dtype in DTYPES:
        base = np.ones(12, dtype)
        copy.as_contiguous(_device_view(base[::2], base, cuda.to_device(base)))
    assert_launches_match_gate(seen, "copy")
