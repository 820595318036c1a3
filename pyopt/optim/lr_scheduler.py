"""Learning-rate schedulers with torch.optim.lr_scheduler's names, protocol and arithmetic.

A scheduler writes ``group["lr"]`` (and, for :class:`OneCycleLR` and :class:`CyclicLR`, the
momentum or beta1) into the param groups of a pyopt :class:`~pyopt.optim.Optimizer`, which
re-reads its hyperparameters at every step. The protocol is torch's: the constructor records
``group["initial_lr"]`` and performs the initial step (epoch 0); each :meth:`step` advances
``last_epoch`` by one and sets the new lrs; :meth:`get_last_lr`, :meth:`state_dict` and
:meth:`load_state_dict` behave as torch's. :class:`ReduceLROnPlateau` is the exception, as
in torch: it steps on a metric and touches the groups only to reduce their lrs.

The chainable schedulers (:class:`StepLR`, :class:`MultiStepLR`, :class:`ConstantLR`,
:class:`LinearLR`, :class:`ExponentialLR`, :class:`PolynomialLR`,
:class:`CosineAnnealingLR`, :class:`MultiplicativeLR`) update the *current* ``group["lr"]``
by a recurrence, so several of them may drive one optimizer (directly or through
:class:`ChainedScheduler`) and their factors compose. Every scheduler evaluates torch
2.13's formulas in torch's order of operations, so the lrs agree with torch's bit for bit,
not merely to a tolerance, over any number of steps.

Constructors validate every argument before they touch the optimizer, so one that raises
leaves the param groups as they were. A value torch accepts and runs with is accepted
(``gamma > 1``, a negative ``eta_min``); a value torch accepts but later fails on (a zero
``step_size``, a ``ConstantLR`` factor of 0, a negative ``PolynomialLR`` power) or
misreads (a float where an int is meant, a misspelt mode) is a TypeError or ValueError
naming the argument. Where torch itself raises at construction, the exception type is
torch's.
"""

from __future__ import annotations

import copy
import math
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pyopt import _checks
from pyopt.optim._optimizer import Optimizer

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "InverseSqrtLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

_T = TypeVar("_T")


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a pyopt.optim.Optimizer, got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        )


def _last_epoch(value: Any) -> int:
    return _checks.integer("last_epoch", value, -1)


def _as_value_error(check: Callable[..., _T], *args: Any) -> _T:
    """``check(*args)`` with its TypeError raised as a ValueError (same message).

    For the arguments whose wrong type torch reports as a ValueError (``T_0``,
    ``total_steps``, ...), so that code catching torch's exception catches ours.
    """
    try:
        return check(*args)
    except TypeError as err:
        raise ValueError(str(err)) from None


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _nonzero(name: str, value: Any) -> float:
    value = _checks.real_scalar(name, value)
    if value == 0:
        raise ValueError(f"{name} must not be 0 (it divides an lr)")
    return value


def _each_group(
    name: str, optimizer: Optimizer, value: Any, noun: str, check: Callable[[str, Any], _T]
) -> list[_T]:
    """``value`` for each param group, each checked by ``check(label, v)``: a single value
    is repeated, a list or tuple must hold one ``noun`` per group."""
    n = len(optimizer.param_groups)
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(
                f"{name} must have one {noun} per param group ({n}), got {len(value)} {noun}s"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * n


def _per_group(name: str, optimizer: Optimizer, value: Any) -> list[float]:
    """A real ``value`` for each param group (see :func:`_each_group`)."""
    return _each_group(name, optimizer, value, "value", _checks.real_scalar)


def _callable(label: str, fn: Any) -> Callable:
    if not callable(fn):
        raise TypeError(f"{label} must be callable, got {type(fn).__name__}")
    return fn


def _callable_state(fn: Callable | None) -> dict[str, Any] | None:
    """What torch saves of a user callable: None for a plain function (lambdas and ``def``
    functions cannot be pickled by value), a copy of a callable object's ``__dict__``."""
    if fn is None or isinstance(fn, types.FunctionType) or not hasattr(fn, "__dict__"):
        return None
    return copy.deepcopy(fn.__dict__)


def _restore_callable_state(fn: Callable | None, saved: dict[str, Any] | None) -> None:
    if saved is not None and fn is not None:
        fn.__dict__.update(copy.deepcopy(saved))


def _set_momentum(group: dict[str, Any], use_beta1: bool, value: float) -> None:
    """Set SGD/RMSprop's ``momentum``, or Adam/AdamW's beta1 (torch's ``use_beta1``)."""
    if use_beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


def _check_momentum_optimizer(optimizer: Optimizer) -> bool:
    """Whether the cycled momentum is beta1; raise if the optimizer has no momentum."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            f"cycle_momentum=True needs an optimizer with momentum or betas; "
            f"{type(optimizer).__name__} has neither"
        )
    return "betas" in optimizer.defaults


def _start_momenta(
    optimizer: Optimizer, use_beta1: bool, max_momenta: list[float], base_momenta: list[float]
) -> None:
    """Start each group's cycle at its ``max_momentum`` (momentum or beta1), keeping both
    bounds in the group under torch's keys."""
    for group, high, low in zip(optimizer.param_groups, max_momenta, base_momenta, strict=True):
        _set_momentum(group, use_beta1, high)
        group["max_momentum"] = high
        group["base_momentum"] = low


def _check_schedulers(schedulers: Any, optimizer: Optimizer | None) -> list[LRScheduler]:
    """The schedulers of :class:`SequentialLR` / :class:`ChainedScheduler`, checked: all
    driving ``optimizer`` (None: the first scheduler's)."""
    if isinstance(schedulers, str) or not isinstance(schedulers, Sequence):
        raise TypeError(f"schedulers must be a list of schedulers, got {type(schedulers).__name__}")
    if len(schedulers) < 1:
        raise ValueError("schedulers must hold at least one scheduler, got none")
    owner = "optimizer"
    for i, scheduler in enumerate(schedulers):
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(
                f"schedulers[{i}] must be a pyopt LRScheduler, got {type(scheduler).__name__}"
            )
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                f"schedulers[{i}] is a ReduceLROnPlateau, which steps on a metric and cannot "
                "be combined"
            )
        if optimizer is None:
            optimizer, owner = scheduler.optimizer, "schedulers[0]"
        elif scheduler.optimizer is not optimizer:
            raise ValueError(
                f"schedulers[{i}] ({type(scheduler).__name__}) drives another optimizer "
                f"than {owner}"
            )
    return list(schedulers)


