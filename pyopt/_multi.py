"""Multi-tensor launches: one kernel call per run of tensors that lie end to end in memory.

An optimizer step updates many tensors (ResNet-50: 161) with one rule. When the params,
the grads and every state tensor of consecutive entries are adjacent, C-contiguous pieces
of one allocation (a :class:`pyopt.optim.ParamBuffer`, or the flat state buffers the
optimizers allocate), the run is one 1-D array per column and takes one kernel call.
Separately allocated tensors still work: each is a run of its own, one call (one launch
on CUDA) per tensor.
"""

from __future__ import annotations

import itertools
import math
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pyopt._backend import cuda_interface_owner


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def _host_array(arr: Any) -> np.ndarray | None:
    """The NumPy array behind ``arr``: itself, or a simulator device array's storage."""
    if isinstance(arr, np.ndarray):
        return arr
    host = getattr(arr, "_ary", None)  # numba.cuda simulator arrays wrap a NumPy array
    return host if isinstance(host, np.ndarray) and "numba.cuda" in sys.modules else None


# id(array) -> (weak reference to it, its location): an array's memory never moves, and a
# step over a ParamBuffer meets the same param, grad and state views every time.
_LOCATIONS: dict[int, tuple[weakref.ref, tuple[int, int, int] | None]] = {}


def locate(arr: Any) -> tuple[int, int, int] | None:
    """``(owner, start address, nbytes)`` of a C-contiguous array, None otherwise.

    ``owner`` identifies the allocation for host (and simulator) arrays; device memory
    has no owner object in common between libraries, so CUDA arrays use 0 and adjacency
    alone decides. Memoized per array object (until it is garbage collected).
    """
    key = id(arr)
    hit = _LOCATIONS.get(key)
    if hit is not None and hit[0]() is arr:
        return hit[1]
    where = _locate(arr)
    try:
        ref = weakref.ref(arr, lambda _, key=key: _LOCATIONS.pop(key, None))
    except TypeError:  # not weakly referenceable: not memoized
        return where
    _LOCATIONS[key] = (ref, where)
    return where


def _locate(arr: Any) -> tuple[int, int, int] | None:
    host = _host_array(arr)
    if host is not None:
        if not host.flags.c_contiguous:
            return None
        return id(_root(host)), host.__array_interface__["data"][0], host.nbytes
    cai = cuda_interface_owner(arr).__cuda_array_interface__
    shape, strides = tuple(cai["shape"]), cai.get("strides")
    itemsize = np.dtype(cai["typestr"]).itemsize
    if strides is not None and strides != _c_strides(shape, itemsize):
        return None
    return 0, cai["data"][0], itemsize * math.prod(shape)


def _byte_span(arr: Any) -> tuple[int, int]:
    """``[lo, hi)``: the addresses any element of ``arr`` occupies (strided arrays too)."""
    where = locate(arr)
    if where is not None:
        return where[1], where[1] + where[2]
    host = _host_array(arr)
    if host is not None:
        ptr, shape, strides, itemsize = (
            host.__array_interface__["data"][0],
            host.shape,
            host.strides,
            host.itemsize,
        )
    else:
        cai = cuda_interface_owner(arr).__cuda_array_interface__
        shape, itemsize = tuple(cai["shape"]), np.dtype(cai["typestr"]).itemsize
        ptr, strides = cai["data"][0], cai.get("strides") or _c_strides(shape, itemsize)
    if 0 in shape:
        return ptr, ptr
    lo = ptr + sum(min(0, s * (n - 1)) for n, s in zip(shape, strides, strict=True))
    hi = ptr + sum(max(0, s * (n - 1)) for n, s in zip(shape, strides, strict=True))
    return lo, hi + itemsize


def check_disjoint(named: Iterable[tuple[str, Any]]) -> None:
    """ValueError unless no two of the ``(name, array)`` pairs share memory.

    For arrays a call writes (params and optimizer state): an array given twice, or a
    state list aliasing the params, would be updated twice in one call. Decided from
    address spans, so two interleaved strided views count as sharing.
    """
    pairs = list(named)
    if len(pairs) < 2:
        return
    names, arrays = zip(*pairs, strict=True)
    spans = np.array([_byte_span(arr) for arr in arrays], dtype=np.int64)
    spans = spans[spans[:, 0] < spans[:, 1]]  # empty arrays share nothing
    order = np.argsort(spans[:, 0], kind="stable")
    lo, hi = spans[order, 0], spans[order, 1]
    reach = np.maximum.accumulate(hi)  # the furthest address of the spans before each
    clash = np.flatnonzero(lo[1:] < reach[:-1])
    if clash.size:
        k = clash[0] + 1
        first = int(np.flatnonzero(hi[:k] > lo[k])[0])
        kept = [n for n, (a, b) in zip(names, map(_byte_span, arrays), strict=True) if a < b]
        raise ValueError(
            f"{kept[order[k]]} shares memory with {kept[order[first]]}; arrays updated in "
            "place must not overlap"
        )


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


