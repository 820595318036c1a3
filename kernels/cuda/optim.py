"""CUDA fused optimizer steps: one kernel per rule, generated from its spec
(``kernels/specs.py``), one launch per step over a segment table of any tensors.

The segments' elements form one concatenated space cut into units of
``config.CUDA_OPTIM_CHUNK`` elements; block b takes units b, b + gridDim, ... (at most the
resident blocks, so a step of 161 tensors is one launch). A unit walks the segments it
overlaps, reads each one's scalar row and flags (uniform over the block: no divergence),
and its threads stride over the piece: each trip loads ``_UNROLL`` elements of every
column per thread, blockDim apart (each load instruction of a warp reads 32 consecutive
elements: coalesced), before computing and storing any of them, so Adam keeps 8 loads
per thread in flight. The per-element math is the spec's rule of ``kernels/rules.py``
compiled for the device, so the CPU and CUDA kernels differ only in how they schedule
elements. Tensors are read through the table's addresses (``_address_as_pointer``); a
state a segment's flags leave unused is never read or written. No shared memory.

References: torch.optim's single-tensor implementations (torch 2.13) for the rules;
PyTorch's ``multi_tensor_apply`` and NVIDIA Apex's ``TensorListMetadata`` for the one
launch over a tensor list.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import config as numba_config
from numba import cuda

from .. import _codegen, config, specs
from ._launch import resident_blocks

# Elements per column each thread loads before it stores any (loads in flight). A
# compile-time constant: it sizes register arrays. Bytes in flight per SM come out about
# equal at 2 (float32 Adam: 64 registers, 4 blocks of 256 resident, 8 loads each) and at
# 4 (96 registers, 2 blocks, 16 loads); 2 keeps twice the warps to hide sqrt/div latency.
_UNROLL = 2

_RULES = specs.compiled_rules(cuda.jit(device=True, inline="always"))


class _HostPointer:
    """The simulator's stand-in for a device pointer: its "device" memory is host memory,
    read and written here element by element through ctypes."""

    def __init__(self, address: int, dtype: np.dtype):
        self._address, self._dtype = int(address), np.dtype(dtype)

    def _element(self, i: int) -> np.ndarray:
        size = self._dtype.itemsize
        raw = (ctypes.c_char * size).from_address(self._address + int(i) * size)
        return np.frombuffer(raw, dtype=self._dtype)

    def __getitem__(self, i: int):
        return self._element(i)[0]

    def __setitem__(self, i: int, value) -> None:
        self._element(i)[0] = value


if numba_config.ENABLE_CUDASIM:

    def _address_as_pointer(address, like):
        return _HostPointer(address, like.dtype)

else:
    from numba.cuda.extending import intrinsic

    _address_as_pointer = _codegen.address_intrinsic(intrinsic)


def _source(spec: specs.RuleSpec) -> str:
    """The kernel of ``spec``, as Python source."""
    name, k = spec.name, len(spec.columns)
    scalars = ", ".join(f"scalars[row, {j}]" for j in range(len(spec.scalars)))
    row_flags = [f"            {f} = flags[row, {j}] != 0" for j, f in enumerate(spec.flags)]
    pointers = [
        f"            c{c} = _address_as_pointer(segments[s, {c + 1}], scalars)" for c in range(k)
    ]
    registers = [f"    x{c} = cuda.local.array(_UNROLL, scalars.dtype)" for c in range(k)]
    pad = " " * 24  # the element loop's body
    loads = [f"{pad}x0[u] = c0[j]", f"{pad}x1[u] = c1[j]"] + [
        f"{pad}x{c}[u] = c{c}[j] if {state.read} else zero"
        for c, state in enumerate(spec.states, start=2)
    ]
    args = ", ".join([*(f"x{c}[u]" for c in range(k)), scalars, *spec.rule_flags])
    stores = [f"{pad}c0[j] = r[0]"] + [
        f"{pad}if {state.write}:\n{pad}    c{c}[j] = r[{c - 1}]"
        for c, state in enumerate(spec.states, start=2)
    ]
    nl = "\n"
    piece = [
        *row_flags,
        *pointers,
        "            i = a + cuda.threadIdx.x",
        "            while i < b:",
        "                for u in range(_UNROLL):",
        "                    j = i + u * cuda.blockDim.x",
        "                    if j < b:",
        *loads,
        "                for u in range(_UNROLL):",
        "                    j = i + u * cuda.blockDim.x",
        "                    if j < b:",
        f"                        r = _{name}_rule({args})",
        *stores,
        "                i += _UNROLL * cuda.blockDim.x",
    ]
    return f'''
from numba import cuda

_{name}_rule = _RULES["{name}"]


@cuda.jit
def _{name}_kernel(segments, offsets, first_segment, scalars, flags, chunk):
    """``rules.{name}`` over every segment (see the module docstring)."""
    zero = scalars.dtype.type(0)
    total = offsets[offsets.size - 1]
{nl.join(registers)}
    unit = cuda.blockIdx.x
    while unit < first_segment.size:
{_codegen.segment_walk("unit", nl.join(piece))}
        unit += cuda.gridDim.x
'''


for _spec in specs.SPECS.values():
    _codegen.define(globals(), f"optim_{_spec.name}", _source(_spec))


def update(spec, segments, offsets, scalars, flags, stream=None):
    """One fused step of ``spec`` over a segment table, in place: one launch.

    Args:
        spec: the rule (a :class:`pyopt.kernels.specs.RuleSpec`).
        segments, offsets, flags: host (NumPy) tables as for the CPU's ``update``; the
            addresses are device addresses of C-contiguous arrays of the scalars' dtype.
            Copied to the device on ``stream``.
        scalars: host ``(rows, len(spec.scalars))`` array in the param dtype.
        stream: a numba stream, or None for the default stream.
    """
    if segments.shape[0] == 0 or offsets[-1] == 0:
        return
    chunk = int(config.CUDA_OPTIM_CHUNK)
    units = specs.unit_table(offsets, chunk)
    stream = cuda.default_stream() if stream is None else stream
    tables = [cuda.to_device(t, stream=stream) for t in (segments, offsets, units, scalars, flags)]
    grid = min(units.size, resident_blocks())
    globals()[f"_{spec.name}_kernel"][grid, config.CUDA_THREADS, stream](*tables, chunk)
