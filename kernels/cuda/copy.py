"""C-contiguous copies of strided device arrays (any rank, any strides: zero, negative).

The public layer hands the kernels C-contiguous arrays; a non-contiguous Numba device
array is made contiguous here (CuPy and torch make their own arrays contiguous).

The source is described by its buffer (from ``__cuda_array_interface__``, or the NumPy
``__array_interface__`` of a simulator array), its shape and its strides in elements.
Dimensions of size 1 are dropped and adjacent dimensions that step through memory as
one are merged; the kernel gathers up to ``_RANK`` dimensions, and the launcher loops
over any outer ones. The kernel reads a 1-D view of the span of memory the source
touches, starting at its lowest address, so that every offset is non-negative.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import config
from ._launch import resident_blocks

_RANK = 4  # dimensions gathered by one launch (after merging)


@cuda.jit(device=True, inline="always")
def _digits(v, n1, n2, n3):
    """``v`` as mixed-radix digits ``(i0, i1, i2, i3)`` of a C-order ``(·, n1, n2, n3)``."""
    i3 = v % n3
    q = v // n3
    i2 = q % n2
    q //= n2
    return q // n1, q % n1, i2, i3


@cuda.jit
def _gather_kernel(
    src,  # input, flat (span,): the memory the strided source touches, lowest address first
    dst,  # output, flat (n0 * n1 * n2 * n3,), C order
    shape,  # (n0, n1, n2, n3)
    strides,  # (s0, s1, s2, s3), in elements, any sign
    offset,  # position of element (0, 0, 0, 0) in src
):
    """``dst[i0, i1, i2, i3] = src[offset + Σ ik·sk]``: one read and one write per element.

    Grid-stride over ``dst`` (coalesced writes); the index digits advance incrementally
    by the stride, with carries, instead of being divided out per element.
    """
    _, n1, n2, n3 = shape  # the outermost digit needs no bound: e < total ends the loop
    s0, s1, s2, s3 = strides
    total = dst.size
    e = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    i0, i1, i2, i3 = _digits(e, n1, n2, n3)
    d0, d1, d2, d3 = _digits(step, n1, n2, n3)
    while e < total:
        # unsigned indices: non-negative, and no negative-index wraparound code
        dst[np.uint64(e)] = src[np.uint64(offset + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3)]
        e += step
        i3 += d3
        carry = 0
        if i3 >= n3:
            i3 -= n3
            carry = 1
        i2 += d2 + carry
        carry = 0
        if i2 >= n2:
            i2 -= n2
            carry = 1
        i1 += d1 + carry
        carry = 0
        if i1 >= n1:
            i1 -= n1
            carry = 1
        i0 += d0 + carry


def _describe(arr) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(address of element 0, shape, strides in elements) of a device array."""
    iface = getattr(arr, "__cuda_array_interface__", None)
    if iface is None:  # the CUDA simulator's arrays wrap NumPy arrays
        iface = arr.__array_interface__
    shape = tuple(int(n) for n in iface["shape"])
    itemsize = np.dtype(iface["typestr"]).itemsize
    byte_strides = iface.get("strides")
    if byte_strides is None:  # C-contiguous
        byte_strides = tuple(int(np.prod(shape[k + 1 :])) * itemsize for k in range(len(shape)))
    if any(s % itemsize for s in byte_strides):
        raise ValueError(f"strides {byte_strides} are not multiples of the itemsize {itemsize}")
    return iface["data"][0], shape, tuple(s // itemsize for s in byte_strides)


def _merge_dims(shape, strides) -> tuple[list[int], list[int]]:
    """Drop size-1 dimensions and merge neighbours that step through memory as one."""
    dims: list[list[int]] = []
    for n, s in zip(shape, strides, strict=True):
        if n == 1:
            continue
        if dims and dims[-1][1] == n * s:
            dims[-1] = [dims[-1][0] * n, s]
        else:
            dims.append([n, s])
    return [n for n, _ in dims], [s for _, s in dims]


def _span_view(arr, address: int, low: int, span: int, stream):
    """1-D view of ``span`` elements of ``arr``'s buffer starting ``low`` elements from
    element 0 (``low <= 0``)."""
    itemsize = arr.dtype.itemsize
    desc = {
        "shape": (span,),
        "strides": None,
        "typestr": arr.dtype.str,
        "data": (address + low * itemsize, False),
        "version": 3,
    }
    if hasattr(arr, "__cuda_array_interface__"):
        return cuda.from_cuda_array_interface(desc, owner=arr, sync=False)

    class _Buffer:  # the CUDA simulator: a NumPy view, copied in and out by the launch
        __array_interface__ = desc

    return np.asarray(_Buffer())


def as_contiguous(arr, stream=None):
    """A C-contiguous device array equal to ``arr``: ``arr`` itself when it already is one.

    Otherwise a new array on ``stream``, filled by a strided gather (one read of each
    element of ``arr`` and one write).

    Args:
        arr: a Numba device array of rank >= 1 with any strides (zero, negative).
        stream: a numba stream, or 0/None for the default stream.

    Returns:
        A C-contiguous device array of ``arr``'s shape and dtype.

    Example:
        >>> d = as_contiguous(cuda.to_device(np.arange(12.0).reshape(3, 4)).T)
    """
    if arr.is_c_contiguous():
        return arr
    stream = 0 if stream is None else stream
    out = cuda.device_array(arr.shape, arr.dtype, stream=stream)
    if out.size == 0:
        return out
    address, shape, strides = _describe(arr)
    low = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    high = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    src = _span_view(arr, address, low, high - low + 1, stream)
    shape, strides = _merge_dims(shape, strides)
    outer_shape, outer_strides = shape[:-_RANK], strides[:-_RANK]
    pad = _RANK - len(shape[-_RANK:])
    inner_shape = (1,) * pad + tuple(shape[-_RANK:])
    inner_strides = (0,) * pad + tuple(strides[-_RANK:])
    inner_size = int(np.prod(inner_shape))
    threads = config.CUDA_THREADS
    blocks = max(1, min(-(-inner_size // threads), resident_blocks()))
    flat_out = out.reshape(out.size)
    for k, index in enumerate(np.ndindex(*outer_shape)):
        offset = -low + sum(i * s for i, s in zip(index, outer_strides, strict=True))
        _gather_kernel[blocks, threads, stream](
            src,
            flat_out[k * inner_size : (k + 1) * inner_size],
            inner_shape,
            inner_strides,
            offset,
        )
    return out
