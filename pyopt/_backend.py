"""Backend selection: which arrays run where, and how device arrays are reached.

NumPy arrays run on the CPU backend. Objects exposing ``__cuda_array_interface__`` (CuPy
arrays, Numba device arrays, torch CUDA tensors) run on the CUDA backend, zero-copy, on
the caller's current stream when its library has one. Nothing here imports ``numba.cuda``
until a CUDA array or ``device="cuda"`` asks for it, so ``import pyopt`` stays silent and
cheap on machines without CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import ml_dtypes
import numpy as np

DEVICES = ("auto", "cpu", "cuda")


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot be used here, or None when it can."""
    if importlib.util.find_spec("numba_cuda") is None:
        return (
            "numba-cuda is not installed; install pyopt-kernels[cuda13] (or [cuda12]) "
            "for the CUDA backend"
        )
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            from numba import cuda

            if cuda.is_available():
                return None
            from numba.cuda.cudadrv import driver

            driver.driver.get_device_count()
    except Exception as exc:
        detail = " ".join(str(exc).split())
        return f"the CUDA driver could not be initialised ({type(exc).__name__}: {detail})"
    return "no CUDA-capable GPU was found by the CUDA driver"


def backends() -> tuple[str, ...]:
    """The usable backends: ``("cpu",)`` or ``("cpu", "cuda")``."""
    return ("cpu",) if cuda_unavailable_reason() else ("cpu", "cuda")


def require_cuda() -> None:
    """Raise ``RuntimeError`` saying what is missing when CUDA cannot be used."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device='cuda' was requested but CUDA is unusable: {reason}")


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` (or ``$PYOPT_DEVICE``) into ``"cpu"`` or ``"cuda"``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = os.environ.get("PYOPT_DEVICE", "auto").strip().lower() or "auto"
        if device not in DEVICES:
            raise ValueError(f"PYOPT_DEVICE must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_unavailable_reason() is None else "cpu"
    if device == "cuda":
        require_cuda()
    return device


def _is_numba_device_array(obj: Any) -> bool:
    # Simulator arrays have no __cuda_array_interface__; recognise them by numba's own test,
    # and only when numba.cuda is already loaded (a device array cannot exist otherwise).
    if "numba.cuda" not in sys.modules:
        return False
    return sys.modules["numba.cuda"].devicearray.is_cuda_ndarray(obj)


def is_cuda_array(obj: Any) -> bool:
    """True for objects the CUDA backend accepts (any ``__cuda_array_interface__``, and
    torch CUDA tensors: a bfloat16 one has no interface of its own)."""
    if is_torch(obj):
        return bool(getattr(obj, "is_cuda", False))
    return hasattr(obj, "__cuda_array_interface__") or _is_numba_device_array(obj)


def is_array(obj: Any) -> bool:
    """True for the arrays pyopt takes: NumPy arrays and CUDA arrays."""
    return isinstance(obj, np.ndarray) or is_cuda_array(obj)


def is_torch(obj: Any) -> bool:
    """True for torch objects (tensors, dtypes), recognised without importing torch."""
    return type(obj).__module__.split(".")[0] == "torch"


def host_value(value: Any) -> Any:
    """A NumPy copy of a torch tensor or a device array (a saved state entry); anything
    else (NumPy arrays, numbers, lists) as it is, for the caller to check."""
    return to_numpy(value) if is_torch(value) or is_cuda_array(value) else value


def type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def backend_of(arrays: Iterable[tuple[str, Any]], optional: Iterable[str] = ()) -> str:
    """The backend for one call, from its ``(name, array)`` pairs.

    A None is allowed only for the names in ``optional`` (absent arguments such as an
    affine ``weight``); anywhere else it is a missing array.

    Raises:
        TypeError: an argument is neither a NumPy array nor a CUDA array (None, a list, a
            scalar, a torch CPU tensor...), or host and device arrays are mixed (the
            message names the first argument that disagrees).
    """
    optional = frozenset(optional)
    backend = first = None
    for name, arr in arrays:
        if arr is None and name in optional:
            continue
        if isinstance(arr, np.ndarray):
            kind = "cpu"
        elif is_cuda_array(arr):
            kind = "cuda"
        else:
            hint = ""
            if is_torch(arr):
                hint = " (a torch CPU tensor: pass tensor.numpy(), a zero-copy view)"
            raise TypeError(
                f"{name} must be a NumPy array or a CUDA array (CuPy, Numba device array, "
                f"torch CUDA tensor), got {'None' if arr is None else type_name(arr)}{hint}"
            )
        if backend is None:
            backend, first = kind, name
        elif kind != backend:
            where = {"cpu": "host (NumPy)", "cuda": "device (CUDA)"}
            raise TypeError(
                f"{name} is a {where[kind]} array but {first} is a {where[backend]} array; "
                "all arrays of one call must be on the same device"
            )
    if backend is None:
        raise TypeError("no array arguments were given")
    if backend == "cuda":
        require_cuda()
    return backend


_TORCH_TO_NUMPY = {
    "torch.float16": np.float16,
    "torch.bfloat16": ml_dtypes.bfloat16,
    "torch.float32": np.float32,
    "torch.float64": np.float64,
    "torch.int32": np.int32,
    "torch.int64": np.int64,
}


# The 16-bit float formats. Kernels hold their data as uint16 bit patterns (see the
# conversions in ``kernels/rules.py``) and compute in float32: every kernel-facing array
# a Call hands out (``contiguous``, ``inplace``, ``view``, ``empty``'s second array) is a
# uint16 view of a float16/bfloat16 array.
SIXTEEN_BIT = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
BITS = np.dtype(np.uint16)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype kernels compute ``dtype`` data in: float32 for the 16-bit formats."""
    return np.dtype(np.float32) if dtype in SIXTEEN_BIT else np.dtype(dtype)


