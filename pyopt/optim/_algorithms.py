"""The optimizers: torch.optim's names, defaults and update rules on fused kernels."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pyopt import _optim_functional as F
from pyopt.optim._optimizer import Optimizer


def _hyperparameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's ``defaults``: its arguments in signature order but ``self`` and
    ``params``, from its ``locals()`` taken before it binds any other name (``__class__``
    is there too, for ``super()``)."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


@functools.cache
def _keywords(build: Callable[..., Any]) -> frozenset[str]:
    """The hyperparameters a functional rule takes by keyword (``lr``, ``beta1``...)."""
    return frozenset(
        name
        for name, p in inspect.signature(build).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("grad_scale", "check")
    )


class _Rule(Optimizer):
    """An optimizer whose step is one rule of :mod:`pyopt._optim_functional`.

    A subclass names the rule's builder (``F._sgd``...) in ``_build`` and its state
    tensors, in the builder's argument order, in ``_state_args``; the builder takes the
    group's hyperparameters by name (``betas`` split into ``beta1``, ``beta2``).
    """

    _build: ClassVar[Callable[..., tuple[str | None, F.Part]]]
    _state_args: ClassVar[tuple[str, ...]]

    @classmethod
    def _part(cls, group, params, grads, state, steps, grad_scale):
        if "betas" in group:
            group = {**group, "beta1": group["betas"][0], "beta2": group["betas"][1]}
        hp = {name: group[name] for name in _keywords(cls._build)}
        states = [state.get(name) for name in cls._state_args]
        _, part = cls._build(
            params, grads, *states, steps, **hp, grad_scale=grad_scale, check=False
        )
        return part


class SGD(_Rule):
    """Stochastic gradient descent with momentum and Nesterov momentum.

    ``torch.optim.SGD``'s rule, defaults and state names, with the gradients passed to
    :meth:`step` (on torch tensors, :class:`pyopt.torch.optim.SGD` replaces torch's; see
    :func:`pyopt.functional.sgd_`): ``b ← μ·b + (1 − dampening)·g`` (``b ← g`` on the
    first step), ``p ← p − lr·(g + μ·b)`` with Nesterov, else ``p ← p − lr·b``.

    Args:
        params: arrays, a dict name -> array, or param groups (see :class:`Optimizer`).
        lr, momentum, dampening, weight_decay, nesterov, maximize: as torch.
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision (every
            optimizer takes them; see :class:`~pyopt.optim.Optimizer`).

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import SGD
        >>> w = np.ones(4, np.float32)
        >>> opt = SGD([w], lr=0.5, momentum=0.9)
        >>> _ = opt.step([np.full(4, 0.25, np.float32)])
        >>> w.tolist()
        [0.875, 0.875, 0.875, 0.875]
    """

    _rule = "SGD"
    _build = staticmethod(F._sgd)
    _state_args = ("momentum_buffer",)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        super().__init__(params, _hyperparameters(locals()))

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _saved_step(self, entry: Mapping[str, Any], where: str) -> int:
        # torch's SGD keeps no step count: a saved momentum buffer has had its first step.
        if "step" not in entry:
            return int("momentum_buffer" in entry)
        return super()._saved_step(entry, where)

    def _allocate(self, gi: int, name: str) -> None:
        # A new momentum buffer starts from the gradient (torch's ``buf = g.clone()``):
        # the step counts of SGD count the buffer's steps.
        super()._allocate(gi, name)
        self._states[gi].steps[:] = 0


class Adam(_Rule):
    """Adam (Kingma & Ba, 2015), with AMSGrad: ``torch.optim.Adam``'s rule, defaults and
    state names, with the gradients passed to :meth:`step` (on torch tensors,
    :class:`pyopt.torch.optim.Adam` replaces torch's).

    ``m ← β1·m + (1 − β1)·g``, ``v ← β2·v + (1 − β2)·g²``,
    ``p ← p − lr/(1 − β1^t)·m / (√(v/(1 − β2^t)) + ε)`` (see :func:`pyopt.functional.adam_`);
    ``weight_decay`` adds ``λ·p`` to the gradient (L2), or with
    ``decoupled_weight_decay`` decays ``p ← p·(1 − lr·λ)`` first (AdamW). State:
    ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``) in the param dtype.

    Args:
        params: arrays, a dict name -> array, or param groups (see :class:`Optimizer`).
        lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay: as
            torch (``decoupled_weight_decay=True`` is :class:`AdamW`'s rule).
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision (see
            :class:`~pyopt.optim.Optimizer`).
    """

    _rule = "Adam"
    _build = staticmethod(F._adam)
    _state_args = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        decoupled_weight_decay: bool = False,
    ):
        defaults = _hyperparameters(locals())
        if isinstance(betas, list | tuple):
            defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        names = ("exp_avg", "exp_avg_sq")
        return (*names, "max_exp_avg_sq") if group["amsgrad"] else names


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ``torch.optim.AdamW``'s rule, defaults and state names, with the gradients passed to
    :meth:`step` (on torch tensors, :class:`pyopt.torch.optim.AdamW` replaces torch's):
    ``p ← p·(1 − lr·λ)`` before the Adam update,
    instead of adding ``λ·p`` to the gradient; ``weight_decay`` defaults to 1e-2. As
    torch's, it is :class:`Adam` with ``decoupled_weight_decay=True``, also after loading a
    state dict that says otherwise.
    """

    _forced_on_load: ClassVar[dict[str, Any]] = {"decoupled_weight_decay": True}

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        super().__init__(params, **_hyperparameters(locals()), decoupled_weight_decay=True)


class Adagrad(_Rule):
    """Adagrad (Duchi et al., 2011): ``torch.optim.Adagrad``'s rule, defaults and state
    names, with the gradients passed to :meth:`step` (on torch tensors,
    :class:`pyopt.torch.optim.Adagrad` replaces torch's).

    ``s ← s + g²``, ``p ← p − lr/(1 + (t − 1)·lr_decay) · g/(√s + ε)``. The ``sum``
    state exists from construction, filled with ``initial_accumulator_value``.
    """

    _rule = "Adagrad"
    _build = staticmethod(F._adagrad)
    _state_args = ("sum",)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        super().__init__(params, _hyperparameters(locals()))

    def _init_group_state(self, gi: int) -> None:
        self._ensure_state(gi)

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    @staticmethod
    def _initial_value(name: str, group: dict[str, Any]) -> float:
        return float(group["initial_accumulator_value"])

    def _has_state(self, gi: int, k: int) -> bool:
        return True


class RMSprop(_Rule):
    """RMSprop (Hinton, 2012), centered and with momentum: ``torch.optim.RMSprop``'s rule,
    defaults and state names, with the gradients passed to :meth:`step`
    (on torch tensors, :class:`pyopt.torch.optim.RMSprop` replaces torch's).

    ``v ← α·v + (1 − α)·g²``, ``p ← p − lr·g/(√v + ε)`` (centered: ``√(v − ḡ²)``; with
    momentum the step goes through a buffer ``b ← μ·b + g/(√v + ε)``).
    """

    _rule = "RMSprop"
    _build = staticmethod(F._rmsprop)
    _state_args = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        super().__init__(params, _hyperparameters(locals()))

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)


class Adadelta(_Rule):
    """Adadelta (Zeiler, 2012): ``torch.optim.Adadelta``'s rule, defaults and state names,
    with the gradients passed to :meth:`step` (on torch tensors,
    :class:`pyopt.torch.optim.Adadelta` replaces torch's).

    ``v ← ρ·v + (1 − ρ)·g²``, ``Δ = √(u + ε)/√(v + ε)·g``, ``u ← ρ·u + (1 − ρ)·Δ²``,
    ``p ← p − lr·Δ``.
    """

    _rule = "Adadelta"
    _build = staticmethod(F._adadelta)
    _state_args = ("square_avg", "acc_delta")

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        super().__init__(params, _hyperparameters(locals()))

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")
