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

from .. import _codegen, config, philox, rules, specs
from ._launch import resident_blocks

# Elements per column each thread loads before it stores any (loads in flight). A
# compile-time constant: it sizes register arrays. Bytes in flight per SM come out about
# equal at 2 (float32 Adam: 64 registers, 4 blocks of 256 resident, 8 loads each) and at
# 4 (96 registers, 2 blocks, 16 loads); 2 keeps twice the warps to hide sqrt/div latency.
_UNROLL = 2

_RULES = specs.compiled_rules(cuda.jit(device=True, inline="always"))
_stream_word = philox.compiled(cuda.jit(device=True, inline="always")).stream_word


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
        return _HostPointer(address, np.asarray(like).dtype)

    _bit_casts = (rules.float32_bits, rules.float32_from_bits)

else:
    from numba.cuda.extending import intrinsic

    _address_as_pointer = _codegen.address_intrinsic(intrinsic)
    _bit_casts = _codegen.bitcast_intrinsics(intrinsic)

# The 16-bit conversions with the backend's bit casts (NumPy's scalar views under the
# simulator, which runs kernels as Python).
_CONVERSIONS = rules.compiled_conversions(cuda.jit(device=True, inline="always"), *_bit_casts)


def _source(spec: specs.RuleSpec, storage: specs.Storage) -> str:
    """The kernel of ``spec`` stored as ``storage``, as Python source."""
    formats = storage.formats(spec)
    k = len(formats)
    scalars = ", ".join(f"scalars[row, {j}]" for j in range(len(spec.scalars)))
    row_flags = [f"            {f} = flags[row, {j}] != 0" for j, f in enumerate(spec.flags)]
    pointers = [
        f"            c{c} = _address_as_pointer(segments[s, {c + 1}], {_codegen.like(fmt)})"
        for c, fmt in enumerate(formats)
    ]
    extra = [
        f"            {column} = segments[s, {k + 1 + e}]"
        for e, column in enumerate(storage.extra())
    ]
    # Registers hold the compute-type values of the columns the rule takes.
    registers = [
        f"    x{c} = cuda.local.array(_UNROLL, scalars.dtype)" for c in range(len(spec.columns))
    ]
    pad = " " * 24  # the element loop's body
    loads, stores = _codegen.element_update(
        spec,
        storage,
        lambda c: f"c{c}[j]",
        lambda c: f"x{c}[u]",
        "_stream_word(start + j, seed, offset)",
        scalars,
        pad,
    )
    nl = "\n"
    piece = [
        *row_flags,
        *pointers,
        *extra,
        "            i = a + cuda.threadIdx.x",
        "            while i < b:",
        "                for u in range(_UNROLL):",
        "                    j = i + u * cuda.blockDim.x",
        "                    if j < b:",
        *loads[:-1],
        "                for u in range(_UNROLL):",
        "                    j = i + u * cuda.blockDim.x",
        "                    if j < b:",
        loads[-1],
        *stores,
        "                i += _UNROLL * cuda.blockDim.x",
    ]
    conversions = nl.join(f"_{c} = _CONVERSIONS[{c!r}]" for c in _codegen.CONVERSION_NAMES)
    return f'''
import numpy as np
from numba import cuda

_{spec.name}_rule = _RULES["{spec.name}"]
{conversions}


@cuda.jit
def {specs.kernel_name(spec, storage)}(segments, offsets, first_segment, scalars, flags, chunk):
    """``rules.{spec.name}`` over every segment (see the module docstring)."""
    zero = scalars.dtype.type(0)
    f32_like = np.float32(0)
    bits_like = np.uint16(0)
    total = offsets[offsets.size - 1]
{nl.join(registers)}
    unit = cuda.blockIdx.x
    while unit < first_segment.size:
{_codegen.segment_walk("unit", nl.join(piece))}
        unit += cuda.gridDim.x
'''


def kernel(spec: specs.RuleSpec, storage: specs.Storage = specs.DEFAULT):
    """The update kernel of ``spec`` for ``storage``, generated on first use."""
    name = specs.kernel_name(spec, storage)
    if name not in globals():
        _codegen.define(globals(), f"optim{name[: -len('_kernel')]}", _source(spec, storage))
    return globals()[name]


def __getattr__(name: str):
    """A variant's kernel by its name (the PTX gate's rows name them), generated."""
    variant = specs.variant_of(name)
    if variant is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return kernel(*variant)


for _spec in specs.SPECS.values():  # the float32/float64 kernels, defined at import
    kernel(_spec)


def update(spec, segments, offsets, scalars, flags, stream=None, storage=specs.DEFAULT):
    """One fused step of ``spec`` over a segment table, in place: one launch.

    Args:
        spec: the rule (a :class:`pyopt.kernels.specs.RuleSpec`).
        segments, offsets, flags: host (NumPy) tables as for the CPU's ``update``; the
            addresses are device addresses of C-contiguous arrays of the scalars' dtype.
            Copied to the device on ``stream``.
        scalars: host ``(rows, len(spec.scalars))`` array in the compute dtype.
        stream: a numba stream, or None for the default stream.
        storage: the :class:`pyopt.kernels.specs.Storage` of the tensors.
    """
    if segments.shape[0] == 0 or offsets[-1] == 0:
        return
    chunk = int(config.CUDA_OPTIM_CHUNK)
    units = specs.unit_table(offsets, chunk)
    stream = cuda.default_stream() if stream is None else stream
    tables = [cuda.to_device(t, stream=stream) for t in (segments, offsets, units, scalars, flags)]
    grid = min(units.size, resident_blocks())
    kernel(spec, storage)[grid, config.CUDA_THREADS, stream](*tables, chunk)
