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
    ``like``'s element type (``like`` an array), made with ``intrinsic``."""

    @intrinsic
    def address_as_pointer(typingctx, address, like):
        pointer = types.CPointer(like.dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address, like), codegen

    return address_as_pointer
