"""torch's ``BatchNorm1d/2d/3d`` and ``Dropout`` modules on pyopt's kernels.

Each class subclasses the torch module of the same name and overrides only ``forward``,
which calls :mod:`pyopt.torch.functional`. Everything else is torch's own: the
constructor, parameters and buffers (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``), ``state_dict`` keys and versioned loading,
``reset_parameters``, ``reset_running_stats``, ``extra_repr``, the input-rank checks, and
``isinstance(m, torch.nn.BatchNorm2d)`` (so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
and code that special-cases batch norm treat them as torch's). A state dict loads either
way between these modules and torch's.

:func:`replace_modules` turns torch's modules in a model into these, in place.
"""

from __future__ import annotations

from typing import Any

import torch

from pyopt.torch import functional

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Dropout", "replace_modules"]


class _BatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """``forward`` of pyopt's batch-norm modules: torch's ``_BatchNorm.forward`` on
    :func:`pyopt.torch.functional.batch_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalize ``input`` as torch's ``_BatchNorm.forward``.

        In training with ``track_running_stats``, the running statistics are updated in
        place (``momentum``, or with ``momentum=None`` the cumulative average
        ``1 / num_batches_tracked``) and ``num_batches_tracked`` counts the call. Unlike
        torch, the count changes only once the call has succeeded: a call that raises
        modifies nothing.

        Args:
            input: the rank the class takes (``_check_input_dim``), float32/float64, or
                float16/bfloat16 beside float32 parameters or parameters of its dtype
                (torch's mixed rule, see :func:`pyopt.torch.functional.batch_norm`).

        Returns:
            The normalized tensor, ``input``'s shape, dtype and layout.

        Raises:
            TypeError: ``input`` not a float32/float64/float16/bfloat16 tensor, or one
                whose dtype differs from the module's beyond the mixed rule.
            ValueError: ``input`` of the wrong rank, or its channel count not
                ``num_features``; one value per channel in training.
        """
        if isinstance(input, torch.Tensor):  # the functional reports non-tensors
            self._check_input_dim(input)
        track = self.training and self.track_running_stats and self.num_batches_tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if track and self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked + 1)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        y = functional.batch_norm(
            input,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )
        if track:
            self.num_batches_tracked.add_(1)
        return y


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` (2D ``(N, C)`` or 3D ``(N, C, L)`` input) on pyopt's
    kernels; see :func:`pyopt.torch.functional.batch_norm` for what differs from torch.

    Example:
        >>> bn = BatchNorm1d(3)
        >>> bn(torch.randn(8, 3)).shape
        torch.Size([8, 3])
    """


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` (4D ``(N, C, H, W)`` input, contiguous or
    ``torch.channels_last`` without a copy) on pyopt's kernels; see
    :func:`pyopt.torch.functional.batch_norm` for what differs from torch.

    Example:
        >>> bn = BatchNorm2d(3)
        >>> bn(torch.randn(8, 3, 4, 4)).shape
        torch.Size([8, 3, 4, 4])
    """


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` (5D ``(N, C, D, H, W)`` input, contiguous or
    ``torch.channels_last_3d`` without a copy) on pyopt's kernels; see
    :func:`pyopt.torch.functional.batch_norm` for what differs from torch.

    Example:
        >>> bn = BatchNorm3d(3)
        >>> bn(torch.randn(2, 3, 4, 4, 4)).shape
        torch.Size([2, 3, 4, 4, 4])
    """


class Dropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` on pyopt's mask-free dropout: backward regenerates the mask
    from a seed and offset instead of saving it; see
    :func:`pyopt.torch.functional.dropout` for what differs from torch.

    Example:
        >>> drop = Dropout(0.25)
        >>> drop.eval()(torch.ones(3)).tolist()  # the identity in eval
        [1.0, 1.0, 1.0]
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``functional.dropout(input, self.p, self.training, self.inplace)``.

        Args:
            input: float32/float64/float16/bfloat16 tensor of any shape.

        Returns:
            The result (``input`` itself in eval, with ``p == 0`` or ``inplace``).

        Raises:
            TypeError: ``input`` not a float32/float64/float16/bfloat16 tensor.
        """
        return functional.dropout(input, self.p, self.training, self.inplace)


# torch's classes and their replacements: exact types, so subclasses (pyopt's own, a
# user's, SyncBatchNorm) are left alone.
_REPLACEMENTS: dict[type, type] = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
    torch.nn.Dropout: Dropout,
}


def replace_modules(model: Any) -> torch.nn.Module:
    """Swap every ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.Dropout`` in ``model``
    (``model`` included) for pyopt's, in place, and return ``model``.

    Each module's class is changed to pyopt's subclass, which adds no state and
    overrides only ``forward``: the module keeps its identity, its very Parameter and
    buffer objects (an optimizer built before the swap keeps working), device, dtype,
    training mode, hooks and attributes. Modules of other types, subclasses of torch's
    included, are left as they are.

    Args:
        model: a ``torch.nn.Module``.

    Returns:
        ``model``, with its modules swapped (when ``model`` is itself one of torch's
        modules, it is returned as pyopt's).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> type(replace_modules(model)[1]).__module__
        'pyopt.torch.nn'
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__module__}."
            f"{type(model).__qualname__}"
        )
    for module in model.modules():
        replacement = _REPLACEMENTS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model
