"""Loads and stores of any storage format in the CUDA kernels, one kernel per format.

``specialize(make)`` calls the kernel factory ``make(load, store, compute)`` once per
storage format of ``FORMATS``: "float" (the arrays hold their own float type; ``load``
and ``store`` are the identity, ``compute`` None: compute in the array's dtype),
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


def specialize(make) -> dict:
    """``{fmt: make(*conversions(fmt))}`` for every format of ``FORMATS``."""
    return {fmt: make(*conversions(fmt)) for fmt in FORMATS}


def kernel_format(dtype) -> str:
    """The ``FORMATS`` entry of data of NumPy ``dtype`` (uint16 bits: pass the format)."""
    name = np.dtype(dtype).name
    return name if name in rules.SIXTEEN_BIT else "float"
