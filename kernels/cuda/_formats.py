"""Loads and stores of any storage format in the CUDA kernels, one kernel per format.

``define(globals(), make)`` calls a module's kernel factory ``make(load, store,
compute)`` once per storage format of ``FORMATS`` and binds each kernel under its
registry name (:func:`registry_name`: the name ``kernels/cuda/gate.py`` compiles, tests
wrap and launchers look up at call time with :func:`lookup`). The formats: "float" (the
arrays hold their own float type; ``load`` and ``store`` are the identity, ``compute``
None: compute in the array's dtype),
"float16" and "bfloat16" (uint16 bit patterns, loaded to float32 and rounded once to
nearest even on store, ``compute(x)`` float32). The conversions are those of
``kernels/rules.py`` with LLVM bit casts (NumPy's scalar views under the simulator,
which runs kernels as Python).
"""

from __future__ import annotations

import numpy as np
from numba import config as numba_config
from numba import cuda

from .. import _codegen, rules

if numba_config.ENABLE_CUDASIM:
    _bit_casts = (rules.float32_bits, rules.float32_from_bits)
else:
    from numba.cuda.extending import intrinsic

    _bit_casts = _codegen.bitcast_intrinsics(intrinsic)

_CONVERSIONS = rules.compiled_conversions(cuda.jit(device=True, inline="always"), *_bit_casts)

FORMATS = ("float", "float16", "bfloat16")


_F32 = np.dtype(np.float32)


@cuda.jit(device=True, inline="always")
def _same(v):
    return v


@cuda.jit(device=True, inline="always")
def _own_dtype(x):
    return x.dtype


@cuda.jit(device=True, inline="always")
def _float32(x):
    return _F32


def conversions(fmt: str):
    """``(load, store, compute)`` of the storage format ``fmt`` (see the module docstring)."""
    if fmt == "float":
        return _same, _same, _own_dtype
    return _CONVERSIONS[f"{fmt}_to_float32"], _CONVERSIONS[f"float32_to_{fmt}"], _float32


def registry_name(op: str, fmt: str | None, prefix: str = "") -> str:
    """The module-level name of the ``op`` kernel for the storage format ``fmt`` (None or
    "float": float arrays): ``_{prefix}{op}_kernel``, or ``_{prefix}{op}_{fmt}_kernel``."""
    return f"_{prefix}{op}_kernel" if fmt in (None, "float") else f"_{prefix}{op}_{fmt}_kernel"


def define(namespace: dict, make, prefix: str = "") -> None:
    """Bind the kernels ``{op: kernel}`` of ``make(*conversions(fmt))``, for every format
    of ``FORMATS``, in ``namespace`` (a module's globals) under their registry names."""
    for fmt in FORMATS:
        for op, kernel in make(*conversions(fmt)).items():
            namespace[registry_name(op, fmt, prefix)] = kernel


def lookup(namespace: dict, op: str, fmt: str | None, prefix: str = ""):
    """The ``op`` kernel of ``fmt`` that ``namespace`` holds now (a test may have wrapped
    it): a launcher's way to its kernel."""
    return namespace[registry_name(op, fmt, prefix)]


def compute_type(dtype, fmt: str | None):
    """The scalar type that data of ``dtype`` stored as ``fmt`` (None: as itself) is
    computed in: ``dtype``'s own, float32 for a 16-bit format."""
    return np.dtype(dtype).type if fmt is None else np.float32


def kernel_format(dtype) -> str:
    """The ``FORMATS`` entry of data of NumPy ``dtype`` (uint16 bits: pass the format)."""
    name = np.dtype(dtype).name
    return name if name in rules.SIXTEEN_BIT else "float"
