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


def record_launches(monkeypatch, module: str) -> dict[tuple[str, str], set[tuple]]:
    """Make every kernel of ``pyopt.kernels.cuda.<module>`` with a compile-gate row record
    the Numba types of each launch's arguments, then launch as before.

    Returns the record the launches fill: ``{(kernel id, dtype of the first argument):
    {tuple of argument types, ...}}``, for :func:`assert_launches_match_gate`.
    """
    from numba.cuda.typing.typeof import typeof

    from pyopt.kernels.cuda import gate

    def numba_type(arg):
        # typeof says layout 'A' for an empty device array; the launch compiles it as 'C'.
        if getattr(arg, "size", 1) == 0:
            return typeof(arg).copy(layout="C")
        return typeof(arg)

    seen: dict[tuple[str, str], set[tuple]] = {}

    class Recorder:
        def __init__(self, spec):
            self.spec, self.kernel = spec, gate.kernel(spec.id)

        def __getitem__(self, launch):
            def launch_and_record(*args):
                types = tuple(numba_type(a) for a in args)
                seen.setdefault((self.spec.id, str(types[0].dtype)), set()).add(types)
                return self.kernel[launch](*args)

            return launch_and_record

    kernels = importlib.import_module(f"pyopt.kernels.cuda.{module}")
    for spec in gate.KERNELS:
        if spec.module == module:
            monkeypatch.setattr(kernels, spec.name, Recorder(spec))
    return seen


def assert_launches_match_gate(seen: dict[tuple[str, str], set[tuple]], module: str) -> None:
    """Every (kernel, dtype) the compile gate registers for ``module`` was launched, only
    with its registered signature, and no other (kernel, dtype) was (``seen`` from
    :func:`record_launches`): the gate compiles exactly what runs."""
    from numba.cuda.core import sigutils

    from pyopt.kernels.cuda import gate

    cases = gate.cases([spec for spec in gate.KERNELS if spec.module == module])
    for kernel_id, dtype, signature in cases:
        expected, _ = sigutils.normalize_signature(signature)
        assert seen.get((kernel_id, dtype)) == {expected}, kernel_id
    assert len(seen) == len(cases), sorted(seen)