class LRScheduler:
    """Base class of the schedulers: torch's ``LRScheduler`` protocol over pyopt optimizers.

    Subclasses implement :meth:`get_lr`, the lrs for epoch ``last_epoch``. Chainable
    subclasses compute them from the current ``group["lr"]``; they also implement
    ``_closed_form_lr`` (the lrs at ``last_epoch`` from ``base_lrs`` alone), which
    :class:`SequentialLR` uses to restart a scheduler at epoch 0, as torch does.

    Args:
        optimizer: the pyopt optimizer whose ``group["lr"]`` the scheduler sets.
        last_epoch: the index of the last epoch seen, an int >= -1; -1 starts the
            schedule. Any other value resumes it and needs ``"initial_lr"`` in every param
            group (restored by the optimizer's ``load_state_dict``). Construction steps
            once, so the scheduler ends at ``last_epoch + 1``.

    Attributes:
        optimizer: the optimizer.
        base_lrs: each group's ``"initial_lr"`` (its lr when the first scheduler was made).
        last_epoch: the epoch of the lrs last set (0 after construction from -1).

    Raises:
        TypeError: ``optimizer`` is not a pyopt :class:`~pyopt.optim.Optimizer`, or
            ``last_epoch`` is not an int.
        ValueError: ``last_epoch < -1``.
        KeyError: ``last_epoch != -1`` and a group lacks ``"initial_lr"``.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        last_epoch = _last_epoch(last_epoch)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming scheduler with last_epoch >= 0.\n"
                        "This typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but haven't "
                        "properly loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run (not "
                        "recommended)"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        # The chainable schedulers but StepLR, MultiStepLR and ConstantLR leave the lrs
        # alone on the initial step (``_is_initial``), so one resumed at last_epoch = k
        # does not apply a factor the restored lrs already carry; those three do not
        # check, as in torch.
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """The lrs for epoch ``last_epoch``, one per param group; :meth:`step` calls it.

        Chainable schedulers derive them from the current ``group["lr"]``, so calling
        this outside :meth:`step` does not give the lrs in use: read
        :meth:`get_last_lr` for those.
        """
        raise NotImplementedError

    def _closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = self._current_lrs()

    def step(self) -> None:
        """Advance ``last_epoch`` by one and set each group's lr; call after the optimizer step.

        (torch's deprecated ``step(epoch)`` form is not provided, but for
        :class:`CosineAnnealingWarmRestarts`, whose documented use it is.) A step that
        raises (:class:`OneCycleLR` past its end, a failing ``lr_lambda``) changes nothing.
        """
        self.last_epoch += 1
        try:
            lrs = self.get_lr()
        except Exception:
            self.last_epoch -= 1
            raise
        self._step_count += 1
        self._set_lrs(lrs)

    def _restart(self) -> None:
        """Jump to epoch 0 (torch's ``_update_lr(0)``: the closed form where there is one)."""
        self.last_epoch = 0
        self._set_lrs(self._closed_form_lr())

    def get_last_lr(self) -> list[float]:
        """The lrs set by the last :meth:`step` (a new list), one per param group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """A copy of every attribute but the optimizer: torch's keys (less a warning flag)."""
        return {
            key: copy.deepcopy(value) for key, value in self.__dict__.items() if key != "optimizer"
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (of this class, from pyopt or torch); copied in.

        Restore the optimizer's state too: the lrs in use live in its param groups.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
        """
        self._load_attributes(state_dict, skip=())

    def _load_attributes(self, state_dict: Mapping[str, Any], skip: tuple[str, ...]) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, value in state_dict.items():
            if key != "optimizer" and key not in skip:
                setattr(self, key, copy.deepcopy(value))


class _LambdaScheduler(LRScheduler):
    """The state handling :class:`LambdaLR` and :class:`MultiplicativeLR` share.

    :meth:`state_dict` keeps, for each lambda, ``None`` when it is a plain function and a
    copy of its ``__dict__`` when it is a callable object, which :meth:`load_state_dict`
    restores into the scheduler's own callables, as torch does.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas = _each_group("lr_lambda", optimizer, lr_lambda, "function", _callable)
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer; callable objects' ``__dict__`` for lambdas."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "lr_lambdas")
        }
        state["lr_lambdas"] = [_callable_state(fn) for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; saved callable-object state goes into ours."""
        self._load_attributes(state_dict, skip=("lr_lambdas",))
        for fn, saved in zip(self.lr_lambdas, state_dict.get("lr_lambdas", ()), strict=False):
            _restore_callable_state(fn, saved)


class LambdaLR(_LambdaScheduler):
    """Each group's lr is its initial lr times a function of the epoch.

    ``lr_t = base_lr · λ(t)`` with ``t = last_epoch``; not chainable (it ignores the current
    lr). A drop-in for ``torch.optim.lr_scheduler.LambdaLR``; :meth:`state_dict` saves
    callable objects' ``__dict__`` (plain functions as ``None``), as torch's.

    Args:
        optimizer: the pyopt optimizer.
        lr_lambda: a function ``epoch -> factor``, or a list of one per param group.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: a ``lr_lambda`` that is not callable.
        ValueError: ``lr_lambda`` is a list whose length is not the number of groups.
    """

    def get_lr(self) -> list[float]:
        """``base_lr · λ(last_epoch)`` for each group."""
        return [
            base_lr * lmbda(self.last_epoch)
            for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]


class MultiplicativeLR(_LambdaScheduler):
    """Multiply each group's lr by a function of the epoch, every epoch (chainable).

    ``lr_t = λ(t) · lr_{t−1}`` for ``t > 0`` (the initial step leaves the lr alone);
    alone, ``lr_t = base_lr · λ(1) · … · λ(t)``. A drop-in for
    ``torch.optim.lr_scheduler.MultiplicativeLR``; its arguments, errors and
    :meth:`state_dict` are :class:`LambdaLR`'s.
    """

    def get_lr(self) -> list[float]:
        """``λ(last_epoch) · lr`` for each group (the current lr on the initial step)."""
        if self._is_initial:
            return self._current_lrs()
        return [
            lr * lmbda(self.last_epoch)
            for lmbda, lr in zip(self.lr_lambdas, self._current_lrs(), strict=True)
        ]


class StepLR(LRScheduler):
    """Multiply each group's lr by ``gamma`` every ``step_size`` epochs (chainable).

    ``lr_t = γ · lr_{t−1}`` when ``t > 0`` and ``t mod step_size = 0``, else
    ``lr_t = lr_{t−1}``; alone, ``lr_t = base_lr · γ^⌊t / step_size⌋``. A drop-in for
    ``torch.optim.lr_scheduler.StepLR``.

    Args:
        optimizer: the pyopt optimizer.
        step_size: the period of the decay in epochs, an int >= 1.
        gamma: the factor applied at each decay, a real number.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``step_size`` is not an int, or ``gamma`` not a real number.
        ValueError: ``step_size < 1`` (torch fails at the first step), a NaN ``gamma``.

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import SGD
        >>> from pyopt.optim.lr_scheduler import StepLR
        >>> opt = SGD([np.zeros(3)], lr=1.0)
        >>> sched = StepLR(opt, step_size=2, gamma=0.5)
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(sched.get_last_lr()[0])
        ...     sched.step()
        >>> lrs
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = _checks.integer("step_size", step_size, 1)
        self.gamma = _checks.real_scalar("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``γ · lr`` at each non-zero multiple of ``step_size``, else the current lr."""
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [
            base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs
        ]


class MultiStepLR(LRScheduler):
    """Multiply each group's lr by ``gamma`` at each milestone epoch (chainable).

    ``lr_t = γ^c(t) · lr_{t−1}`` where ``c(t)`` counts the occurrences of ``t`` in
    ``milestones`` (a repeated milestone decays once per occurrence); alone,
    ``lr_t = base_lr · γ^(number of milestones ≤ t)``. A drop-in for
    ``torch.optim.lr_scheduler.MultiStepLR``.

    Args:
        optimizer: the pyopt optimizer.
        milestones: an iterable of int epoch indices (kept as a ``Counter``, like torch).
        gamma: the factor applied at each milestone, a real number.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``milestones`` is not an iterable of ints, or ``gamma`` not a real.
        ValueError: a NaN ``gamma``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(milestones, str) or not isinstance(milestones, Iterable):
            raise TypeError(
                f"milestones must be an iterable of ints, got {type(milestones).__name__}"
            )
        self.milestones = Counter(
            _checks.integer(f"milestones[{i}]", m) for i, m in enumerate(milestones)
        )
        self.gamma = _checks.real_scalar("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``milestones`` may come back as a plain dict
        (as from :func:`pyopt.load`) and is made a ``Counter`` again."""
        super().load_state_dict(state_dict)
        self.milestones = Counter(self.milestones)

    def get_lr(self) -> list[float]:
        """``γ^c · lr`` at a milestone met ``c`` times, else the current lr."""
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base_lr * self.gamma**passed for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    """Scale each group's lr by ``factor`` for the first ``total_iters`` epochs (chainable).

    ``lr_0 = f · lr``, ``lr_T = lr_{T−1} / f`` with ``f = factor``, ``T = total_iters``
    (torch multiplies by ``1.0 / f``), and ``lr_t = lr_{t−1}`` otherwise; alone,
    ``lr_t = base_lr · f`` for ``t < T`` and ``base_lr`` after. A drop-in for
    ``torch.optim.lr_scheduler.ConstantLR``.

    Args:
        optimizer: the pyopt optimizer.
        factor: the factor, in (0, 1].
        total_iters: ``T``, the epoch at which the factor is undone, an int >= 1.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``factor`` is not a real number or ``total_iters`` not an int.
        ValueError: ``factor`` outside (0, 1] (torch accepts 0 and then divides by it at
            epoch ``T``), ``total_iters < 1``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        factor = _checks.real_scalar("factor", factor)
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        self.factor = factor
        self.total_iters = _checks.integer("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``f · lr`` at epoch 0, ``lr · (1 / f)`` at ``total_iters``, else the current lr."""
        if self.last_epoch == 0:
            return [lr * self.factor for lr in self._current_lrs()]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [lr * (1.0 / self.factor) for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        done = self.last_epoch >= self.total_iters
        factor = self.factor + (1 - self.factor) if done else self.factor
        return [base_lr * factor for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale each group's lr by a factor moving linearly over ``total_iters`` epochs (chainable).

    Alone, ``lr_t = base_lr · (s + (e − s) · min(t, T) / T)`` with ``s = start_factor``,
    ``e = end_factor``, ``T = total_iters``. As torch, it is applied as a recurrence:
    ``lr_0 = s · lr``, ``lr_t = lr_{t−1} · (1 + (e − s) / (T·s + (t − 1)·(e − s)))`` for
    ``0 < t ≤ T``, and ``lr_t = lr_{t−1}`` after. A drop-in for
    ``torch.optim.lr_scheduler.LinearLR``.

    Args:
        optimizer: the pyopt optimizer.
        start_factor: the factor at epoch 0, in (0, 1].
        end_factor: the factor from epoch ``total_iters`` on, in [0, 1].
        total_iters: the number of epochs the factor takes to reach ``end_factor``, an
            int >= 1.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: a factor that is not a real number, a ``total_iters`` not an int.
        ValueError: ``start_factor`` or ``end_factor`` is out of range, ``total_iters < 1``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        start_factor = _checks.real_scalar("start_factor", start_factor)
        end_factor = _checks.real_scalar("end_factor", end_factor)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _checks.integer("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``s · lr`` at epoch 0, then the recurrence's ratio until ``total_iters``."""
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current_lrs()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        slope = self.end_factor - self.start_factor
        ratio = 1.0 + slope / (self.total_iters * self.start_factor + (self.last_epoch - 1) * slope)
        return [lr * ratio for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        slope = self.end_factor - self.start_factor
        factor = (
            self.start_factor + slope * min(self.total_iters, self.last_epoch) / self.total_iters
        )
        return [base_lr * factor for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply each group's lr by ``gamma`` every epoch (chainable).

    ``lr_t = γ · lr_{t−1}``; alone, ``lr_t = base_lr · γ^t``. A drop-in for
    ``torch.optim.lr_scheduler.ExponentialLR``.

    Args:
        optimizer: the pyopt optimizer.
        gamma: the factor applied each epoch, a real number.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``gamma`` is not a real number.
        ValueError: a NaN ``gamma``.
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _checks.real_scalar("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``γ · lr`` (the current lr on the initial step)."""
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    """Decay each group's lr polynomially to 0 over ``total_iters`` epochs (chainable).

    Alone, ``lr_t = base_lr · (1 − min(t, T) / T)^p`` with ``T = total_iters``,
    ``p = power``. As torch, it is applied as the recurrence
    ``lr_t = lr_{t−1} · ((1 − t/T) / (1 − (t − 1)/T))^p`` for ``0 < t ≤ T`` and
    ``lr_t = lr_{t−1}`` otherwise. A drop-in for ``torch.optim.lr_scheduler.PolynomialLR``.

    Args:
        optimizer: the pyopt optimizer.
        total_iters: ``T``, an int >= 1.
        power: ``p``, a real >= 0.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``total_iters`` is not an int, or ``power`` not a real number.
        ValueError: ``total_iters < 1``, ``power < 0`` (torch accepts it, then raises
            ZeroDivisionError at epoch ``T``) or NaN.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_iters = _checks.integer("total_iters", total_iters, 1)
        power = _checks.real_scalar("power", power)
        if power < 0:
            raise ValueError(f"power must be >= 0 (the lr reaches 0 at total_iters), got {power}")
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """One step of the recurrence (the current lr on the initial step and after ``T``)."""
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        t, total = self.last_epoch, self.total_iters
        decay = ((1.0 - t / total) / (1.0 - (t - 1) / total)) ** self.power
        return [lr * decay for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        remaining = 1.0 - min(self.total_iters, self.last_epoch) / self.total_iters
        return [base_lr * remaining**self.power for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing between each group's initial lr and ``eta_min`` (chainable).

    Alone, ``lr_t = η_min + (base_lr − η_min) · (1 + cos(π·t / T_max)) / 2``, continuing
    past ``T_max`` as the cosine does (back up to ``base_lr`` at ``2·T_max``; no restarts).
    As torch, it is applied as the recurrence
    ``lr_t = η_min + (lr_{t−1} − η_min) · (1 + cos(π·t / T_max)) / (1 + cos(π·(t − 1) / T_max))``,
    except where ``t − 1 ≡ T_max (mod 2·T_max)`` (the minimum, where that ratio is 0/0):
    ``lr_t = lr_{t−1} + (base_lr − η_min) · (1 − cos(π / T_max)) / 2``. A drop-in for
    ``torch.optim.lr_scheduler.CosineAnnealingLR``.

    Args:
        optimizer: the pyopt optimizer.
        T_max: the number of epochs of a half period, an int >= 1.
        eta_min: the minimum lr, a real number.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``T_max`` is not an int, or ``eta_min`` not a real number.
        ValueError: ``T_max < 1`` (torch divides by it), a NaN ``eta_min``.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = _checks.integer("T_max", T_max, 1)
        self.eta_min = _checks.real_scalar("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """One step of the recurrence (the current lr on the initial step)."""
        if self._is_initial:
            return self._current_lrs()
        t, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        if (t - 1 - period) % (2 * period) == 0:
            dip = 1 - math.cos(math.pi / period)
            return [
                lr + (base_lr - eta_min) * dip / 2
                for lr, base_lr in zip(self._current_lrs(), self.base_lrs, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        cos_out = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base_lr - self.eta_min) * cos_out / 2 for base_lr in self.base_lrs]


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


_ANNEAL = {"cos": _anneal_cos, "linear": _anneal_linear}


def _phase(
    end_step: float, start_lr: str, end_lr: str, start_momentum: str, end_momentum: str
) -> dict[str, Any]:
    """One phase of :class:`OneCycleLR`: its last step and the group keys it anneals between."""
    return {
        "end_step": end_step,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "start_momentum": start_momentum,
        "end_momentum": end_momentum,
    }


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, 2017): lr up to ``max_lr``, then far below the start.

    With ``N = total_steps``, ``p = pct_start``, ``lr_0 = max_lr / div_factor`` (the
    ``initial_lr``) and ``lr_min = lr_0 / final_div_factor``, the lr anneals (``"cos"``:
    ``end + (start − end)·(1 + cos(π·x))/2``; ``"linear"``: ``start + (end − start)·x``,
    ``x`` the fraction of the phase done) through the phases

    * two-phase (default, fastai's): ``lr_0 → max_lr`` over steps ``[0, p·N − 1]``, then
      ``max_lr → lr_min`` until step ``N − 1``;
    * ``three_phase``: ``lr_0 → max_lr`` until ``p·N − 1``, ``max_lr → lr_0`` until
      ``2·p·N − 2``, then ``lr_0 → lr_min`` until ``N − 1``.

    With ``cycle_momentum`` the momentum (SGD, RMSprop: ``group["momentum"]``; Adam,
    AdamW: beta1 of ``group["betas"]``) anneals inversely, ``max_momentum`` at ``lr_0``
    and ``base_momentum`` at ``max_lr``. Step ``N`` extrapolates the last phase; stepping
    beyond it raises. Not chainable. A drop-in for ``torch.optim.lr_scheduler.OneCycleLR``:
    the groups get torch's keys ``initial_lr``, ``max_lr``, ``min_lr``, ``max_momentum``,
    ``base_momentum``.

    Args:
        optimizer: the pyopt optimizer.
        max_lr: the peak lr, one for all groups or a list of one per group.
        total_steps: ``N``; if None, ``epochs · steps_per_epoch``.
        epochs, steps_per_epoch: positive ints giving ``N`` when ``total_steps`` is None.
        pct_start: the fraction of the cycle spent raising the lr, a float in [0, 1].
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: anneal the momentum / beta1 inversely to the lr.
        base_momentum, max_momentum: the momentum bounds (reals or one per group).
        div_factor: ``max_lr / initial_lr``, a nonzero real.
        final_div_factor: ``initial_lr / min_lr``, a nonzero real.
        three_phase: use the three-phase schedule.
        last_epoch: the index of the last *batch*; see :class:`LRScheduler`.

    Raises:
        ValueError: no valid ``total_steps`` (nor ``epochs`` and ``steps_per_epoch``; any
            of them not a positive int, as torch), a ``pct_start`` that is not a float in
            [0, 1], an unknown ``anneal_strategy``, a per-group list of the wrong length, a
            zero ``div_factor`` or ``final_div_factor``, ``cycle_momentum`` on an
            optimizer with neither ``momentum`` nor ``betas``; :meth:`step` past
            ``total_steps``.
        TypeError: a bound or factor that is not a real number.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        last_epoch = _last_epoch(last_epoch)
        if total_steps is not None:
            total_steps = _as_value_error(_checks.integer, "total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            epochs = _as_value_error(_checks.integer, "epochs", epochs, 1)
            steps = _as_value_error(_checks.integer, "steps_per_epoch", steps_per_epoch, 1)
            total_steps = epochs * steps
        else:
            raise ValueError("give total_steps, or both epochs and steps_per_epoch")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start must be a float in [0, 1], got {pct_start!r}")
        self._anneal_func_type = _choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        div_factor = _nonzero("div_factor", div_factor)
        final_div_factor = _nonzero("final_div_factor", final_div_factor)
        if cycle_momentum:
            use_beta1 = _check_momentum_optimizer(optimizer)
            max_momenta = _per_group("max_momentum", optimizer, max_momentum)
            base_momenta = _per_group("base_momentum", optimizer, base_momentum)

        self.optimizer = optimizer
        self.total_steps = total_steps
        up = float(pct_start * total_steps) - 1
        last = total_steps - 1
        if three_phase:
            down = float(2 * pct_start * total_steps) - 2
            phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(down, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                _phase(last, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(last, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        # Phases name group keys (torch's layout, kept in state_dict) rather than values,
        # so a resumed scheduler reads the lrs restored into the optimizer's groups.
        self._schedule_phases = phases
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, max_lrs, strict=True):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            if last_epoch == -1:
                _start_momenta(optimizer, use_beta1, max_momenta, base_momenta)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The annealed lrs at step ``last_epoch``; sets the momenta as a side effect.

        Raises:
            ValueError: ``last_epoch > total_steps``.
        """
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped to step {step}, past total_steps = {self.total_steps}"
            )
        start = 0.0
        for i, phase in enumerate(self._schedule_phases):
            end = phase["end_step"]
            if step <= end or i == len(self._schedule_phases) - 1:
                pct = (step - start) / (end - start)
                break
            start = end
        anneal = _ANNEAL[self._anneal_func_type]
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
            if self.cycle_momentum:
                momentum = anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                _set_momentum(group, self.use_beta1, momentum)
        return lrs


class CyclicLR(LRScheduler):
    """Cyclical learning rates (Smith, 2017): each group's lr cycles between two bounds.

    With ``u = step_size_up``, ``d = step_size_down`` (default ``u``), ``t = last_epoch``
    (batches, not epochs), cycle ``c = ⌊1 + t / (u + d)⌋`` and position
    ``x = 1 + t / (u + d) − c`` in it, the height ``h = x / r`` while ``x ≤ r`` and
    ``(x − 1) / (r − 1)`` after (``r = u / (u + d)``), and::

        lr_t = base_lr + (max_lr − base_lr) · h · scale(c or t)

    with ``scale`` ``1`` (``"triangular"``), ``1 / 2^(c−1)`` (``"triangular2"``),
    ``γ^t`` (``"exp_range"``) or ``scale_fn`` of the cycle (``scale_mode="cycle"``) or of
    ``t`` (``"iterations"``). With ``cycle_momentum`` the momentum (SGD/RMSprop
    ``momentum``, Adam/AdamW beta1) cycles inversely,
    ``max_momentum − (max_momentum − base_momentum) · h · scale``. Not chainable: the
    constructor sets each group's lr to ``base_lr`` (and its momentum to
    ``max_momentum``). A drop-in for ``torch.optim.lr_scheduler.CyclicLR``; its
    :meth:`state_dict` keeps a callable-object ``scale_fn``'s ``__dict__`` (a plain
    function as ``None``), as torch's.

    Args:
        optimizer: the pyopt optimizer.
        base_lr, max_lr: the bounds of the cycle, reals or one per group.
        step_size_up: ``u``, an int >= 1.
        step_size_down: ``d``, an int >= 0, or None for ``u``.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"`` (ignored when
            ``scale_fn`` is given; it must still be one of these).
        gamma: the base of ``"exp_range"``, a real number.
        scale_fn: a custom scale, a callable ``x -> float`` (with ``0 ≤ scale ≤ 1``), or None.
        scale_mode: ``"cycle"`` or ``"iterations"``: what ``scale_fn`` is evaluated on.
            The built-in modes set their own (``"iterations"`` for ``"exp_range"``).
        cycle_momentum: cycle the momentum / beta1 too.
        base_momentum, max_momentum: the momentum bounds, reals or one per group.
        last_epoch: the index of the last *batch*; see :class:`LRScheduler`.

    Raises:
        TypeError: a bound that is not a real number, a step size that is not an int, a
            ``scale_fn`` that is not callable.
        ValueError: a step size out of range, an unknown ``mode`` or ``scale_mode``, a
            per-group list of the wrong length, ``cycle_momentum`` on an optimizer with
            neither ``momentum`` nor ``betas``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        last_epoch = _last_epoch(last_epoch)
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)
        up = float(_checks.integer("step_size_up", step_size_up, 1))
        down = (
            up
            if step_size_down is None
            else float(_checks.integer("step_size_down", step_size_down, 0))
        )
        self.mode = _choice("mode", mode, ("triangular", "triangular2", "exp_range"))
        self.gamma = _checks.real_scalar("gamma", gamma)
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable or None, got {type(scale_fn).__name__}")
        scale_mode = _choice("scale_mode", scale_mode, ("cycle", "iterations"))
        if cycle_momentum:
            use_beta1 = _check_momentum_optimizer(optimizer)
            base_momenta = _per_group("base_momentum", optimizer, base_momentum)
            max_momenta = _per_group("max_momentum", optimizer, max_momentum)

        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self._scale_fn_custom = scale_fn
        # As torch, a built-in mode decides what its scale is evaluated on.
        if scale_fn is None:
            scale_mode = "iterations" if mode == "exp_range" else "cycle"
        self.scale_mode = scale_mode
        self.cycle_momentum = cycle_momentum
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr
        if cycle_momentum:
            self.use_beta1 = use_beta1
            self.base_momentums = base_momenta
            self.max_momentums = max_momenta
            if last_epoch == -1:
                _start_momenta(optimizer, use_beta1, max_momenta, base_momenta)
        # The initial step reads base_lrs from the groups' initial_lr, and only then are
        # they set to base_lr, as in torch (they differ when a group already had one).
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        """The amplitude scale at ``x`` (a cycle number or an iteration, per ``scale_mode``)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def get_lr(self) -> list[float]:
        """The lrs at batch ``last_epoch``; sets the momenta as a side effect."""
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            height = x / self.step_ratio
        else:
            height = (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)
        lrs = [
            base_lr + (max_lr - base_lr) * height * scale
            for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            for group, low, high in zip(
                self.optimizer.param_groups, self.base_momentums, self.max_momentums, strict=True
            ):
                _set_momentum(group, self.use_beta1, high - (high - low) * height * scale)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer; a callable-object ``scale_fn``'s ``__dict__``."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "_scale_fn_custom")
        }
        state["_scale_fn_custom"] = _callable_state(self._scale_fn_custom)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; saved ``scale_fn`` state goes into ours."""
        self._load_attributes(state_dict, skip=("_scale_fn_custom",))
        _restore_callable_state(self._scale_fn_custom, state_dict.get("_scale_fn_custom"))


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, 2017).

    ``lr = η_min + (base_lr − η_min) · (1 + cos(π · T_cur / T_i)) / 2``, where ``T_cur``
    counts the epochs since the last restart and ``T_i`` is the current period: ``T_0``,
    then ``T_mult`` times longer after each restart. Not chainable. A drop-in for
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``, including its
    ``step(epoch)`` with a fractional epoch (:meth:`step`).

    Args:
        optimizer: the pyopt optimizer.
        T_0: the first period, an int >= 1.
        T_mult: the growth of the period at each restart, an int >= 1.
        eta_min: the minimum lr, a real number.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        ValueError: ``T_0`` or ``T_mult`` not an int >= 1, ``eta_min`` not a real number
            (ValueError for a wrong type too, as torch).

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import SGD
        >>> from pyopt.optim.lr_scheduler import CosineAnnealingWarmRestarts
        >>> opt = SGD([np.zeros(3)], lr=1.0)
        >>> sched = CosineAnnealingWarmRestarts(opt, T_0=4)
        >>> lrs = []
        >>> for i in range(6):
        ...     lrs.append(sched.get_last_lr()[0])
        ...     sched.step()
        >>> [round(lr, 3) for lr in lrs]
        [1.0, 0.854, 0.5, 0.146, 1.0, 0.854]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.T_0 = _as_value_error(_checks.integer, "T_0", T_0, 1)
        self.T_i = self.T_0
        self.T_mult = _as_value_error(_checks.integer, "T_mult", T_mult, 1)
        self.eta_min = _as_value_error(_checks.real_scalar, "eta_min", eta_min)
        self.T_cur = _last_epoch(last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The cosine at ``T_cur / T_i`` for each group."""
        return [
            self.eta_min
            + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
            for base_lr in self.base_lrs
        ]

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or (torch's form for this class) jump to ``epoch``.

        ``step()`` advances ``T_cur`` by one and restarts when it reaches ``T_i``.
        ``step(epoch)`` places a fractional epoch in its period (call it after each batch
        with ``epoch + i / batches``); the two forms may be interleaved, ``step()``
        continuing from ``⌊epoch⌋``.

        Args:
            epoch: None, or the epoch to jump to, a finite real >= 0.

        Raises:
            TypeError: ``epoch`` is not a real number.
            ValueError: ``epoch`` is negative, infinite or NaN; nothing is changed.
        """
        if epoch is not None:
            value = _checks.real_scalar("epoch", epoch)
            if not 0 <= value < math.inf:
                raise ValueError(f"epoch must be finite and >= 0, got {value}")
        elif self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        elif epoch >= self.T_0:
            if self.T_mult == 1:
                self.T_cur = epoch % self.T_0
            else:
                n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                self.T_i = self.T_0 * self.T_mult**n
        else:
            self.T_i = self.T_0
            self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._set_lrs(self.get_lr())


class _SchedulersScheduler(LRScheduler):
    """The state handling :class:`SequentialLR` and :class:`ChainedScheduler` share: the
    schedulers they drive, in ``_schedulers``, save and load their own state."""

    _schedulers: list[LRScheduler]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer, with each scheduler's own state dict."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "_schedulers")
        }
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` into this scheduler and its schedulers."""
        self._load_attributes(state_dict, skip=("_schedulers",))
        for child, saved in zip(self._schedulers, state_dict.get("_schedulers", ()), strict=False):
            child.load_state_dict(saved)


class SequentialLR(_SchedulersScheduler):
    """Run schedulers one after another, switching at the milestone epochs.

    Scheduler ``i`` drives epochs ``[milestones[i−1], milestones[i])``. At a milestone the
    next scheduler restarts at its epoch 0 with its closed form from its ``base_lrs``
    (torch's ``_update_lr(0)``; a scheduler without one, such as :class:`LambdaLR`,
    evaluates its :meth:`get_lr` at epoch 0), then steps normally. Construction resets
    the lrs to ``initial_lr``, undoes the initial step of every scheduler, and redoes that
    of the one active at epoch 0, as torch does. A drop-in for
    ``torch.optim.lr_scheduler.SequentialLR``.

    Args:
        optimizer: the pyopt optimizer all the schedulers drive.
        schedulers: the schedulers, at least one (not :class:`ReduceLROnPlateau`).
        milestones: ``len(schedulers) − 1`` int epoch indices, increasing.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        ValueError: no schedulers, a :class:`ReduceLROnPlateau`, a scheduler of another
            optimizer, or the wrong number of milestones.
        TypeError: a scheduler that is not a pyopt :class:`LRScheduler`, milestones that
            are not a list of ints.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        last_epoch = _last_epoch(last_epoch)
        schedulers = _check_schedulers(schedulers, optimizer)
        if isinstance(milestones, str) or not isinstance(milestones, Sequence):
            raise TypeError(f"milestones must be a list of ints, got {type(milestones).__name__}")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} entries, "
                f"got {len(milestones)}"
            )
        milestones = [_checks.integer(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self._undo_initial_steps(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    @staticmethod
    def _undo_initial_steps(scheduler: LRScheduler) -> None:
        if isinstance(scheduler, SequentialLR | ChainedScheduler):
            for child in scheduler._schedulers:
                SequentialLR._undo_initial_steps(child)
        else:
            scheduler.last_epoch -= 1

    def step(self) -> None:
        """Advance one epoch: restart the next scheduler at its milestone, else step the current."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_SchedulersScheduler):
    """Step several schedulers at once, so their (chainable) factors compose.

    Each :meth:`step` steps every scheduler in order; :meth:`get_last_lr` is then the
    groups' lrs, as the last one left them. Construction steps nothing (the schedulers
    took their initial steps when made). A drop-in for
    ``torch.optim.lr_scheduler.ChainedScheduler``; its state dict holds each scheduler's.

    Args:
        schedulers: the schedulers, at least one (not :class:`ReduceLROnPlateau`), all of
            one optimizer.
        optimizer: that optimizer; None for the first scheduler's.

    Raises:
        TypeError: a scheduler that is not a pyopt :class:`LRScheduler`.
        ValueError: no schedulers, a :class:`ReduceLROnPlateau`, a scheduler of another
            optimizer than ``optimizer`` (or than the first scheduler's).

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import SGD
        >>> from pyopt.optim.lr_scheduler import ChainedScheduler, ConstantLR, ExponentialLR
        >>> opt = SGD([np.zeros(3)], lr=1.0)
        >>> sched = ChainedScheduler([ConstantLR(opt, factor=0.5, total_iters=2),
        ...                           ExponentialLR(opt, gamma=0.5)])
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(sched.get_last_lr()[0])
        ...     sched.step()
        >>> lrs
        [0.5, 0.25, 0.25, 0.125]
    """

    def __init__(
        self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None
    ) -> None:
        # A non-optimizer ``optimizer`` is a ValueError, as torch: no scheduler drives it.
        self._schedulers = _check_schedulers(schedulers, optimizer)
        self.optimizer = self._schedulers[0].optimizer
        self._last_lr = self._current_lrs()

    def step(self) -> None:
        """Step every scheduler, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = self._current_lrs()


class ReduceLROnPlateau(LRScheduler):
    """Reduce each group's lr by ``factor`` when a metric has stopped improving.

    :meth:`step` takes the metric (a validation loss, say). A metric is better than the
    best so far when it beats ``best · (1 ∓ threshold)`` (``threshold_mode="rel"``) or
    ``best ∓ threshold`` (``"abs"``), ``−`` for ``mode="min"`` and ``+`` for ``"max"``;
    NaN is never better, so it counts as a bad epoch. After more than ``patience`` bad
    epochs in a row each lr becomes ``max(lr · factor, min_lr)`` (unchanged when that
    changes it by no more than ``eps``), and the next ``cooldown`` epochs count as good.
    Unlike the other schedulers it neither records ``initial_lr`` nor changes the lrs when
    made. A drop-in for ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    Args:
        optimizer: the pyopt optimizer.
        mode: ``"min"`` or ``"max"``.
        factor: the reduction, a real < 1.
        patience: the bad epochs tolerated before a reduction, an int >= 0.
        threshold: the significance of an improvement, a real number.
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: the epochs after a reduction during which bad epochs are ignored, an
            int >= 0.
        min_lr: the lower bound of the lrs, a real or one per param group.
        eps: the smallest change of an lr that is applied, a real number.

    Raises:
        TypeError: a number of the wrong type.
        ValueError: ``factor >= 1`` (as torch), an unknown ``mode`` or ``threshold_mode``,
            a negative ``patience`` or ``cooldown``, a ``min_lr`` list of the wrong length.

    Example:
        >>> import numpy as np
        >>> from pyopt.optim import SGD
        >>> from pyopt.optim.lr_scheduler import ReduceLROnPlateau
        >>> opt = SGD([np.zeros(3)], lr=1.0)
        >>> sched = ReduceLROnPlateau(opt, factor=0.5, patience=1)
        >>> for loss in [3.0, 2.0, 2.0, 2.0, 1.0]:
        ...     sched.step(loss)
        >>> sched.get_last_lr()
        [0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        factor = _checks.real_scalar("factor", factor)
        if factor >= 1.0:
            raise ValueError(f"factor must be < 1, got {factor}")
        self.factor = factor
        self.mode = _choice("mode", mode, ("min", "max"))
        self.threshold_mode = _choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.threshold = _checks.real_scalar("threshold", threshold)
        self.patience = _checks.integer("patience", patience, 0)
        self.cooldown = _checks.integer("cooldown", cooldown, 0)
        self.min_lrs = _per_group("min_lr", optimizer, min_lr)
        self.eps = _checks.real_scalar("eps", eps)
        self.optimizer = optimizer
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        """Whether the epochs after a reduction are still being ignored."""
        return self.cooldown_counter > 0

    def _is_better(self, current: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def step(self, metrics: float) -> None:
        """Record one epoch's metric and reduce the lrs if it has plateaued.

        Args:
            metrics: the metric, a real number (or what ``float()`` converts, but a
                string: a 0-d array, a one-element tensor); NaN and inf are accepted and
                compared as torch does.

        Raises:
            TypeError: ``metrics`` is not a number; nothing is changed.
        """
        if isinstance(metrics, str | bytes | bool):
            raise TypeError(f"metrics must be a real number, got {type(metrics).__name__}")
        try:
            current = float(metrics)
        except (TypeError, ValueError) as err:
            raise TypeError(f"metrics must be a real number, got {type(metrics).__name__}") from err
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs, strict=True):
                old_lr = float(group["lr"])
                new_lr = max(old_lr * self.factor, min_lr)
                if old_lr - new_lr > self.eps:
                    group["lr"] = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()


class InverseSqrtLR(LRScheduler):
    """Linear warmup to each group's initial lr, then decay as the inverse square root.

    With ``t = last_epoch`` (the number of steps taken) and ``w = warmup_steps``::

        lr_t = base_lr · t / w           for t < w   (0 at t = 0)
        lr_t = base_lr · sqrt(w / t)     for t ≥ w

    so the lr reaches ``base_lr`` exactly at ``t = w``, where both pieces agree. This is
    the convention of fairseq's ``inverse_sqrt`` (with ``warmup_init_lr = 0``) and of
    transformers' ``get_inverse_sqrt_schedule``; like them, the first step (``t = 0``) is
    taken with lr 0. Not chainable (computed from ``base_lrs``). Not in torch.

    Args:
        optimizer: the pyopt optimizer.
        warmup_steps: ``w``, an int ≥ 1.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        TypeError: ``warmup_steps`` is not an int.
        ValueError: ``warmup_steps < 1``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1) -> None:
        self.warmup_steps = _checks.integer("warmup_steps", warmup_steps, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``base_lr · t / w`` during the warmup, then ``base_lr · sqrt(w / t)``."""
        t, w = self.last_epoch, self.warmup_steps
        if t < w:
            return [base_lr * t / w for base_lr in self.base_lrs]
        decay = math.sqrt(w / t)
        return [base_lr * decay for base_lr in self.base_lrs]