def format_of(dtype: np.dtype) -> str:
    """The name the kernels know ``dtype`` by: "float16", "bfloat16", "float32"..."""
    return np.dtype(dtype).name


def _bits(arr: Any) -> Any:
    """``arr`` (a NumPy or Numba array) as its uint16 bits when it is 16-bit."""
    return arr.view(BITS) if arr.dtype in SIXTEEN_BIT else arr


def cuda_interface_owner(arr: Any) -> Any:
    """An object with ``arr``'s ``__cuda_array_interface__``: ``arr``, or for a torch
    bfloat16 tensor (which has none) its uint16 view."""
    if is_torch(arr) and str(arr.dtype) == "torch.bfloat16":
        import torch

        return arr.view(torch.uint16)
    return arr


def dtype_of(arr: Any) -> np.dtype:
    """The NumPy dtype of a NumPy, CuPy, Numba or torch array."""
    dt = arr.dtype
    if type(dt).__module__ == "torch":
        key = str(dt)
        if key not in _TORCH_TO_NUMPY:
            raise TypeError(f"unsupported torch dtype {key}")
        return np.dtype(_TORCH_TO_NUMPY[key])
    return np.dtype(dt)


class CpuCall:
    """The CPU side of one call: NumPy arrays are already what the kernels take."""

    library = "numpy"
    stream = None
    # Keyword arguments of every kernel launcher call: the CPU launchers take no stream.
    kernel_kwargs: Mapping[str, Any] = MappingProxyType({})

    def to_host(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` itself: host memory already."""
        return arr

    def contiguous(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` itself when it is C-contiguous and writeable, else a C-contiguous copy.

        The kernels are compiled for writeable arrays only: a read-only input (a
        ``np.load(mmap_mode="r")`` array) is read through a copy instead of making Numba
        compile (or fail to type) a read-only specialization of every kernel.
        """
        if arr.flags.c_contiguous and arr.flags.writeable:
            return _bits(arr)
        return _bits(np.array(arr, order="C"))

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty(shape, dtype=dtype)
        return out, _bits(out)

    def full(self, shape: tuple[int, ...], value: float, dtype: np.dtype) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    def check_inplace(self, name: str, arr: np.ndarray) -> None:
        """ValueError unless ``arr`` can be updated in place: writeable, and no two of its
        elements share memory (a zero stride, as torch refuses)."""
        flags = arr.flags
        if not flags.writeable:
            raise ValueError(f"{name} is updated in place but is read-only")
        if not flags.forc and _may_self_overlap(arr.shape, arr.strides, arr.itemsize):
            raise ValueError(
                f"{name} is updated in place but more than one of its elements refers to a "
                f"single memory location (strides {arr.strides}); pass a copy"
            )

    def inplace(self, arr: np.ndarray) -> tuple[np.ndarray, Any]:
        """A contiguous array to update and a write-back (None when it is ``arr`` itself)."""
        if arr.flags.c_contiguous:
            return _bits(arr), None
        work = np.ascontiguousarray(arr)
        return _bits(work), functools.partial(np.copyto, arr, work)


def _may_self_overlap(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether two elements of a strided array may share memory.

    Sufficient test for "no overlap": with the axes of extent > 1 sorted by |stride|, each
    stride steps past everything the smaller ones span. Views NumPy makes (slices,
    transposes, reshapes) pass; a zero stride or an ``as_strided`` overlap fails.
    """
    if 0 in shape:
        return False
    span = itemsize
    for extent, stride in sorted(
        ((n, abs(s)) for n, s in zip(shape, strides, strict=True) if n > 1), key=lambda t: t[1]
    ):
        if stride < span:
            return True
        span = stride * (extent - 1) + span
    return False


class CudaCall:
    """The CUDA side of one call: the caller's library, its stream, zero-copy views.

    The library of ``like`` (CuPy, torch or Numba) decides the type of the arrays handed
    back, and its current stream is the stream every kernel of the call is queued on.
    """

    def __init__(self, like: Any):
        from numba import cuda

        self._cuda = cuda
        module = type(like).__module__.split(".")[0]
        self.library = module if module in ("cupy", "torch") else "numba"
        if self.library == "cupy":
            import cupy

            ptr = cupy.cuda.get_current_stream().ptr
        elif self.library == "torch":
            import torch

            ptr = torch.cuda.current_stream(like.device).cuda_stream
        else:
            ptr = 0
        self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        self.kernel_kwargs: Mapping[str, Any] = MappingProxyType({"stream": self.stream})
        self._like = like

    def to_host(self, arr: Any) -> np.ndarray:
        """A NumPy copy of the device array ``arr``, once the stream's work is done."""
        host = arr.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return host

    def view(self, arr: Any) -> Any:
        """A Numba device array over ``arr``'s memory (no copy, no stream sync); uint16
        bits for a 16-bit array (a torch bfloat16 tensor, which has no
        ``__cuda_array_interface__``, through its uint16 view)."""
        if _is_numba_device_array(arr):
            return _bits(arr)
        return _bits(self._cuda.as_cuda_array(cuda_interface_owner(arr), sync=False))

    def contiguous(self, arr: Any) -> Any:
        """A C-contiguous Numba view of ``arr``, gathering a copy only when needed."""
        from pyopt.kernels.cuda.copy import as_contiguous

        return as_contiguous(self.view(arr), self.stream)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, Any]:
        """A new array of the caller's type and its Numba view, on the caller's device."""
        if self.library == "cupy":
            import cupy

            out = cupy.empty(shape, dtype=dtype)
        elif self.library == "torch":
            import torch

            tdtype = getattr(torch, np.dtype(dtype).name)  # bfloat16 is torch.bfloat16
            out = torch.empty(shape, dtype=tdtype, device=self._like.device)
        else:
            out = self._cuda.device_array(shape, dtype=dtype, stream=self.stream)
            return out, _bits(out)
        return out, self.view(out)

    def full(self, shape: tuple[int, ...], value: float, dtype: np.dtype) -> Any:
        """A Numba device array filled with ``value`` (for absent affine parameters)."""
        return self._cuda.to_device(np.full(shape, value, dtype=dtype), stream=self.stream)

    def check_inplace(self, name: str, arr: Any) -> None:
        if not self.view(arr).is_c_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous on CUDA")

    def inplace(self, arr: Any) -> tuple[Any, Any]:
        """The array's own memory to update (checked contiguous); no write-back needed."""
        return self.view(arr), None


