"""What generated kernels need: a real source file each, and raw addresses as pointers.

The optimizer kernels are generated from the specs of ``kernels/specs.py`` as Python
source (one scaffold per backend). :func:`define` executes such source into a module's
namespace from a file named by the source's hash, so that Numba's on-disk cache (which
keys a kernel by its file) keeps working across processes, and tracebacks show the code.

:func:`segment_walk` is the part of a segment-table kernel both backends share: the walk
of one unit of work over the segments it overlaps.

:func:`address_intrinsic` makes the intrinsic the segment-table kernels read tensors
through: an integer address (a table entry) as a typed pointer, for the CPU
(``numba.core.extending.intrinsic``; wrapped in ``numba.carray``) or CUDA
(``numba.cuda.extending.intrinsic``; indexed directly).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from numba import types


def _directory(package_dir: str) -> Path:
    """Where generated sources live: the package's ``__pycache__``, else (a read-only
    install) a per-user temporary folder."""
    for candidate in (
        Path(package_dir) / "__pycache__",
        Path(tempfile.gettempdir()) / f"pyopt-kernels-{os.getuid()}",
    ):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError("no writable folder for pyopt's generated kernels")


def define(namespace: dict[str, Any], stem: str, source: str) -> None:
    """Execute ``source`` into ``namespace`` (a module's globals) from a file
    ``<stem>_<hash>.py`` beside that module, written once (atomically) per source text."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = _directory(os.path.dirname(namespace["__file__"])) / f"{stem}_{digest}.py"
    if not path.exists() or path.read_text() != source:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(source)
        os.replace(partial, path)
    exec(compile(source, str(path), "exec"), namespace)


def segment_walk(unit: str, body: str) -> str:
    """Source of the walk of unit ``unit`` (a variable of the kernel) over the segments it
    overlaps, at 8 spaces: for each piece, ``body`` (source at 12 spaces) runs with ``s``
    the segment, ``[a, b)`` the piece's elements within it and ``row`` its scalar row.

    The kernel's arguments are those of ``specs.unit_table``'s users: ``segments``,
    ``offsets``, ``first_segment`` (the unit table) and ``chunk``; ``total`` is
    ``offsets[-1]``.
    """
    return f"""\
        lo = {unit} * chunk
        hi = min(lo + chunk, total)
        s = first_segment[{unit}]
        while s < segments.shape[0] and offsets[s] < hi:
            a = max(lo, offsets[s]) - offsets[s]
            b = min(hi, offsets[s + 1]) - offsets[s]
            row = segments[s, 0]
{body}
            s += 1"""


def address_intrinsic(intrinsic):
    """``address_as_pointer(address, like)``: the int64 ``address`` as a pointer to
    ``like``'s element type (``like`` an array, or a scalar of that type), made with
    ``intrinsic``."""

    @intrinsic
    def address_as_pointer(typingctx, address, like):
        pointer = types.CPointer(like.dtype if isinstance(like, types.Array) else like)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address, like), codegen

    return address_as_pointer


def bitcast_intrinsics(intrinsic):
    """``(float32_bits, float32_from_bits)``: a float32's IEEE bits as a uint32 and back,
    as LLVM bitcasts made with ``intrinsic`` (the CPU's or CUDA's); the rules of
    ``kernels/rules.py`` are bound to them in place of NumPy's scalar views."""

    def bitcast(target):
        @intrinsic
        def cast(typingctx, x):
            source = types.uint32 if target is types.float32 else types.float32

            def codegen(context, builder, signature, args):
                value = context.cast(builder, args[0], x, source)
                return builder.bitcast(value, context.get_value_type(target))

            return target(x), codegen

        return cast

    return bitcast(types.uint32), bitcast(types.float32)


# --- the element update of an optimizer kernel, for any storage ----------------------


def _load(fmt: str | None, element: str) -> str:
    """Source of the compute-type value of ``element`` stored as ``fmt``."""
    return f"_{fmt}_to_float32({element})" if fmt in ("float16", "bfloat16") else element


def _store(fmt: str | None, value: str) -> str:
    """Source of ``value`` (compute type) as stored in ``fmt``, rounded to nearest even."""
    return f"_float32_to_{fmt}({value})" if fmt in ("float16", "bfloat16") else value


def like(fmt: str | None) -> str:
    """The name, in a kernel, of the value whose type a column stored as ``fmt`` is read
    as: the scalars' (``scalars``), float32 (``f32_like``) or uint16 bits
    (``bits_like``); the kernels define the last two as typed zeros."""
    return {None: "scalars", "float32": "f32_like"}.get(fmt, "bits_like")


# Bound in every optimizer kernel module: the conversions its stores and loads call.
CONVERSION_NAMES = (
    "bfloat16_to_float32",
    "float32_to_bfloat16",
    "float32_to_bfloat16_stochastic",
    "float16_to_float32",
    "float32_to_float16",
)


def element_update(spec, storage, element, value, word, scalars, pad):
    """Source lines of one element's update of ``spec`` stored as ``storage``: loads,
    then the rule, then stores; each line at indent ``pad``, stores of a state guarded by
    its write flag.

    Args:
        element: column c -> the source of its stored element (``c3[i]``).
        value: column c -> the variable its compute-type value is loaded into; column 0's
            holds the master's value where there is a master.
        word: source of the element's random uint32 (stochastic rounding).
        scalars: source of the rule's scalar arguments, comma-separated.
    Returns:
        ``(loads, stores)``: lists of source lines; the rule's result is ``r``.
    """
    formats = storage.formats(spec)
    master = len(spec.columns)  # the master's column, when there is one
    loads = [
        f"{pad}{value(0)} = "
        + (element(master) if storage.master else _load(formats[0], element(0))),
        f"{pad}{value(1)} = {_load(formats[1], element(1))}",
    ]
    for c, state in enumerate(spec.states, start=2):
        loads.append(f"{pad}{value(c)} = {_load(formats[c], element(c))} if {state.read} else zero")
    args = ", ".join([*(value(c) for c in range(len(spec.columns))), scalars, *spec.rule_flags])
    loads.append(f"{pad}r = _{spec.name}_rule({args})")
    if storage.master:
        stores = [
            f"{pad}{element(master)} = r[0]",
            f"{pad}{element(0)} = {_store(formats[0], 'r[0]')}",
        ]
    elif storage.stochastic:
        stores = [f"{pad}{element(0)} = _float32_to_bfloat16_stochastic(r[0], {word})"]
    else:
        stores = [f"{pad}{element(0)} = {_store(formats[0], 'r[0]')}"]
    for c, state in enumerate(spec.states, start=2):
        stored = _store(formats[c], f"r[{c - 1}]")
        stores.append(f"{pad}if {state.write}:\n{pad}    {element(c)} = {stored}")
    return loads, stores
