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

from pyopt.kernels import _codegen, config, specs
from pyopt.kernels.cpu._launch import parallel_launcher

_RULES = specs.compiled_rules(njit(inline="always", cache=True))
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


def _source(spec: specs.RuleSpec) -> str:
    """The element loop and the kernel of ``spec``, as Python source."""
    name, k = spec.name, len(spec.columns)
    columns = ", ".join(f"c{c}" for c in range(k))
    scalars = ", ".join(f"s{j}" for j in range(len(spec.scalars)))
    flags = "".join(f", {f}" for f in spec.flags)
    loads = [
        f"        x{c} = c{c}[i] if {state.read} else zero"
        for c, state in enumerate(spec.states, start=2)
    ]
    args = ", ".join(["c0[i]", "c1[i]", *(f"x{c}" for c in range(2, k)), scalars, *spec.rule_flags])
    stores = ["        c0[i] = r[0]"] + [
        f"        if {state.write}:\n            c{c}[i] = r[{c - 1}]"
        for c, state in enumerate(spec.states, start=2)
    ]
    views = [f"            c{c} = _piece(segments[s, {c + 1}], a, b, scalars)" for c in range(k)]
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
        keyword = "if" if not branches else "elif"
        branches.append(
            f"            {keyword} {test}:\n"
            f"                _{name}_loop({columns}, row_scalars{passed})"
        )
    piece = [f"            row_scalars = ({row_scalars},)", *row_flags, *views, *branches]
    nl = "\n"
    return f'''
from numba import njit, prange

_{name}_rule = _RULES["{name}"]


@njit(inline="always", cache=True)
def _{name}_loop({columns}, scalars{flags}):
    """``rules.{name}`` over one piece; the access flags are constants at every call."""
    zero = c0.dtype.type(0)
    {scalars}, = scalars
    for i in range(c0.size):  # from 0: no negative-index checks, so it vectorizes
{nl.join(loads)}
        r = _{name}_rule({args})
{nl.join(stores)}


@njit(parallel=True, cache=True, error_model="numpy")
def _{name}_kernel(segments, offsets, first_segment, scalars, flags, chunk):
    """``rules.{name}`` over every segment (see the module docstring)."""
    total = offsets[-1]
    for u in prange(first_segment.size):
{_codegen.segment_walk("u", nl.join(piece))}
'''


for _spec in specs.SPECS.values():
    _codegen.define(globals(), f"optim_{_spec.name}", _source(_spec))


@parallel_launcher
def update(spec, segments, offsets, scalars, flags, stream=None):
    """One fused step of ``spec`` (a :class:`pyopt.kernels.specs.RuleSpec`) over a
    segment table, in place.

    Args:
        spec: the rule.
        segments: int64 ``(n, 1 + len(spec.columns))``: each segment's scalar row, then
            the address of its param, grad and each state (0: a state its flags leave
            unused); C-contiguous arrays of the scalars' dtype.
        offsets: int64 ``(n + 1,)``: where each segment starts in the concatenated
            elements (``offsets[0] = 0``, ``offsets[-1]`` the total).
        scalars: ``(rows, len(spec.scalars))`` in the param dtype (float32 or float64).
        flags: uint8 ``(rows, len(spec.flags))``.
        stream: ignored (the CPU has none); accepted as on CUDA.
    """
    if segments.shape[0] == 0 or offsets[-1] == 0:
        return
    chunk = int(config.CPU_OPTIM_CHUNK)
    kernel = globals()[f"_{spec.name}_kernel"]
    kernel(segments, offsets, specs.unit_table(offsets, chunk), scalars, flags, chunk)
