"""Registry of every CUDA kernel and the signatures it is launched with; the PTX gate.

``KERNELS`` has one row per kernel: its module, its name, its signature with ``{t}``
standing for each dtype it is launched with. Adding a kernel adds a row here. The gate
compiles every (kernel, dtype) to PTX for ``CC`` (sm_90, the H100) with the real
numba-cuda compiler, which needs no GPU, and checks the PTX:

* float32 kernels contain no double-precision type or register (``.f64``, ``%fd``): a
  Python float literal or an int64/float32 mix silently computes in float64 (a row
  whose kernel accumulates in float64 by design says so with ``accumulates``, and its
  PTX is checked as that dtype's);
* no kernel uses local memory (``.local``): the per-thread register arrays of the
  unrolled loops must live in registers;
* ptxas (run through nvJitLink, also without a GPU, where ``cuda.bindings`` has it)
  spills nothing; its register count is reported.

It also lists ``@cuda.jit`` kernels of the registry's modules that have no row.

    python -m pyopt.kernels.cuda.gate    # JSON report on stdout; exit status 1 on failure

Run it with ``NUMBA_ENABLE_CUDASIM`` unset: the simulator has no compiler.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import dataclass

from .. import specs

CC = (9, 0)
_PACKAGE = "pyopt.kernels.cuda"
_F32_F64 = ("float32", "float64")


@dataclass(frozen=True)
class KernelSpec:
    """A kernel (``module.name`` under ``pyopt.kernels.cuda``) and how it is launched."""

    module: str
    name: str
    signature: str  # numba signature, "{t}" for the dtype
    dtypes: tuple[str, ...] = _F32_F64
    accumulates: str | None = None  # dtype it computes in, when not the launch dtype
    sixteen_bit: bool = False  # loads or stores 16-bit floats: its PTX must show u16 access

    @property
    def id(self) -> str:
        return f"{self.module}.{self.name}"


def _sig(*args: str) -> str:
    return f"void({', '.join(args)})"


# Argument types, "{t}" standing for the dtype: contiguous 1-D and 3-D arrays, a scalar;
# float64 2-D partials.
_A1, _A3, _T = "{t}[::1]", "{t}[:, :, ::1]", "{t}"
_I, _B, _DIMS = "int64", "boolean", "UniTuple(int64, 4)"
_I1, _I2D, _T2D, _U2D = "int64[::1]", "int64[:, ::1]", "{t}[:, ::1]", "uint8[:, ::1]"
# A 16-bit kernel's row: launched with uint16 bits for "{t}" (``_F``: a float32 scalar);
# its PTX must show 16-bit accesses, and, computing in float32, no float64.
_F, _F1, _F3 = "float32", "float32[::1]", "float32[:, :, ::1]"
_SIXTEEN_BIT_ROW = {"dtypes": ("uint16",), "sixteen_bit": True}
_SIXTEEN_BIT_F32 = {**_SIXTEEN_BIT_ROW, "accumulates": "float32"}

KERNELS: tuple[KernelSpec, ...] = (
    KernelSpec("batchnorm", "_bn_stats_kernel", _sig(_A1, _A3, _I, _I)),
    KernelSpec(
        "batchnorm", "_bn_stats_finalize_kernel", _sig(_A3, _A1, _A1, _A1, _A1, _B, _B, _T, _T)
    ),
    KernelSpec("batchnorm", "_bn_normalize_kernel", _sig(_A1, _A1, _A1, _A1, _A1, _A1, _I)),
    KernelSpec("batchnorm", "_bn_grad_kernel", _sig(_A1, _A1, _A1, _A3, _I, _I)),
    KernelSpec("batchnorm", "_bn_grad_finalize_kernel", _sig(_A3, _A1, _A1, _T, _A1, _A1, _T2D)),
    KernelSpec("batchnorm", "_bn_dx_kernel", _sig(_A1, _A1, _A1, _T2D, _A1, _I, _B)),
    # Data movement: also the uint16 bits of float16/bfloat16 arrays (u16 access checked).
    KernelSpec("copy", "_gather_kernel", _sig(_A1, _A1, _DIMS, _DIMS, _I), (*_F32_F64, "uint16")),
    KernelSpec(
        "clip",
        "_norm_partials_kernel",
        _sig(_A1, "float64[::1]", _I, "float64"),
        accumulates="float64",
    ),
    KernelSpec("clip", "_scale_kernel", _sig(_A1, _T)),
    KernelSpec("clip", "_clamp_kernel", _sig(_A1, _T, _T)),
    KernelSpec("random", "_dropout_kernel", _sig(_A1, _A1, _I, _T, "uint64", "uint64")),
    KernelSpec("random", "_uniform_kernel", _sig(_A1, _T, _T, "uint64", "uint64")),
    KernelSpec("random", "_normal_kernel", _sig(_A1, _T, _T, "uint64", "uint64")),
    # Their float16 / bfloat16 kernels: uint16 bits ("{t}") in and out, float32 scalars,
    # computed in float32 (the norm partials in float64, as for every dtype). Batch norm's
    # per-channel arrays and partials are float32 (the finalize kernels' float32 rows).
    *(
        spec
        for fmt in ("float16", "bfloat16")
        for spec in (
            KernelSpec(
                "batchnorm",
                f"_bn_stats_{fmt}_kernel",
                _sig(_A1, _F3, _I, _I),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "batchnorm",
                f"_bn_normalize_{fmt}_kernel",
                _sig(_A1, _F1, _F1, _F1, _F1, _A1, _I),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "batchnorm",
                f"_bn_grad_{fmt}_kernel",
                _sig(_A1, _A1, _F1, _F3, _I, _I),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "batchnorm",
                f"_bn_dx_{fmt}_kernel",
                _sig(_A1, _A1, _F1, "float32[:, ::1]", _A1, _I, _B),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "clip",
                f"_norm_partials_{fmt}_kernel",
                _sig(_A1, "float64[::1]", _I, "float64"),
                **_SIXTEEN_BIT_ROW,
                accumulates="float64",
            ),
            KernelSpec("clip", f"_scale_{fmt}_kernel", _sig(_A1, _F), **_SIXTEEN_BIT_F32),
            KernelSpec("clip", f"_clamp_{fmt}_kernel", _sig(_A1, _F, _F), **_SIXTEEN_BIT_F32),
            KernelSpec(
                "random",
                f"_dropout_{fmt}_kernel",
                _sig(_A1, _A1, _I, _F, "uint64", "uint64"),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "random",
                f"_uniform_{fmt}_kernel",
                _sig(_A1, _F, _F, "uint64", "uint64"),
                **_SIXTEEN_BIT_F32,
            ),
            KernelSpec(
                "random",
                f"_normal_{fmt}_kernel",
                _sig(_A1, _F, _F, "uint64", "uint64"),
                **_SIXTEEN_BIT_F32,
            ),
        )
    ),
    # The optimizer steps, one per rule spec and storage: (segments, offsets, first segment
    # per unit, scalars, flags, chunk). 16-bit storages compute in float32.
    *(
        KernelSpec(
            "optim",
            specs.kernel_name(spec, storage),
            _sig(_I2D, _I1, _I1, _T2D, _U2D, _I),
            dtypes=_F32_F64 if storage == specs.DEFAULT else ("float32",),
            sixteen_bit=storage != specs.DEFAULT,
        )
        for spec in specs.SPECS.values()
        for storage in specs.STORAGES
    ),
)


def cases(kernels=KERNELS) -> list[tuple[str, str, str]]:
    """``(kernel id, dtype, signature)`` of every compile the gate makes."""
    return [(k.id, t, k.signature.format(t=t)) for k in kernels for t in k.dtypes]


def kernel(kernel_id: str):
    """The kernel object (a numba dispatcher) registered as ``kernel_id``."""
    module, name = kernel_id.rsplit(".", 1)
    return getattr(importlib.import_module(f"{_PACKAGE}.{module}"), name)


_F64 = re.compile(r"\.f64\b|%fd\d")
_LOCAL = re.compile(r"\.local\b")


def _instructions(ptx: str) -> list[str]:
    return [s for s in (line.strip() for line in ptx.splitlines()) if s and not s.startswith("//")]


_GLOBAL_U16 = re.compile(r"\b(ld|st)\.global(\.\w+)*\.[ub]16\b")


def check_ptx(ptx: str, dtype: str, sixteen_bit: bool = False) -> dict[str, list[str]]:
    """The offending PTX lines: ``{"f64": [...], "local": [...]}`` (empty lists pass);
    with ``sixteen_bit``, ``"u16"`` is ``["no 16-bit global load or store"]`` when the
    PTX has none (the 16-bit data would be read as something else)."""
    lines = _instructions(ptx)
    f64 = [s for s in lines if _F64.search(s)] if dtype == "float32" else []
    result = {"f64": f64, "local": [s for s in lines if _LOCAL.search(s)]}
    if sixteen_bit:
        found = any(_GLOBAL_U16.search(s) for s in lines)
        result["u16"] = [] if found else ["no 16-bit global load or store"]
    return result


_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)


def ptxas_info(ptx: str) -> dict[str, int] | None:
    """ptxas's resource use for the kernel in ``ptx`` on ``CC``, through nvJitLink.

    ``{"registers", "stack_bytes", "spill_bytes"}``, or None where nvJitLink is missing.
    """
    try:
        from cuda.bindings import nvjitlink

        handle = nvjitlink.create(2, [f"-arch=sm_{CC[0]}{CC[1]}", "-Xptxas=-v"])
    except Exception:  # no cuda.bindings, or no libnvJitLink: the PTX checks still run
        return None
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    text = log.decode(errors="replace")
    frame = _PTXAS_FRAME.search(text)
    return {
        "registers": int(_PTXAS_REGISTERS.search(text)[1]),
        "stack_bytes": int(frame[1]),
        "spill_bytes": int(frame[2]) + int(frame[3]),
    }


def compile_case(pyfunc, signature: str, dtype: str, sixteen_bit: bool = False) -> dict:
    """Compile ``pyfunc`` (a kernel's Python function) for ``CC`` and check the result."""
    from numba import cuda

    try:
        ptx, _ = cuda.compile_ptx(pyfunc, signature, cc=CC)
        ptxas = ptxas_info(ptx)
    except Exception as exc:  # reported, not raised: one report covers every kernel
        return {"error": f"{type(exc).__name__}: {exc}", "f64": [], "local": [], "ptxas": None}
    return {"error": None, **check_ptx(ptx, dtype, sixteen_bit), "ptxas": ptxas}


def unregistered(kernels=KERNELS) -> list[str]:
    """``@cuda.jit`` kernels (not device functions) of the registry's modules with no row."""
    from numba.cuda.dispatcher import CUDADispatcher

    known = {k.id for k in kernels}
    missing = []
    for module in sorted({k.module for k in kernels}):
        for name, obj in vars(importlib.import_module(f"{_PACKAGE}.{module}")).items():
            is_kernel = isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
            if is_kernel and f"{module}.{name}" not in known:
                missing.append(f"{module}.{name}")
    return missing


def run(kernels=KERNELS) -> dict:
    """Compile every registered (kernel, dtype); ``{"cases": [...], "unregistered": [...]}``."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise RuntimeError("the PTX gate needs the real compiler: unset NUMBA_ENABLE_CUDASIM")
    results = []
    rows = {k.id: k for k in kernels}
    for kernel_id, dtype, signature in cases(kernels):
        row = rows[kernel_id]
        checked = row.accumulates or dtype
        sixteen_bit = row.sixteen_bit or dtype == "uint16"
        result = compile_case(kernel(kernel_id).py_func, signature, checked, sixteen_bit)
        results.append({"kernel": kernel_id, "dtype": dtype, "signature": signature, **result})
    return {"cases": results, "unregistered": unregistered(kernels)}


def passed(case: dict) -> bool:
    """Whether one compile passed every check."""
    spilled = case["ptxas"] is not None and (
        case["ptxas"]["spill_bytes"] or case["ptxas"]["stack_bytes"]
    )
    return not (case["error"] or case["f64"] or case["local"] or case.get("u16") or spilled)


def failed(report: dict) -> bool:
    return bool(report["unregistered"]) or not all(passed(c) for c in report["cases"])


def main() -> int:
    report = run()
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
