"""Fused optimizer steps on the CPU: one ``@njit(parallel=True, cache=True)`` kernel per rule,
generated from its spec (``kernels/specs.py``), over a segment table of any tensors.

A step is one call: the tensors of every segment (separate allocations, param groups,
step counts: see ``kernels/specs.py``) are one concatenated element space, cut into units
of ``config.CPU_OPTIM_CHUNK`` elements that ``prange`` shares out to the threads (equal
units whatever the tensor sizes, so the threads get equal work). A unit walks the
segments it overlaps; for each piece it reads the segment's scalar row and flags, views
the piece's columns as arrays (``numba.carray`` over the table's addresses) and runs the
element loop, which calls the spec's rule of ``kernels/rules.py`` and stores what the
rule returns. Each element is read once and written once (Adam float32: 28 B/param) and
no fastmath flag is set, so float32 steps round like torch's single-tensor
implementation.

Vectorization. A flag that decides whether a state is read or written (the spec's
``access_flags``: amsgrad, SGD's buffer and first step, RMSprop's centered and momentum
buffer) is branched on once per piece, outside the element loop, and each branch inlines
the loop with that flag a constant, so LLVM folds the access away and vectorizes each copy
(LLVM does not unswitch these loops on its own: written as one loop, some flag
combinations ran 2-12x slower). The conditions that only choose between arithmetic
(weight decay, Nesterov, lerp's form, momentum's value) stay inside the rule: loop-
invariant, they become uniform selects in the vectorized loop.

Kernels compile lazily, one specialization per dtype on first use, and are cached on disk.
"""

from __future__ import annotations

import itertools

from numba import carray, njit
from numba.core.extending import intrinsic

from pyopt.kernels import _codegen, config, rules, specs
from pyopt.kernels.cpu._launch import parallel_launcher
from pyopt.kernels.cpu.random import PHILOX

_RULES = specs.compiled_rules(njit(cache=True))
_CONVERSIONS = rules.compiled_conversions(njit(cache=True), *_codegen.bitcast_intrinsics(intrinsic))
_stream_block, _stream_word = PHILOX.stream_block, PHILOX.stream_word
_address_as_pointer = _codegen.address_intrinsic(intrinsic)


@njit(inline="always", cache=True)
def _piece(address, start, stop, like):
    """Elements ``[start, stop)`` of the tensor at ``address`` (``like``'s dtype), as an
    array; an unused state (address 0) is never indexed."""
    return carray(_address_as_pointer(address, like), stop)[start:stop]


def _access_classes(spec: specs.RuleSpec) -> list[list[dict[str, bool]]]:
    """The combinations of ``spec``'s access flags, grouped by the states they read and
    write (SGD without a buffer reads and writes none, first step or not)."""
    classes: dict[tuple[bool, ...], list[dict[str, bool]]] = {}
    for values in itertools.product((True, False), repeat=len(spec.access_flags)):
        combo = dict(zip(spec.access_flags, values, strict=True))
        access = tuple(
            spec.uses(state, how, combo) for state in spec.states for how in ("read", "write")
        )
        classes.setdefault(access, []).append(combo)
    return list(classes.values())


def _source(spec: specs.RuleSpec, storage: specs.Storage) -> str:
    """The element loop and the kernel of ``spec`` stored as ``storage``, as Python source."""
    name, kernel = spec.name + storage.suffix, specs.kernel_name(spec, storage)
    formats = storage.formats(spec)
    k = len(formats)
    columns = ", ".join(f"c{c}" for c in range(k))
    scalars = ", ".join(f"s{j}" for j in range(len(spec.scalars)))
    flags = "".join(f", {f}" for f in spec.flags)
    nl = "\n"
    if storage.stochastic:
        loop = _stochastic_loop(spec, storage, name, columns, scalars, flags)
    else:
        loads, stores = _codegen.element_update(
            spec, storage, lambda c: f"c{c}[i]", lambda c: f"x{c}", "", scalars, " " * 8
        )
        loop = f'''
@njit(inline="always", cache=True)
def _{name}_loop({columns}, scalars, zero{flags}):
    """``rules.{spec.name}`` over one piece; the access flags are constants at every call."""
    {scalars}, = scalars
    for i in range(c0.size):  # from 0: no negative-index checks, so it vectorizes
{nl.join([*loads, *stores])}
'''
    views = [
        f"            c{c} = _piece(segments[s, {c + 1}], a, b, {_codegen.like(fmt)})"
        for c, fmt in enumerate(formats)
    ]
    extra = [
        f"            {column} = segments[s, {k + 1 + e}]"
        for e, column in enumerate(storage.extra())
    ]
    row_scalars = ", ".join(f"scalars[row, {j}]" for j in range(len(spec.scalars)))
    row_flags = [f"            {f} = flags[row, {j}] != 0" for j, f in enumerate(spec.flags)]
    # One branch per distinct way of accessing the states, calling the loop with the flags
    # that decide it constant (the others pass through as values).
    branches = []
    for combos in _access_classes(spec):
        constant = {f: combos[0][f] for f in spec.access_flags if len({c[f] for c in combos}) == 1}
        test = (
            " or ".join(
                "(" + " and ".join(f if c[f] else f"not {f}" for f in c) + ")" for c in combos
            )
            if spec.access_flags
            else "True"
        )
        passed = "".join(f", {constant.get(f, f)}" for f in spec.flags)
        stream_args = ", seed, offset, start + a" if storage.stochastic else ""
        keyword = "if" if not branches else "elif"
        branches.append(
            f"            {keyword} {test}:\n"
            f"                _{name}_loop({columns}, row_scalars, zero{stream_args}{passed})"
        )
    piece = [
        f"            row_scalars = ({row_scalars},)",
        *row_flags,
        *views,
        *extra,
        *branches,
    ]
    conversions = nl.join(f"_{c} = _CONVERSIONS[{c!r}]" for c in _codegen.CONVERSION_NAMES)
    return f'''
import numpy as np
from numba import njit, prange

_{spec.name}_rule = _RULES["{spec.name}"]
{conversions}

{loop}

@njit(parallel=True, cache=True, error_model="numpy")
def {kernel}(segments, offsets, first_segment, scalars, flags, chunk):
    """``rules.{spec.name}`` over every segment (see the module docstring)."""
    total = offsets[-1]
    zero = scalars.dtype.type(0)
    f32_like = np.float32(0)
    bits_like = np.uint16(0)
    for u in prange(first_segment.size):
{_codegen.segment_walk("u", nl.join(piece))}
'''


