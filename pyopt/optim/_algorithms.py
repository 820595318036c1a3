"""The optimizers: torch.optim's names, defaults and update rules on fused kernels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyopt import _optim_functional as F
from pyopt.optim._optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and Nesterov momentum.

    A drop-in for ``torch.optim.SGD`` (same defaults and rule; see
    :func:`pyopt.functional.sgd_`): ``b ← μ·b + (1 − dampening)·g`` (``b ← g`` on the
    first step), ``p ← p − lr·(g + μ·b)`` with Nesterov, else ``p ← p − lr·b``.

    Args:
        params: arrays, a dict name -> array, or param groups (see :class:`Optimizer`).
        lr, momentum, dampening, weight_decay, nesterov, maximize: as torch.

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
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

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

    @staticmethod
    def _part(group, params, grads, state, steps, grad_scale):
        _, part = F._sgd(
            params,
            grads,
            state.get("momentum_buffer"),
            steps,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            grad_scale=grad_scale,
            check=False,
        )
        return part


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with AMSGrad; a drop-in for ``torch.optim.Adam``.

    ``m ← β1·m + (1 − β1)·g``, ``v ← β2·v + (1 − β2)·g²``,
    ``p ← p − lr/(1 − β1^t)·m / (√(v/(1 − β2^t)) + ε)`` (see :func:`pyopt.functional.adam_`);
    ``weight_decay`` adds ``λ·p`` to the gradient (L2), or with
    ``decoupled_weight_decay`` decays ``p ← p·(1 − lr·λ)`` first (AdamW). State:
    ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``) in the param dtype.

    Args:
        params: arrays, a dict name -> array, or param groups (see :class:`Optimizer`).
        lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay: as
            torch (``decoupled_weight_decay=True`` is :class:`AdamW`'s rule).
    """

    _rule = "Adam"

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
        decoupled_weight_decay: bool = False,
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, list | tuple) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        names = ("exp_avg", "exp_avg_sq")
        return (*names, "max_exp_avg_sq") if group["amsgrad"] else names

    @staticmethod
    def _part(group, params, grads, state, steps, grad_scale):
        beta1, beta2 = group["betas"]
        _, part = F._adam(
            params,
            grads,
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("max_exp_avg_sq"),
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            grad_scale=grad_scale,
            check=False,
        )
        return part


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    A drop-in for ``torch.optim.AdamW``: ``p ← p·(1 − lr·λ)`` before the Adam update,
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
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011); a drop-in for ``torch.optim.Adagrad``.

    ``s ← s + g²``, ``p ← p − lr/(1 + (t − 1)·lr_decay) · g/(√s + ε)``. The ``sum``
    state exists from construction, filled with ``initial_accumulator_value``.
    """

    _rule = "Adagrad"

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
    ):
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

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

    @staticmethod
    def _part(group, params, grads, state, steps, grad_scale):
        _, part = F._adagrad(
            params,
            grads,
            state["sum"],
            steps,
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=grad_scale,
            check=False,
        )
        return part


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012), centered and with momentum; a drop-in for
    ``torch.optim.RMSprop``.

    ``v ← α·v + (1 − α)·g²``, ``p ← p − lr·g/(√v + ε)`` (centered: ``√(v − ḡ²)``; with
    momentum the step goes through a buffer ``b ← μ·b + g/(√v + ε)``).
    """

    _rule = "RMSprop"

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
    ):
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)

    @staticmethod
    def _part(group, params, grads, state, steps, grad_scale):
        _, part = F._rmsprop(
            params,
            grads,
            state["square_avg"],
            state.get("grad_avg"),
            state.get("momentum_buffer"),
            steps,
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
            grad_scale=grad_scale,
            check=False,
        )
        return part


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012); a drop-in for ``torch.optim.Adadelta``.

    ``v ← ρ·v + (1 − ρ)·g²``, ``Δ = √(u + ε)/√(v + ε)·g``, ``u ← ρ·u + (1 − ρ)·Δ²``,
    ``p ← p − lr·Δ``.
    """

    _rule = "Adadelta"

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ):
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")

    @staticmethod
    def _part(group, params, grads, state, steps, grad_scale):
        _, part = F._adadelta(
            params,
            grads,
            state["square_avg"],
            state["acc_delta"],
            steps,
            lr=group["lr"],
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            grad_scale=grad_scale,
            check=False,
        )
        return part
