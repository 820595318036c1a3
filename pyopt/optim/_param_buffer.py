"""A flat parameter store: one allocation for all params, one for all grads."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pyopt import _checks
from pyopt._backend import copy_into, device_full, resolve_device


class ParamBuffer(Mapping):
    """All of a model's parameters in one contiguous buffer, and all grads in another.

    Hands out named views (``buf["conv1.weight"]``, ``buf.params``, ``buf.grads``) laid
    end to end in insertion order, so an optimizer over ``buf.params`` stepping with
    ``buf.grads`` updates the whole model with one kernel call per group and dtype
    (one launch on CUDA) instead of one per tensor.

    Args:
        shapes: dict name -> shape, or a list of shapes (named "0", "1", ...).
        dtype: float32 or float64.
        device: "auto", "cpu" or "cuda" (``$PYOPT_DEVICE`` decides "auto"); CUDA
            buffers are CuPy arrays when CuPy is installed, else Numba device arrays.

    Attributes:
        data, grad: the flat 1-D param and grad buffers (zero-initialized).
        params, grads: dicts name -> view of ``data`` / ``grad`` with its shape.

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import Adam, ParamBuffer
        >>> buf = ParamBuffer({"w": (2, 3), "b": (3,)})
        >>> buf["w"][:] = 1.0
        >>> buf.grads["w"][:] = 0.5
        >>> opt = Adam(buf.params, lr=0.1)
        >>> _ = opt.step(buf.grads)
        >>> [round(float(x), 4) for x in buf.data]  # w: one Adam step of lr; b: no grad
        [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
        dtype: Any = np.float32,
        device: str = "auto",
    ):
        if isinstance(shapes, Mapping):
            items = list(shapes.items())
        elif isinstance(shapes, Sequence) and not isinstance(shapes, str):
            items = [(str(i), s) for i, s in enumerate(shapes)]
        else:
            raise TypeError(
                f"shapes must be a dict name -> shape or a list of shapes, got {shapes!r}"
            )
        if not items:
            raise ValueError("shapes is empty")
        self.dtype = _checks.float_dtype_arg("dtype", dtype)
        self._slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in items:
            if not isinstance(name, str):
                raise TypeError(f"shapes keys must be str names, got {name!r}")
            shape = _checks.shape_arg(f"shapes[{name!r}]", shape)
            _checks.allocatable(f"shapes[{name!r}]", shape, self.dtype)
            size = math.prod(shape)
            self._slices[name] = (offset, size, shape)
            offset += size
        self.size = offset
        _checks.allocatable("shapes", (offset,), self.dtype)
        self.device = resolve_device(device)
        self.data = device_full((offset,), 0.0, self.dtype, self.device)
        self.grad = device_full((offset,), 0.0, self.dtype, self.device)
        self.params = {name: self._view(self.data, name) for name in self._slices}
        self.grads = {name: self._view(self.grad, name) for name in self._slices}

    def _view(self, flat: Any, name: str) -> Any:
        start, size, shape = self._slices[name]
        return flat[start : start + size].reshape(shape)

    def __getitem__(self, name: str) -> Any:
        return self.params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._slices)

    def __len__(self) -> int:
        return len(self._slices)

    def offset(self, name: str) -> slice:
        """The slice of the flat buffers that ``name`` occupies."""
        start, size, _ = self._slices[name]
        return slice(start, start + size)

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        copy_into(self.grad, np.zeros(self.size, dtype=self.dtype))

    def load(self, values: Mapping[str, Any]) -> None:
        """Copy host arrays into the named params.

        Every entry is checked and converted to the buffer's dtype before the first copy,
        so values that do not fit change nothing.

        Raises:
            TypeError: ``values`` is not a dict, or an entry does not hold real numbers.
            ValueError: a name that is not a param of the buffer, or an entry of the
                wrong shape.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a dict name -> array, got {type(values).__name__}")
        converted = {}
        for name, value in values.items():
            where = f"values[{name!r}]"
            if name not in self._slices:
                raise ValueError(f"{where}: the buffer has no param named {name!r}")
            converted[name] = _checks.numeric_host_array(where, value, self.dtype)
            _checks.shape_is(where, converted[name], self._slices[name][2], "its param's")
        for name, value in converted.items():
            copy_into(self.params[name], value)

    def __repr__(self) -> str:
        return f"ParamBuffer({len(self)} tensors, {self.size} {self.dtype} params, {self.device})"