def _stochastic_loop(spec, storage, name, columns, scalars, flags) -> str:
    """The element loop of a stochastic-rounding variant, as source: element ``k`` of the
    stream is lane ``k % 4`` of Philox block ``k // 4``, so the piece's whole blocks take
    one Philox call per 4 elements (its first and last elements, outside whole blocks, a
    call each).

    The element's update is written out at each of its six uses rather than called as an
    ``inline="always"`` function: Numba's inlining of a function that is itself inlined
    doubles its process-wide block-label counter (see ``kernels/rules.py``)."""
    nl = "\n"

    def element(i: str, word: str, pad: str) -> str:
        loads, stores = _codegen.element_update(
            spec, storage, lambda c: f"c{c}[{i}]", lambda c: f"x{c}", word, scalars, pad
        )
        return nl.join([*loads, *stores])

    lanes = nl.join(element(f"i + {lane}", f"w{lane}", " " * 8) for lane in range(4))
    return f'''
@njit(inline="always", cache=True)
def _{name}_loop({columns}, scalars, zero, seed, offset, base{flags}):
    """``rules.{spec.name}`` over one piece whose element 0 is element ``base`` of the
    stream; the access flags are constants at every call."""
    {scalars}, = scalars
    n = c0.size
    head = min((4 - base % 4) % 4, n)
    blocks = (n - head) // 4
    for i in range(head):
        word = _stream_word(base + i, seed, offset)
{element("i", "word", " " * 8)}
    block = (base + head) // 4  # the piece's first whole block
    for q in range(blocks):
        w0, w1, w2, w3 = _stream_block(block + q, seed, offset)
        i = head + 4 * q
{lanes}
    for i in range(head + 4 * blocks, n):
        word = _stream_word(base + i, seed, offset)
{element("i", "word", " " * 8)}
'''


def kernel(spec: specs.RuleSpec, storage: specs.Storage = specs.DEFAULT):
    """The update kernel of ``spec`` for ``storage``, generated on first use."""
    name = specs.kernel_name(spec, storage)
    if name not in globals():
        _codegen.define(globals(), f"optim{name[: -len('_kernel')]}", _source(spec, storage))
    return globals()[name]


for _spec in specs.SPECS.values():  # the float32/float64 kernels, defined at import
    kernel(_spec)


@parallel_launcher
def update(spec, segments, offsets, scalars, flags, stream=None, storage=specs.DEFAULT):
    """One fused step of ``spec`` (a :class:`pyopt.kernels.specs.RuleSpec`) over a
    segment table, in place.

    Args:
        spec: the rule.
        segments: int64 ``(n, 1 + len(storage.columns(spec)) + len(storage.extra()))``:
            each segment's scalar row, then the address of its param, grad, each state (0:
            a state its flags leave unused) and master, then ``storage.extra()``;
            C-contiguous arrays stored as ``storage.formats(spec)`` says.
        offsets: int64 ``(n + 1,)``: where each segment starts in the concatenated
            elements (``offsets[0] = 0``, ``offsets[-1]`` the total).
        scalars: ``(rows, len(spec.scalars))`` in the compute dtype (float32 or float64;
            float32 for 16-bit params).
        flags: uint8 ``(rows, len(spec.flags))``.
        stream: ignored (the CPU has none); accepted as on CUDA.
        storage: the :class:`pyopt.kernels.specs.Storage` of the tensors.
    """
    if segments.shape[0] == 0 or offsets[-1] == 0:
        return
    chunk = int(config.CPU_OPTIM_CHUNK)
    units = specs.unit_table(offsets, chunk)
    kernel(spec, storage)(segments, offsets, units, scalars, flags, chunk)
