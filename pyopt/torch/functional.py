"""``torch.nn.functional.batch_norm`` and ``dropout`` on pyopt's kernels, with autograd.

Each function is the entry to a ``torch.autograd.Function`` over pyopt's public layer
(:func:`pyopt.functional.batch_norm` / :func:`~pyopt.functional.batch_norm_backward`,
:func:`~pyopt.functional.dropout` / :func:`~pyopt.functional.dropout_backward`): tensors go
down as zero-copy arrays (NumPy views on the CPU, the CUDA tensors themselves) and the
results come back as tensors over the arrays the public layer returned. Both Functions
are first-order (``once_differentiable``).

Layouts: an input whose elements fill one block of memory without gaps (contiguous,
``torch.channels_last``, ``torch.channels_last_3d``, a transpose of those) is handed to
the kernels as a view in its memory order, and the output has the input's layout; any
other input is read through one ``.contiguous()`` copy. A gradient arriving in another
layout is brought into the input's.

What differs from torch:

- float16/bfloat16 tensors go to the kernels' 16-bit variants as they are (zero-copy,
  with or without ``torch.autocast``), which compute in float32 and round each result
  once. Batch norm follows torch's mixed rule: per-channel tensors float32, or of the
  input's dtype (a model cast with ``.to(torch.bfloat16)``), then computed through
  float32 copies, as torch computes them, the running statistics written back rounded.
- Bad arguments raise ``TypeError``/``ValueError`` naming the argument (torch raises
  ``RuntimeError`` for some), before anything is modified.
- ``dropout`` draws its masks from pyopt's Philox stream keyed by a seed taken from
  torch's default generator: reproducible under ``torch.manual_seed``, but not torch's
  masks. With ``p = 1`` a dropped element is exactly 0 even where the input is inf or NaN
  (torch multiplies by 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from pyopt import _checks
from pyopt import functional as _functional
from pyopt.torch._tensors import as_array, as_tensor, check_float_tensor

__all__ = ["batch_norm", "dropout"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _as_float32(input: torch.Tensor, value: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel tensor as the kernels take it beside ``input``: a float32 copy
    (recorded by autograd) when both are of one 16-bit dtype, else ``value`` itself."""
    if value is not None and input.dtype in _SIXTEEN_BIT and value.dtype == input.dtype:
        return value.float()
    return value