def kernels_for(backend: str, family: str) -> Any:
    """The kernel module of ``family`` ("batchnorm", "optim", ...) for ``backend``.

    Imported on first use, so ``numba.cuda`` loads only when a CUDA array asks for it.
    """
    return importlib.import_module(f"pyopt.kernels.{backend}.{family}")


def call_for(backend: str, like: Any) -> CpuCall | CudaCall:
    """The per-call helper for ``backend``; ``like`` picks the CUDA library and stream."""
    return CpuCall() if backend == "cpu" else CudaCall(like)


def device_full(shape: tuple[int, ...], fill: float, dtype: np.dtype, device: str) -> Any:
    """A new array filled with ``fill`` on ``device`` ("cpu" or "cuda").

    NumPy on the CPU; on CUDA a CuPy array when CuPy is installed, else a Numba one.
    """
    host = np.full(shape, fill, dtype=dtype)
    if device == "cpu":
        return host
    if importlib.util.find_spec("cupy") is not None and not _cudasim():
        import cupy

        return cupy.asarray(host)
    from numba import cuda

    return cuda.to_device(host)


def to_numpy(arr: Any) -> np.ndarray:
    """A NumPy copy of a host or device array."""
    if isinstance(arr, np.ndarray):
        return arr.copy()
    if is_torch(arr):
        host = arr.detach().cpu()
        if str(host.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: through its bits
            import torch

            return host.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
        return host.numpy().copy()
    if hasattr(arr, "get") and type(arr).__module__.split(".")[0] == "cupy":
        return arr.get()
    if _is_numba_device_array(arr):
        return arr.copy_to_host()
    from numba import cuda

    return cuda.as_cuda_array(arr).copy_to_host()


def copy_into(dst: Any, src: np.ndarray) -> None:
    """Copy host data ``src`` into the existing array ``dst`` (host or device), in place."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
        return
    module = type(dst).__module__.split(".")[0]
    if module == "cupy":
        dst.set(np.ascontiguousarray(src))
    elif module == "torch":
        import torch

        src = np.ascontiguousarray(src)
        if src.dtype == ml_dtypes.bfloat16:  # NumPy has no bfloat16: through its bits
            dst.copy_(torch.from_numpy(src.view(BITS)).view(torch.bfloat16))
        else:
            dst.copy_(torch.from_numpy(src))
    elif _is_numba_device_array(dst):
        dst.copy_to_device(np.ascontiguousarray(src))
    else:
        from numba import cuda

        cuda.as_cuda_array(dst).copy_to_device(np.ascontiguousarray(src))


def assign(dst: Any, src: Any) -> None:
    """Copy the array ``src`` into ``dst`` in place, both on the same device."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
        return
    module = type(dst).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        cupy.copyto(dst, src)
    elif module == "torch":
        dst.copy_(src)
    elif _is_numba_device_array(dst):
        dst.copy_to_device(src)
    else:
        from numba import cuda

        cuda.as_cuda_array(dst).copy_to_device(src)


def array_module(name: str, arr: Any) -> Any:
    """NumPy for NumPy arrays, CuPy for CuPy arrays (the matmul layers' array library).

    Raises:
        TypeError: any other object (None, lists, Numba device arrays, torch tensors),
            naming the argument ``name``.
    """
    if isinstance(arr, np.ndarray):
        return np
    if type(arr).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    got = "None" if arr is None else type_name(arr)
    raise TypeError(
        f"{name} must be a NumPy or CuPy array, got {got} (the matmul layers run on NumPy "
        "or CuPy: pip install pyopt-kernels[cuda13])"
    )


def _cudasim() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def kernel_format(dtype: np.dtype) -> str | None:
    """The ``fmt`` a kernel launcher takes for data of ``dtype``: "float16"/"bfloat16"
    for the 16-bit formats (whose kernel-facing arrays are uint16 bits), else None."""
    return format_of(dtype) if np.dtype(dtype) in SIXTEEN_BIT else None
