"""Loads and stores of any storage format in the CPU kernels, specialized per format.

A kernel takes the storage format of its data arrays as an argument ``fmt``, a string
(``_backend.format_of``: "float32" / "float64", the arrays hold that type; "float16" /
"bfloat16", they hold uint16 bit patterns) and calls ``numba.literally(fmt)``, so that
Numba compiles (and caches) one specialization per format in which these overloads
resolve at compile time: no branch on the format is left in a loop. 16-bit data is
computed in float32 (``compute``) and rounded once, to nearest even, on store
(``kernels/rules.py``).

Launchers call such a kernel through :func:`launch`, never directly: called from Python
with a ``str``, a ``literally`` kernel matches none of its compiled signatures (those take
the literal), so Numba re-runs its front end (bytecode to IR, inlining) on every call
before it finds the literal specialization. Measured on a 2-core EPYC: 424 such front-end
runs in one epoch of ``pyopt train``, 0.16 s each (27 s epochs). :func:`launch` calls the
kernel from a small jitted caller in which ``fmt`` is a constant, compiled once per
kernel, format and argument count.
"""

import threading

import numpy as np
from numba import njit, types
from numba.core.dispatcher import Dispatcher
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from pyopt.kernels import _codegen, rules

_CONVERSIONS = rules.compiled_conversions(njit(cache=True), *_codegen.bitcast_intrinsics(intrinsic))
_F32 = np.dtype(np.float32)
_CALLERS: dict[tuple, object] = {}
_CALLERS_LOCK = threading.Lock()


def launch(kernel, fmt: str, *args):
    """``kernel(*args, fmt)`` with ``fmt`` (its last argument) a compile-time literal.

    A ``kernel`` that is not a Numba dispatcher (a test's wrapper) is called as it is.
    """
    if not isinstance(kernel, Dispatcher):
        return kernel(*args, fmt)
    key = (kernel, fmt, len(args))
    caller = _CALLERS.get(key)
    if caller is None:
        with _CALLERS_LOCK:
            caller = _CALLERS.get(key)
            if caller is None:
                names = ", ".join(f"a{i}" for i in range(len(args)))
                namespace = {"kernel": kernel}
                source = f"def call({names}):\n    return kernel({names}, {fmt!r})\n"
                exec(compile(source, f"<{kernel.__name__} as {fmt}>", "exec"), namespace)
                caller = _CALLERS[key] = njit(namespace["call"])
    return caller(*args)


def _format(fmt) -> str | None:
    """The 16-bit format named by the typed argument ``fmt`` (a string literal), or None
    for a native float format."""
    if not isinstance(fmt, types.StringLiteral):
        raise TypingError(f"fmt must be a literal string (numba.literally), got {fmt}")
    return fmt.literal_value if fmt.literal_value in rules.SIXTEEN_BIT else None


def load(fmt, v):
    """``v`` (an element stored as ``fmt``) as its compute-type value."""


def store(fmt, v):
    """``v`` (a compute-type value) as stored in ``fmt``."""


def compute(fmt, dtype):
    """The dtype data of ``dtype`` stored as ``fmt`` is computed in."""


@overload(load)
def _load(fmt, v):
    name = _format(fmt)
    if name is None:
        return lambda fmt, v: v
    convert = _CONVERSIONS[f"{name}_to_float32"]
    return lambda fmt, v: convert(v)


@overload(store)
def _store(fmt, v):
    name = _format(fmt)
    if name is None:
        return lambda fmt, v: v
    convert = _CONVERSIONS[f"float32_to_{name}"]
    return lambda fmt, v: convert(np.float32(v))


@overload(compute)
def _compute(fmt, dtype):
    if _format(fmt) is None:
        return lambda fmt, dtype: dtype
    return lambda fmt, dtype: _F32


def decoded(fmt, src, scratch):
    """``src`` (a 1-D slice stored as ``fmt``) as compute-type values: ``src`` itself for a
    native float format, else ``scratch[:src.size]`` filled with the converted values.

    For reductions over cache-resident pieces (``scratch`` sized by :func:`staged`): the
    float code then runs unchanged on 16-bit data, which memory still reads once.
    """


def staged(fmt, n):
    """Elements of the ``decoded`` scratch a piece of ``n`` elements stored as ``fmt``
    needs: ``n`` for a 16-bit format, 0 for a native one (which is read in place)."""


@overload(decoded)
def _decoded(fmt, src, scratch):
    if _format(fmt) is None:
        return lambda fmt, src, scratch: src

    def convert_into(fmt, src, scratch):
        out = scratch[: src.size]
        for i in range(src.size):
            out[i] = load(fmt, src[i])
        return out

    return convert_into


@overload(staged)
def _staged(fmt, n):
    if _format(fmt) is None:
        return lambda fmt, n: 0
    return lambda fmt, n: n
