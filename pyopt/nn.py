"""Layers with torch's names, defaults and semantics, on NumPy or CUDA arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from pyopt import _checks
from pyopt._backend import copy_into, device_full, is_cuda_array, resolve_device, to_numpy
from pyopt.functional import batch_norm, batch_norm_backward

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNorm:
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
        dtype: float32 or float64, for parameters and statistics (inputs must match).
        device: "auto", "cpu" or "cuda"; "auto" follows ``$PYOPT_DEVICE``, else CUDA when
            it is usable, else the CPU.

    Example:
        >>> bn = BatchNorm2d(3, device="cpu")
        >>> x = np.random.default_rng(0).standard_normal((4, 3, 5, 5), dtype=np.float32)
        >>> y = bn(x)
        >>> dx = bn.backward(np.ones_like(y))
        >>> bn.weight_grad.shape, int(bn.num_batches_tracked)
        ((3,), 1)
    """

    _ranks: tuple[int, ...] | None = None

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
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.eps = _checks.positive("eps", eps)
        self.momentum = None if momentum is None else _checks.in_unit_interval("momentum", momentum)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int, got {type(axis).__name__}")
        self.axis = int(axis)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.device = resolve_device(device)
        self.training = True
        self.weight = self.bias = self.running_mean = self.running_var = None
        self.num_batches_tracked: int | None = None
        self.weight_grad = self.bias_grad = None
        self._saved: tuple[Any, ...] | None = None
        if self.affine:
            self.weight = self._full(1.0)
            self.bias = self._full(0.0)
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
        if self.affine:
            copy_into(self.weight, np.ones(self.num_features, self.dtype))
            copy_into(self.bias, np.zeros(self.num_features, self.dtype))

    def train(self, mode: bool = True) -> BatchNorm:
        self.training = bool(mode)
        return self

    def eval(self) -> BatchNorm:
        return self.train(False)

    def _check_input(self, x: Any) -> None:
        ndim = len(x.shape)
        if self._ranks is not None and ndim not in self._ranks:
            expected = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"expected {expected} input (got {ndim}D input)")
        on_cuda = is_cuda_array(x)
        if on_cuda != (self.device == "cuda"):
            where = "a CUDA" if on_cuda else "a NumPy"
            raise TypeError(
                f"x is {where} array but the layer's parameters live on {self.device}; "
                "create the layer with the matching device="
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
            self.weight,
            self.bias,
            self.running_mean if (update or not use_batch_stats) else None,
            self.running_var if (update or not use_batch_stats) else None,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
            axis=self.axis,
        )
        if update:
            self.num_batches_tracked = batches
        self._saved = (x, mean, invstd, use_batch_stats)
        return y

    __call__ = forward

    def backward(self, dy: Any) -> Any:
        """Gradient w.r.t. the last forward input; stores ``weight_grad`` / ``bias_grad``."""
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        x, mean, invstd, use_batch_stats = self._saved
        dx, dweight, dbias = batch_norm_backward(
            dy, x, self.weight, mean, invstd, training=use_batch_stats, axis=self.axis
        )
        self.weight_grad, self.bias_grad = dweight, dbias
        return dx

    def parameters(self) -> list[Any]:
        """The learnable arrays (``weight``, ``bias``), empty without affine."""
        return [self.weight, self.bias] if self.affine else []

    def state_dict(self) -> dict[str, np.ndarray]:
        """NumPy copies of parameters and buffers, under torch's key names."""
        state: dict[str, np.ndarray] = {}
        if self.affine:
            state["weight"] = to_numpy(self.weight)
            state["bias"] = to_numpy(self.bias)
        if self.track_running_stats:
            state["running_mean"] = to_numpy(self.running_mean)
            state["running_var"] = to_numpy(self.running_var)
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a :meth:`state_dict` (NumPy, torch CPU tensors or device arrays) in place.

        Every key and shape is checked before anything is copied.
        """
        expected = set(self.state_dict())
        got = set(state)
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            raise KeyError(f"state_dict mismatch: missing keys {missing}, unexpected keys {extra}")
        values = {key: _host_copy(value) for key, value in state.items()}
        for key, value in values.items():
            want = () if key == "num_batches_tracked" else (self.num_features,)
            _checks.shape_is(f"state_dict[{key!r}]", value, want, "as saved by this layer")
        for key, value in values.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = int(value)
            else:
                copy_into(getattr(self, key), value.astype(self.dtype))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, axis={self.axis}, "
            f"dtype={self.dtype.name}, device={self.device!r})"
        )


def _host_copy(value: Any) -> np.ndarray:
    if type(value).__module__.split(".")[0] == "torch" or is_cuda_array(value):
        return to_numpy(value)
    return np.array(value)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C)`` or ``(N, C, L)`` input, as ``torch.nn.BatchNorm1d``."""

    _ranks = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, H, W)`` input (``(N, H, W, C)`` with axis=-1)."""

    _ranks = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, D, H, W)`` input (``(N, D, H, W, C)`` with axis=-1)."""

    _ranks = (5,)
