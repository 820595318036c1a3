"""Array helpers for backend-agnostic tests: move NumPy data to a backend and back."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# Per-dtype tolerances, relative to the scale of the expected values.
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def cuda_skip_reason() -> str | None:
    """Why CUDA tests cannot run here (None when they can: real GPU or simulator)."""
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install pyopt-kernels[cuda13])"
    from pyopt._backend import cuda_unavailable_reason

    return cuda_unavailable_reason()


def to_backend(arr, backend: str):
    """A copy of the NumPy array ``arr`` on ``backend`` (CuPy on a real GPU when present)."""
    if arr is None or backend == "cpu":
        return arr
    if not CUDASIM and importlib.util.find_spec("cupy") is not None:
        import cupy

        return cupy.asarray(arr)
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(arr))


def to_host(arr):
    from pyopt._backend import to_numpy

    return None if arr is None else to_numpy(arr)


def assert_close(actual, expected, dtype, scale_tol: float | None = None, what: str = ""):
    """``actual`` equals the float64 ``expected`` to the dtype's tolerance.

    The tolerance is relative to the largest magnitude in ``expected`` (at least 1), the
    error measure that matters for normalized outputs and summed gradients.
    """
    actual = to_host(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = TOL[np.dtype(dtype)] if scale_tol is None else scale_tol
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{what}: finiteness")
    np.testing.assert_allclose(
        actual[finite], expected[finite], rtol=0, atol=tol * scale, err_msg=what
    )