def _memory_order(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s axes from the outermost in memory to the innermost, when its elements
    fill one block without gaps (identity for a contiguous tensor, ``(0, 2, 3, 1)`` for
    channels_last); else the identity: the order of the copy ``.contiguous()`` makes."""
    identity = tuple(range(tensor.dim()))
    if tensor.is_contiguous():
        return identity
    # A stable sort: axes of equal stride (size-1 axes) keep their logical order.
    order = tuple(sorted(identity, key=lambda axis: -tensor.stride(axis)))
    return order if tensor.permute(order).is_contiguous() else identity


def _in_memory_order(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``tensor`` with its axes permuted to ``order``, C-contiguous: a view when
    ``tensor`` is laid out in that order, else one copy."""
    return tensor.permute(order).contiguous()


def _in_logical_order(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``permute(order)``: a C-contiguous result of the kernels seen with
    the input's axes, so it has the input's layout (no copy).

    Detached, so that it is a tensor of its own rather than a view: autograd refuses
    in-place ops on a view a custom Function returns, and ``bn(x).relu_()`` must work.
    """
    return tensor.permute(tuple(sorted(range(len(order)), key=order.__getitem__))).detach()


def _array(tensor: torch.Tensor | None) -> Any:
    return None if tensor is None else as_array(tensor)


class _BatchNormFunction(torch.autograd.Function):
    """Batch norm over a ``(outer, C, inner)`` view of the input in its memory order."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps):
        order = _memory_order(input)
        x = _in_memory_order(input, order)
        channel = order.index(1)
        # The kernels' (outer, C, inner) view: channels_last is (N*H*W, C, 1).
        x3 = x.view(
            math.prod(x.shape[:channel]), x.shape[channel], math.prod(x.shape[channel + 1 :])
        )
        y, mean, invstd = _functional.batch_norm(
            as_array(x3),
            weight=_array(weight),
            bias=_array(bias),
            running_mean=_array(running_mean),
            running_var=_array(running_var),
            training=training,
            momentum=momentum,
            eps=eps,
            axis=1,
        )
        ctx.order, ctx.shape, ctx.training = order, x.shape, training
        # What torch saves: the input (here its view, or its one copy), weight, statistics.
        ctx.save_for_backward(x3, weight, as_tensor(mean), as_tensor(invstd))
        return _in_logical_order(as_tensor(y).view(x.shape), order)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x3, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        if weight is None and needs_bias:
            # batch_norm_backward returns the bias gradient only beside a weight's.
            weight = torch.ones_like(mean)
        dy3 = _in_memory_order(grad_output, ctx.order).view(x3.shape)
        dx, dweight, dbias = _functional.batch_norm_backward(
            as_array(dy3),
            as_array(x3),
            weight=_array(weight),
            mean=as_array(mean),
            invstd=as_array(invstd),
            training=ctx.training,
            axis=1,
        )
        dx = _in_logical_order(as_tensor(dx).view(ctx.shape), ctx.order) if needs_input else None
        dweight = as_tensor(dweight) if needs_weight else None
        dbias = as_tensor(dbias) if needs_bias else None
        return dx, dweight, dbias, None, None, None, None, None


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization over every axis of ``input`` but the channel axis 1, as
    ``torch.nn.functional.batch_norm``.

    ``y = (input - mean) / sqrt(var + eps) * weight + bias``, with the batch's mean and
    biased variance when ``training`` (and, when given, ``running_mean``/``running_var``
    updated in place with the unbiased variance:
    ``running = (1 - momentum) * running + momentum * batch``), else with the running
    statistics. Differentiable in ``input``, ``weight`` and ``bias``; backward saves
    ``input``, ``weight`` and the per-channel mean and inverse standard deviation.

    float16/bfloat16 ``input``: per-channel tensors float32 or of ``input``'s dtype (torch's
    mixed rule); computed in float32, ``y`` and the input gradient rounded once to
    ``input``'s dtype, statistics and the weight/bias gradients float32 (rounded to the
    parameters' dtype when they are 16-bit).

    Differs from torch: ``y`` keeps any gap-free layout of
    ``input`` (torch keeps channels_last and channels_last_3d and makes others
    contiguous); ``momentum`` must be in [0, 1] and ``eps`` > 0 also in eval; errors
    are ``TypeError``/``ValueError`` naming the argument, raised before the running
    statistics change.

    Args:
        input: ``(N, C, ...)`` float32/float64/float16/bfloat16 tensor on the CPU or a
            CUDA device.
        running_mean: ``(C,)`` running mean of ``input``'s dtype (16-bit ``input``:
            float32 or ``input``'s dtype), or None.
        running_var: ``(C,)`` running variance, or None (with ``running_mean``).
        weight: ``(C,)`` scale, or None (1).
        bias: ``(C,)`` shift, or None (0).
        training: normalize with the batch's statistics (and update the running ones).
        momentum: weight of the batch's statistics in the running update, in [0, 1]
            (``None`` is a ``TypeError``, as in torch: the modules turn their
            ``momentum=None`` into a cumulative average factor).
        eps: added to the variance, > 0.

    Returns:
        ``y``, ``input``'s shape, dtype and layout.

    Raises:
        TypeError: ``input`` or a per-channel tensor not a dense real float32/float64/
            float16/bfloat16 tensor, dtypes that differ (beyond the mixed rule), CPU and CUDA
            tensors mixed, non-bool ``training``, non-number ``momentum``/``eps``.
        ValueError: rank below 2, per-channel tensors not of shape ``(C,)``, one value
            per channel in training, eval without running statistics, ``eps`` <= 0,
            ``momentum`` outside [0, 1].

    Example:
        >>> x = torch.randn(8, 3, 4, 4).to(memory_format=torch.channels_last)
        >>> mean, var = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, mean, var, training=True)
        >>> y.is_contiguous(memory_format=torch.channels_last)
        True
    """
    x = check_float_tensor("input", input)
    if x.dim() < 2:
        raise ValueError(
            f"input must have rank >= 2 (batch and channel axes), got shape {tuple(x.shape)}"
        )
    for name, value in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if value is not None:
            check_float_tensor(name, value)
    training = _checks.flag("training", training)
    # torch's _verify_batch_size, here so that the message names input's own size.
    if training and x.shape[0] * math.prod(x.shape[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.shape}"
        )
    stats = [_as_float32(x, running_mean), _as_float32(x, running_var)]
    y = _BatchNormFunction.apply(
        x, _as_float32(x, weight), _as_float32(x, bias), *stats, training, momentum, eps
    )
    for running, work in zip((running_mean, running_var), stats, strict=True):
        if work is not running:  # a 16-bit buffer: the float32 update, rounded once
            running.copy_(work)
    return y


def _dropout_key(device: torch.device) -> tuple[int, int]:
    """``(seed, offset)`` for one dropout mask, from torch's default generator of
    ``device``, so that ``torch.manual_seed`` makes runs reproducible.

    On the CPU a 64-bit seed drawn from the generator, offset 0. On CUDA the device
    generator's seed and offset, read and advanced on the host without a device sync;
    the seed is mixed with the offset so that pyopt's Philox streams do not share keys
    with torch's own.
    """
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        generator = torch.cuda.default_generators[index]
        offset = generator.get_offset()
        # torch keeps CUDA generator offsets multiples of 4 (one Philox block).
        generator.set_offset(offset + 4)
        words = np.random.SeedSequence([generator.initial_seed(), offset]).generate_state(2)
        return int(words[0]) | int(words[1]) << 32, offset
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) % 2**64
    return seed, 0


class _DropoutFunction(torch.autograd.Function):
    """Dropout of the input in its memory order; backward regenerates the mask from
    ``(seed, offset)``: nothing is saved but them, ``p`` and the layout."""

    @staticmethod
    def forward(ctx, input, p, seed, offset):
        order = _memory_order(input)
        y = _functional.dropout(
            as_array(_in_memory_order(input, order)), p, seed=seed, offset=offset
        )
        ctx.p, ctx.seed, ctx.offset, ctx.order = p, seed, offset, order
        return _in_logical_order(as_tensor(y), order)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        dy = _in_memory_order(grad_output, ctx.order)
        dx = _functional.dropout_backward(as_array(dy), ctx.p, seed=ctx.seed, offset=ctx.offset)
        return _in_logical_order(as_tensor(dx), ctx.order), None, None, None


def dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """Inverted dropout, as ``torch.nn.functional.dropout``: each element zeroed with
    probability ``p``, the others scaled by ``1 / (1 - p)``.

    The mask is a pure function of a ``(seed, offset)`` drawn from torch's default
    generator for ``input``'s device (so ``torch.manual_seed`` reproduces it); backward
    regenerates it instead of saving it. As in torch, ``input`` itself is returned when
    not ``training``, when ``p == 0`` and when it is empty.

    Differs from torch: pyopt's Philox masks, not torch's; with ``p = 1`` dropped
    elements are exactly 0 also where ``input`` is inf or NaN; a NaN ``p`` is a
    ``ValueError`` (a ``RuntimeError`` in torch). float16/bfloat16 inputs are scaled in
    float32 and rounded once, as torch does.

    Args:
        input: float32/float64/float16/bfloat16 tensor of any shape on the CPU or a CUDA
            device.
        p: probability of an element being zeroed, in [0, 1].
        training: apply dropout (True) or return ``input`` (False).
        inplace: write the result into ``input`` and return ``input``. torch's checks
            for in-place operations (a leaf that requires grad...) run before the write.

    Returns:
        The result, ``input``'s shape, dtype and layout (``input`` itself when
        ``inplace``, when not ``training``, when ``p == 0`` or ``input`` is empty).

    Raises:
        TypeError: ``input`` not a dense real float32/float64/float16/bfloat16 tensor,
            ``p`` not a real number, non-bool ``training``/``inplace``.
        ValueError: ``p`` outside [0, 1] or NaN.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> y = dropout(torch.ones(100_000), 0.25)
        >>> round(float((y == 0).float().mean()), 2), float(y.max())
        (0.25, 1.3333333730697632)
    """
    p = _checks.real_scalar("p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    training = _checks.flag("training", training)
    inplace = _checks.flag("inplace", inplace)
    x = check_float_tensor("input", input)
    if not training or p == 0.0 or x.numel() == 0:
        return input
    y = _DropoutFunction.apply(x, p, *_dropout_key(x.device))
    if inplace:
        # An autograd-recorded copy: torch checks the in-place write before making it.
        return input.copy_(y)
    return y
