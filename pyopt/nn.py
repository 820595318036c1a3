"""Layers with torch's names, defaults and semantics, on NumPy or CUDA arrays.

Every layer has ``forward(x)`` (also ``layer(x)``) and ``backward(dy) -> dx``, which
differentiates the last forward call and writes the gradients of the layer's parameters
into ``<name>_grad`` (``weight_grad``, ``bias_grad``): overwritten by each backward, as
after torch's ``zero_grad(set_to_none=True)``. :class:`Sequential` chains layers, names
their parameters as torch does (``"0.weight"``) and can move them into one
:class:`~pyopt.optim.ParamBuffer` (:meth:`Sequential.flatten_parameters`), so that the
backward pass writes every gradient into one flat buffer and an optimizer step is one
kernel call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from pyopt import _checks, _random, init
from pyopt._backend import (
    array_module,
    assign,
    backend_of,
    copy_into,
    device_full,
    dtype_of,
    host_value,
    is_cuda_array,
    resolve_device,
    to_numpy,
)
from pyopt.functional import batch_norm, batch_norm_backward, dropout, dropout_backward

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CrossEntropyLoss",
    "Dropout",
    "Linear",
    "Module",
    "ReLU",
    "Sequential",
]


class Module:
    """Base of pyopt's layers: train/eval mode, named parameters and their gradients."""

    training = True
    # Names of the parameter attributes; each has its gradient in "<name>_grad".
    _param_names: tuple[str, ...] = ()

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def train(self, mode: bool = True) -> Module:
        """Training mode (``mode=True``) or evaluation mode; returns the layer.

        Raises:
            ValueError: ``mode`` is not a bool (torch's error for ``train("False")``).
        """
        if not isinstance(mode, bool | np.bool_):
            raise ValueError(f"training mode is expected to be boolean, got mode={mode!r}")
        self.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def named_parameters(self) -> list[tuple[str, Any]]:
        """``(name, array)`` of every learnable parameter, in torch's order."""
        return [(n, getattr(self, n)) for n in self._param_names if getattr(self, n) is not None]

    def parameters(self) -> list[Any]:
        return [p for _, p in self.named_parameters()]

    def named_grads(self) -> list[tuple[str, Any]]:
        """``(name, gradient)`` aligned with :meth:`named_parameters` (None before the
        first backward unless the parameters were flattened)."""
        return [(n, getattr(self, f"{n}_grad")) for n, _ in self.named_parameters()]

    def _store_grad(self, name: str, grad: Any) -> None:
        """Write a parameter's gradient: into its existing array when there is one (a
        flattened model's grad buffer), else as a new attribute."""
        attr = f"{name}_grad"
        current = getattr(self, attr)
        if current is None:
            setattr(self, attr, grad)
        else:
            assign(current, grad)

    def _rebind(self, name: str, param: Any, grad: Any) -> None:
        """Make ``param`` (already holding the values) and ``grad`` this parameter's arrays."""
        setattr(self, name, param)
        setattr(self, f"{name}_grad", grad)

    def state_dict(self) -> dict[str, np.ndarray]:
        """NumPy copies of the parameters (and buffers), under torch's key names."""
        return {name: to_numpy(arr) for name, arr in self.named_parameters()}

    def _state_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The keys of :meth:`state_dict` with their shapes and dtypes, copying nothing."""
        return {name: (tuple(arr.shape), self.dtype) for name, arr in self.named_parameters()}

    def _load(self, values: dict[str, np.ndarray]) -> None:
        """Copy validated host arrays (the keys, shapes and dtypes of
        :meth:`_state_specs`) in place."""
        for key, value in values.items():
            copy_into(getattr(self, key), value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy a :meth:`state_dict` (NumPy, torch CPU tensors or device arrays) in place.

        Every key, shape and value is checked and converted before anything is copied, so
        a state dict that does not fit changes nothing.

        Raises:
            TypeError: ``state`` is not a dict, or an entry does not hold real numbers.
            ValueError: missing or unexpected keys, or an entry of the wrong shape.
        """
        self._load(_validated(self._state_specs(), state))


def _check_device(layer: Any, name: str, x: Any) -> None:
    """TypeError unless ``x`` lives where the layer's parameters do (``layer.device``)."""
    on_cuda = is_cuda_array(x)
    if on_cuda != (layer.device == "cuda"):
        where = "a CUDA" if on_cuda else "a NumPy"
        raise TypeError(
            f"{name} is {where} array but the layer's parameters live on {layer.device}; "
            "create the layer with the matching device="
        )