def runs(columns: Sequence[Sequence[Any] | None], keys: Sequence[Any] | None = None):
    """Split ``range(n)`` into ``(lo, hi)`` runs that one kernel call can update.

    Entries ``i-1`` and ``i`` share a run when, in every column that is not None, both
    arrays are C-contiguous, belong to one allocation and ``i`` starts where ``i-1``
    ends, and ``keys[i] == keys[i-1]`` (per-tensor values a call takes as one scalar,
    such as the step count).
    """
    cols = [c for c in columns if c is not None]
    n = len(cols[0])
    if n < 2:
        return [(0, n)]
    joined = np.ones(n - 1, dtype=bool)
    if keys is not None:
        keys = np.asarray(keys)
        joined &= keys[1:] == keys[:-1]
    for col in cols:
        # A non-contiguous entry gets an owner of its own (-1 - i): it joins nothing.
        where = np.array(
            [loc or (-1 - i, 0, 0) for i, loc in enumerate(map(locate, col))], dtype=np.int64
        )
        owner, start, nbytes = where[:, 0], where[:, 1], where[:, 2]
        joined &= (owner[1:] == owner[:-1]) & (start[:-1] + nbytes[:-1] == start[1:])
    bounds = [0, *(np.flatnonzero(~joined) + 1).tolist(), n]
    return list(itertools.pairwise(bounds))


def span(arrays: Sequence[Any]) -> Any:
    """One 1-D array over adjacent contiguous ``arrays`` (a run from :func:`runs`), or
    over the single array; no copy."""
    first = arrays[0]
    if len(arrays) == 1:
        return first.reshape(math.prod(first.shape))
    (_, start, _), (_, last, nbytes) = locate(first), locate(arrays[-1])
    host = _host_array(first)
    itemsize = np.dtype(first.dtype).itemsize if host is None else host.itemsize
    size = (last + nbytes - start) // itemsize
    if host is not None:
        flat = np.lib.stride_tricks.as_strided(host, shape=(size,), strides=(itemsize,))
        if host is first:
            return flat
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(flat)
    from numba import cuda

    cai = cuda_interface_owner(first).__cuda_array_interface__
    desc = {
        "shape": (size,),
        "typestr": cai["typestr"],
        "data": (cai["data"][0], False),
        "strides": None,
        "version": 3,
    }
    return cuda.from_cuda_array_interface(desc, owner=first, sync=False)


def run_pieces(arrays: Sequence[Any]) -> list[Any]:
    """One array per run of ``arrays`` (see :func:`runs`): a 1-D :func:`span` over a run of
    several, the array itself (any shape, possibly strided) when it is alone."""
    return [span(arrays[lo:hi]) if hi - lo > 1 else arrays[lo] for lo, hi in runs([arrays])]


def block_partials(
    call: Any,
    pieces: Sequence[Any],
    blocks: Callable[[int], int],
    launch: Callable[[Any, Any], None],
    columns: tuple[int, ...] = (),
) -> np.ndarray:
    """The host float64 rows of a fixed-block reduction over ``pieces``, in order.

    Each piece, as a contiguous 1-D array of ``n`` elements, gets ``blocks(n)`` rows of
    shape ``columns``, written by ``launch(flat, rows)``; the caller adds the rows in order
    (a result that does not depend on the thread count). On CUDA, one device-to-host copy.
    """
    flats = [call.contiguous(piece) for piece in pieces]
    flats = [flat.reshape(math.prod(flat.shape)) for flat in flats]
    counts = [blocks(flat.shape[0]) for flat in flats]
    _, out = call.empty((sum(counts), *columns), np.dtype(np.float64))
    start = 0
    for flat, count in zip(flats, counts, strict=True):
        if count:
            launch(flat, out[start : start + count])
        start += count
    return call.to_host(out)