def _validated(
    specs: dict[str, tuple[tuple[int, ...], np.dtype]], state: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Host arrays of ``state`` converted to the dtypes of ``specs``, whose keys and shapes
    ``state`` must have exactly."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    if set(state) != set(specs):
        missing, extra = sorted(set(specs) - set(state)), sorted(set(state) - set(specs))
        raise ValueError(
            f"state_dict does not fit: missing keys {missing}, unexpected keys {extra}"
        )
    values = {}
    for key, (shape, dtype) in specs.items():
        where = f"state_dict[{key!r}]"
        value = _checks.numeric_host_array(where, host_value(state[key]), dtype)
        _checks.shape_is(where, value, shape, "as saved by this layer")
        values[key] = value
    return values


def _array_arg(name: str, x: Any) -> None:
    """TypeError naming ``name`` unless ``x`` is a NumPy or CUDA array."""
    backend_of(((name, x),))


class BatchNorm(Module):
    """Batch normalization layer; a drop-in for ``torch.nn.BatchNorm{1,2,3}d``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel along ``axis``. In
    training the batch statistics are used and the running statistics are updated
    (``running = (1 - momentum) * running + momentum * batch``, unbiased variance; with
    ``momentum=None`` a cumulative average over ``num_batches_tracked`` batches). In eval
    the running statistics are used. Without ``track_running_stats`` batch statistics
    are used in both modes.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        momentum: running-average factor in [0, 1], or None for a cumulative average.
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
        track_running_stats: keep ``running_mean`` / ``running_var``.
        axis: channel axis: 1 (NCHW-style) or -1 (channels-last).
        dtype: float32 or float64, for parameters and statistics. Inputs have this dtype,
            or float16/bfloat16 for a float32 layer (torch's mixed rule: ``y`` and ``dx``
            in the input's dtype, everything per channel in float32).
        device: "auto", "cpu" or "cuda"; "auto" follows ``$PYOPT_DEVICE``, else CUDA when
            it is usable, else the CPU.
        bias: with ``affine``, also learn the shift ``bias`` (torch's keyword-only
            ``bias=False``: an affine scale without a shift, ``bias`` is None).

    Example:
        >>> bn = BatchNorm2d(3, device="cpu")
        >>> x = np.random.default_rng(0).standard_normal((4, 3, 5, 5), dtype=np.float32)
        >>> y = bn(x)
        >>> dx = bn.backward(np.ones_like(y))
        >>> bn.weight_grad.shape, int(bn.num_batches_tracked)
        ((3,), 1)
    """

    _ranks: tuple[int, ...] | None = None
    _param_names = ("weight", "bias")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        axis: int = 1,
        dtype: Any = np.float32,
        device: str = "auto",
        *,
        bias: bool = True,
    ):
        self.num_features = _checks.integer("num_features", num_features, 1)
        self.eps = _checks.positive("eps", eps)
        self.momentum = None if momentum is None else _checks.in_unit_interval("momentum", momentum)
        self.axis = _checks.integer("axis", axis)
        ranks = self._ranks or (64,)  # any rank up to NumPy's largest
        if not any(-r <= self.axis < r and self.axis % r != 0 for r in ranks):
            raise ValueError(
                f"axis {self.axis} is the batch axis or out of range for "
                f"{' or '.join(f'{r}D' for r in ranks)} input"
            )
        self.dtype = _checks.float_dtype_arg("dtype", dtype)
        self.affine = _checks.flag("affine", affine)
        has_bias = _checks.flag("bias", bias)
        self.track_running_stats = _checks.flag("track_running_stats", track_running_stats)
        _checks.allocatable("num_features", (self.num_features,), self.dtype)
        self.device = resolve_device(device)
        self.training = True
        self.weight = self.bias = self.running_mean = self.running_var = None
        self.num_batches_tracked: int | None = None
        self.weight_grad = self.bias_grad = None
        self._saved: tuple[Any, ...] | None = None
        if self.affine:
            self.weight = self._full(1.0)
            self.bias = self._full(0.0) if has_bias else None
        if self.track_running_stats:
            self.running_mean = self._full(0.0)
            self.running_var = self._full(1.0)
            self.num_batches_tracked = 0

    def _full(self, value: float) -> Any:
        return device_full((self.num_features,), value, self.dtype, self.device)

    def reset_running_stats(self) -> None:
        """Running mean to zeros, running variance to ones, batch count to zero."""
        if self.track_running_stats:
            copy_into(self.running_mean, np.zeros(self.num_features, self.dtype))
            copy_into(self.running_var, np.ones(self.num_features, self.dtype))
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Running statistics reset; ``weight`` to ones and ``bias`` to zeros."""
        self.reset_running_stats()
        if self.weight is not None:
            copy_into(self.weight, np.ones(self.num_features, self.dtype))
        if self.bias is not None:
            copy_into(self.bias, np.zeros(self.num_features, self.dtype))

    def _check_input(self, x: Any) -> None:
        _array_arg("x", x)
        shape = tuple(x.shape)
        if self._ranks is not None and len(shape) not in self._ranks:
            expected = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"expected {expected} input (got {len(shape)}D input)")
        _check_device(self, "x", x)
        if len(shape) >= 2 and -len(shape) <= self.axis < len(shape):
            if shape[self.axis] != self.num_features:
                raise ValueError(
                    f"x has {shape[self.axis]} channels along axis {self.axis} (shape "
                    f"{shape}) but the layer has num_features={self.num_features}"
                )

    def forward(self, x: Any) -> Any:
        """Normalize ``x``; saves what :meth:`backward` needs."""
        self._check_input(x)
        use_batch_stats = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        if update:
            batches = self.num_batches_tracked + 1
            momentum = 1.0 / batches if self.momentum is None else self.momentum
        else:
            momentum = 0.0 if self.momentum is None else self.momentum
        y, mean, invstd = batch_norm(
            x,
            weight=self.weight,
            bias=self.bias,
            running_mean=self.running_mean if (update or not use_batch_stats) else None,
            running_var=self.running_var if (update or not use_batch_stats) else None,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
            axis=self.axis,
        )
        if update:
            self.num_batches_tracked = batches
        self._saved = (x, mean, invstd, use_batch_stats)
        return y

    def backward(self, dy: Any) -> Any:
        """Gradient w.r.t. the last forward input; stores ``weight_grad`` / ``bias_grad``."""
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        x, mean, invstd, use_batch_stats = self._saved
        dx, dweight, dbias = batch_norm_backward(
            dy,
            x,
            weight=self.weight,
            mean=mean,
            invstd=invstd,
            training=use_batch_stats,
            axis=self.axis,
        )
        if dweight is not None:
            self._store_grad("weight", dweight)
            if self.bias is not None:
                self._store_grad("bias", dbias)
        return dx

    def state_dict(self) -> dict[str, np.ndarray]:
        """NumPy copies of parameters and buffers, under torch's key names."""
        state = super().state_dict()
        if self.track_running_stats:
            state["running_mean"] = to_numpy(self.running_mean)
            state["running_var"] = to_numpy(self.running_var)
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def _state_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        specs = super()._state_specs()
        if self.track_running_stats:
            channel = ((self.num_features,), self.dtype)
            specs.update(
                running_mean=channel,
                running_var=channel,
                num_batches_tracked=((), np.dtype(np.uint64)),  # validated as a count
            )
        return specs

    def _load(self, values: dict[str, np.ndarray]) -> None:
        for key, value in values.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = int(value)
            else:
                copy_into(getattr(self, key), value)

    def __repr__(self) -> str:
        shift = "" if self.bias is not None or not self.affine else ", bias=False"
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, axis={self.axis}, "
            f"dtype={self.dtype.name}, device={self.device!r}{shift})"
        )


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C)`` or ``(N, C, L)`` input, as ``torch.nn.BatchNorm1d``."""

    _ranks = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, H, W)`` input (``(N, H, W, C)`` with axis=-1)."""

    _ranks = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, D, H, W)`` input (``(N, D, H, W, C)`` with axis=-1)."""

    _ranks = (5,)


class Linear(Module):
    """Affine layer ``y = x·Wᵀ + b``; a drop-in for ``torch.nn.Linear``.

    ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)``, both
    initialized as torch does: U(−1/√in_features, 1/√in_features) (``kaiming_uniform_``
    with ``a = √5`` for the weight). The matmuls run on NumPy (CPU) or CuPy (CUDA).
    Backward: ``dx = dy·W``, ``weight_grad = dyᵀ·x``, ``bias_grad = Σ dy`` over every
    leading axis.

    Args:
        in_features, out_features: sizes of the last axis of the input and output.
        bias: learn an additive bias.
        dtype: float32 or float64.
        device: "auto", "cpu" or "cuda" (CUDA needs CuPy).
        seed: key of the init stream (weight: offset 0, bias: offset 1); None draws from
            the global generator (:func:`pyopt.manual_seed`).

    Example:
        >>> fc = Linear(4, 3, device="cpu", seed=0)
        >>> y = fc(np.ones((2, 4), np.float32))
        >>> dx = fc.backward(np.ones_like(y))
        >>> y.shape, dx.shape, fc.weight_grad.shape, fc.bias_grad.tolist()
        ((2, 3), (2, 4), (3, 4), [2.0, 2.0, 2.0])
    """

    _param_names = ("weight", "bias")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
        device: str = "auto",
        seed: int | None = None,
    ):
        self.in_features = _checks.integer("in_features", in_features, 0)
        self.out_features = _checks.integer("out_features", out_features, 0)
        has_bias = _checks.flag("bias", bias)
        self.dtype = _checks.float_dtype_arg("dtype", dtype)
        if seed is not None:
            _random.check_u64("seed", seed)
        shape = (self.out_features, self.in_features)
        _checks.allocatable("in_features and out_features", shape, self.dtype)
        self.device = resolve_device(device)
        if self.device == "cuda":
            _require_cupy("Linear")
        self.weight = device_full(shape, 0.0, self.dtype, self.device)
        self.bias = (
            device_full((self.out_features,), 0.0, self.dtype, self.device) if has_bias else None
        )
        self.weight_grad = self.bias_grad = None
        self._input: Any = None
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int | None = None) -> None:
        """torch's init: weight and bias from U(−1/√in_features, 1/√in_features)."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        keys = [_random.key_for(seed) for _ in range(2)] if seed is None else None
        for k, arr in enumerate((self.weight, self.bias)):
            if arr is not None:
                key = keys[k] if keys is not None else (_random.check_u64("seed", seed), k)
                init._fill(arr, "uniform", -bound, bound, key=key)

    def forward(self, x: Any) -> Any:
        """``x·Wᵀ + b`` over the last axis of ``x`` (``(*, in_features)``)."""
        xp = _matching_module(x, self, "x")
        if tuple(x.shape[-1:]) != (self.in_features,):
            raise ValueError(
                f"x must have shape (*, {self.in_features}) (in_features), got {tuple(x.shape)}"
            )
        y = xp.matmul(x, self.weight.T)
        if self.bias is not None:
            y += self.bias
        self._input = x
        return y

    def backward(self, dy: Any) -> Any:
        """``dx = dy·W``; stores ``weight_grad = dyᵀ·x`` and ``bias_grad = Σ dy``."""
        if self._input is None:
            raise RuntimeError("backward() called before forward()")
        x = self._input
        xp = _matching_module(dy, self, "dy")
        want = (*tuple(x.shape[:-1]), self.out_features)
        _checks.shape_is("dy", dy, want, "the shape of the last output")
        dy2 = dy.reshape(-1, self.out_features)
        self._store_grad("weight", xp.matmul(dy2.T, x.reshape(-1, self.in_features)))
        if self.bias is not None:
            self._store_grad("bias", dy2.sum(axis=0))
        return xp.matmul(dy, self.weight)

    def __repr__(self) -> str:
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype.name}, device={self.device!r})"
        )


def _require_cupy(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        raise RuntimeError(
            f"{what} on CUDA runs its matmuls with CuPy, which is not installed "
            "(pip install pyopt-kernels[cuda13])"
        )


def _matching_module(x: Any, layer: Any, name: str) -> Any:
    """The array library of ``x`` (NumPy or CuPy), which must match the layer's device and
    dtype (no silent promotion)."""
    xp = array_module(name, x)
    _check_device(layer, name, x)
    _checks.same_dtype(name, x, layer.dtype, "the layer's parameters")
    return xp


class ReLU(Module):
    """``y = max(x, 0)``, NaN propagated; a drop-in for ``torch.nn.ReLU``.

    Backward: ``dx = 0 where y <= 0, else dy`` (torch's ``threshold_backward``: a NaN
    output passes its gradient through). Runs on NumPy or CuPy arrays.

    Example:
        >>> relu = ReLU()
        >>> relu(np.array([-1.0, 0.0, 2.0])).tolist(), relu.backward(np.ones(3)).tolist()
        ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0])
    """

    def __init__(self) -> None:
        self._output: Any = None

    def forward(self, x: Any) -> Any:
        xp = array_module("x", x)
        _checks.float_dtype("x", x)
        self._output = xp.maximum(x, x.dtype.type(0))
        return self._output

    def backward(self, dy: Any) -> Any:
        if self._output is None:
            raise RuntimeError("backward() called before forward()")
        xp = array_module("dy", dy)
        if xp is not array_module("x", self._output):
            raise TypeError("dy must be an array of the same library as the forward input")
        _checks.same_dtype("dy", dy, self._output.dtype, "the last output")
        _checks.shape_is("dy", dy, tuple(self._output.shape), "the shape of the last output")
        return xp.where(self._output <= 0, dy.dtype.type(0), dy)

    def __repr__(self) -> str:
        return "ReLU()"


class Dropout(Module):
    """Inverted dropout layer; a drop-in for ``torch.nn.Dropout`` whose mask is never stored.

    In training each forward call draws a new mask (:func:`pyopt.functional.dropout` with
    this layer's ``seed`` and an ``offset`` that advances by one per call) and
    :meth:`backward` regenerates the mask of the last forward. In eval it is the identity.

    Args:
        p: probability of zeroing an element, in [0, 1].
        seed: key of the layer's stream; None derives one from the global generator
            (:func:`pyopt.manual_seed`), different for every layer created.

    Attributes:
        offset: the offset the next training forward uses.

    :meth:`state_dict` holds the stream's position, ``{"_extra_state": [seed, offset]}``
    (uint64), so a model resumed from a checkpoint draws the masks the uninterrupted run
    would have drawn. torch's ``nn.Dropout`` has no such state: to load a pyopt state dict
    into a torch model, leave out the ``*._extra_state`` keys.

    Example:
        >>> drop = Dropout(0.5, seed=3)
        >>> y = drop(np.ones(8, np.float32))
        >>> bool((drop.backward(np.ones(8, np.float32)) == y).all())
        True
        >>> drop.state_dict()["_extra_state"].tolist()  # seed, next offset
        [3, 1]
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        self.p = _checks.in_unit_interval("p", p)
        self.seed = _random.derive_seed() if seed is None else _random.check_u64("seed", seed)
        self.offset = 0
        # (offset of the last training forward or None in eval, its input's shape, dtype)
        self._last: tuple[int | None, tuple[int, ...], np.dtype] | None = None

    def forward(self, x: Any) -> Any:
        if not self.training:
            y = dropout(x, self.p, training=False, seed=self.seed)
            self._last = (None, tuple(x.shape), dtype_of(x))
            return y
        y = dropout(x, self.p, seed=self.seed, offset=self.offset)
        self._last = (self.offset, tuple(x.shape), dtype_of(x))
        self.offset = (self.offset + 1) % (1 << 64)
        return y

    def backward(self, dy: Any) -> Any:
        """The gradient of the last forward: its mask again (the identity after an eval
        forward)."""
        if self._last is None:
            raise RuntimeError("backward() called before forward()")
        offset, shape, dtype = self._last
        _array_arg("dy", dy)
        _checks.same_dtype("dy", dy, dtype, "the last forward input")
        _checks.shape_is("dy", dy, shape, "the shape of the last forward input")
        if offset is None:
            return dy
        return dropout_backward(dy, self.p, seed=self.seed, offset=offset)

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"_extra_state": [seed, offset]}``: where the layer's random stream stands."""
        return {"_extra_state": np.array([self.seed, self.offset], dtype=np.uint64)}

    def _state_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {"_extra_state": ((2,), np.dtype(np.uint64))}

    def _load(self, values: dict[str, np.ndarray]) -> None:
        self.seed, self.offset = (int(v) for v in values["_extra_state"])
        self._last = None

    def __repr__(self) -> str:
        return f"Dropout(p={self.p}, seed={self.seed})"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Parameters are named ``"<index>.<name>"`` as in torch (``"0.weight"``), and
    :meth:`state_dict` uses torch's keys, so a torch ``nn.Sequential`` of the same layers
    loads it.

    Example:
        >>> net = Sequential(Linear(4, 8, device="cpu"), ReLU(), Linear(8, 2, device="cpu"))
        >>> buf = net.flatten_parameters()
        >>> y = net(np.ones((3, 4), np.float32))
        >>> _ = net.backward(np.ones_like(y))  # every gradient lands in buf.grad
        >>> [name for name, _ in net.named_parameters()], buf.size
        (['0.weight', '0.bias', '2.weight', '2.bias'], 58)
    """

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a pyopt.nn layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy: Any) -> Any:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True) -> Sequential:
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def named_parameters(self) -> list[tuple[str, Any]]:
        return [
            (f"{i}.{n}", p)
            for i, layer in enumerate(self.layers)
            for n, p in layer.named_parameters()
        ]

    def named_grads(self) -> list[tuple[str, Any]]:
        return [
            (f"{i}.{n}", g) for i, layer in enumerate(self.layers) for n, g in layer.named_grads()
        ]

    def flatten_parameters(self) -> Any:
        """Move every parameter into one :class:`~pyopt.optim.ParamBuffer` and every
        gradient into its ``grad`` buffer; returns the buffer.

        The layers keep working on views of the buffer (``buf.params`` / ``buf.grads``,
        keyed by :meth:`named_parameters`' names), so an optimizer built on
        ``buf.params`` and stepped with ``buf.grads`` is one kernel call per step.
        All parameters must share one dtype and device.
        """
        from pyopt.optim import ParamBuffer

        named = self.named_parameters()
        if not named:
            raise ValueError("the model has no parameters to flatten")
        dtypes = {np.dtype(p.dtype) for _, p in named}
        devices = {"cuda" if is_cuda_array(p) else "cpu" for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(
                "flatten_parameters needs one dtype and one device, got "
                f"{sorted(map(str, dtypes))} on {sorted(devices)}"
            )
        buf = ParamBuffer(
            {name: tuple(p.shape) for name, p in named}, dtype=dtypes.pop(), device=devices.pop()
        )
        for name, p in named:
            assign(buf.params[name], p)
        for i, layer in enumerate(self.layers):
            for name, _ in layer.named_parameters():
                key = f"{i}.{name}"
                layer._rebind(name, buf.params[key], buf.grads[key])
        return buf

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every layer's state under ``"<index>.<key>"`` (torch's ``nn.Sequential`` keys)."""
        return {
            f"{i}.{key}": value
            for i, layer in enumerate(self.layers)
            for key, value in layer.state_dict().items()
        }

    def _state_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            f"{i}.{key}": spec
            for i, layer in enumerate(self.layers)
            for key, spec in layer._state_specs().items()
        }

    def _load(self, values: dict[str, np.ndarray]) -> None:
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            layer._load({k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)})

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


class CrossEntropyLoss:
    """Mean softmax cross-entropy over a batch of logits; ``torch.nn.CrossEntropyLoss()``
    with its defaults (class-index targets, ``reduction="mean"``).

    ``loss = mean_i(logsumexp(z_i) − z_i[t_i])``; :meth:`backward` returns
    ``(softmax(z) − onehot(t)) / N``. Computed in the logits' dtype with the max
    subtracted (no overflow). Runs on NumPy or CuPy arrays.

    Example:
        >>> loss_fn = CrossEntropyLoss()
        >>> loss = loss_fn(np.zeros((2, 4)), np.array([0, 3]))
        >>> round(loss, 6), loss_fn.backward().shape  # log(4)
        (1.386294, (2, 4))
    """

    def __init__(self) -> None:
        self._saved: tuple[Any, Any] | None = None

    def __call__(self, logits: Any, target: Any) -> float:
        return self.forward(logits, target)

    def forward(self, logits: Any, target: Any) -> float:
        xp = array_module("logits", logits)
        if array_module("target", target) is not xp:
            raise TypeError("target must be an array of the same library as logits")
        _checks.float_dtype("logits", logits)
        if len(logits.shape) != 2:
            raise ValueError(f"logits must have shape (N, classes), got {tuple(logits.shape)}")
        n, classes = logits.shape
        if classes == 0:
            raise ValueError("logits must have at least one class (shape (N, classes))")
        _checks.shape_is("target", target, (n,), "one class index per row of logits")
        if target.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        if bool(((target < 0) | (target >= classes)).any()):
            raise ValueError(f"target has class indices outside [0, {classes})")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_z
        rows = xp.arange(n)
        self._saved = (log_probs, target)
        if n == 0:
            return math.nan  # the mean of no losses, as torch
        return float(-log_probs[rows, target].mean())

    def backward(self) -> Any:
        """``dloss/dlogits`` of the last call."""
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        log_probs, target = self._saved
        xp = array_module("logits", log_probs)
        n = log_probs.shape[0]
        grad = xp.exp(log_probs)
        grad[xp.arange(n), target] -= 1
        grad /= n
        return grad
