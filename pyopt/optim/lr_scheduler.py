"""Learning-rate schedulers with torch.optim.lr_scheduler's names, protocol and arithmetic.

A scheduler writes ``group["lr"]`` (and, for :class:`OneCycleLR`, the momentum or beta1)
into the param groups of a pyopt :class:`~pyopt.optim.Optimizer`, which re-reads its
hyperparameters at every step. The protocol is torch's: the constructor records
``group["initial_lr"]`` and performs the initial step (epoch 0); each :meth:`step` advances
``last_epoch`` by one and sets the new lrs; :meth:`get_last_lr`, :meth:`state_dict` and
:meth:`load_state_dict` behave as torch's.

The chainable schedulers (:class:`StepLR`, :class:`MultiStepLR`, :class:`LinearLR`,
:class:`ExponentialLR`, :class:`CosineAnnealingLR`) update the *current* ``group["lr"]``
by a recurrence, so several of them may drive one optimizer and their factors compose.
They evaluate torch 2.13's recurrences in torch's order of operations, so the lrs agree
with torch's bit for bit, not merely to a tolerance, over any number of steps.
"""

from __future__ import annotations

import copy
import math
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pyopt.optim._optimizer import Optimizer

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "InverseSqrtLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "SequentialLR",
    "StepLR",
]


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a pyopt.optim.Optimizer, got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        )


def _per_group(name: str, optimizer: Optimizer, value: Any) -> list[Any]:
    """``value`` for each param group: a scalar is repeated, a list must have one per group."""
    n = len(optimizer.param_groups)
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(
                f"{name} must have one value per param group ({n}), got {len(value)} values"
            )
        return list(value)
    return [value] * n


class LRScheduler:
    """Base class of the schedulers: torch's ``LRScheduler`` protocol over pyopt optimizers.

    Subclasses implement :meth:`get_lr`, the lrs for epoch ``last_epoch``. Chainable
    subclasses compute them from the current ``group["lr"]``; they also implement
    ``_closed_form_lr`` (the lrs at ``last_epoch`` from ``base_lrs`` alone), which
    :class:`SequentialLR` uses to restart a scheduler at epoch 0, as torch does.

    Args:
        optimizer: the pyopt optimizer whose ``group["lr"]`` the scheduler sets.
        last_epoch: the index of the last epoch seen; -1 starts the schedule. Any other
            value resumes it and needs ``"initial_lr"`` in every param group (restored
            by the optimizer's ``load_state_dict``). Construction steps once, so the
            scheduler ends at ``last_epoch + 1``.

    Attributes:
        optimizer: the optimizer.
        base_lrs: each group's ``"initial_lr"`` (its lr when the first scheduler was made).
        last_epoch: the epoch of the lrs last set (0 after construction from -1).

    Raises:
        TypeError: ``optimizer`` is not a pyopt :class:`~pyopt.optim.Optimizer`.
        KeyError: ``last_epoch != -1`` and a group lacks ``"initial_lr"``.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
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
        # LinearLR, ExponentialLR and CosineAnnealingLR leave the lrs alone on the initial
        # step (``_is_initial``), so one resumed at last_epoch = k does not apply a factor
        # the restored lrs already carry; StepLR and MultiStepLR do not check, as in torch.
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

        (torch's deprecated ``step(epoch)`` form is not provided.)
        """
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

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


class LambdaLR(LRScheduler):
    """Each group's lr is its initial lr times a function of the epoch.

    ``lr_t = base_lr · λ(t)`` with ``t = last_epoch``; not chainable (it ignores the current
    lr). A drop-in for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        optimizer: the pyopt optimizer.
        lr_lambda: a function ``epoch -> factor``, or a list of one per param group.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        ValueError: ``lr_lambda`` is a list whose length is not the number of groups.

    :meth:`state_dict` keeps, for each lambda, ``None`` when it is a plain function
    (lambdas and ``def`` functions cannot be pickled by value) and a copy of its
    ``__dict__`` when it is a callable object, which :meth:`load_state_dict` restores into
    the scheduler's own callables, as torch does.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, list | tuple):
            if len(lr_lambda) != n:
                raise ValueError(
                    f"lr_lambda must have one function per param group ({n}), got {len(lr_lambda)}"
                )
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``base_lr · λ(last_epoch)`` for each group."""
        return [
            base_lr * lmbda(self.last_epoch)
            for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer; callable objects' ``__dict__`` for lambdas."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "lr_lambdas")
        }
        state["lr_lambdas"] = [
            None
            if isinstance(fn, types.FunctionType) or not hasattr(fn, "__dict__")
            else copy.deepcopy(fn.__dict__)
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; saved callable-object state goes into ours."""
        self._load_attributes(state_dict, skip=("lr_lambdas",))
        for fn, saved in zip(self.lr_lambdas, state_dict.get("lr_lambdas", ()), strict=False):
            if saved is not None:
                fn.__dict__.update(copy.deepcopy(saved))


class StepLR(LRScheduler):
    """Multiply each group's lr by ``gamma`` every ``step_size`` epochs (chainable).

    ``lr_t = γ · lr_{t−1}`` when ``t > 0`` and ``t mod step_size = 0``, else
    ``lr_t = lr_{t−1}``; alone, ``lr_t = base_lr · γ^⌊t / step_size⌋``. A drop-in for
    ``torch.optim.lr_scheduler.StepLR``.

    Args:
        optimizer: the pyopt optimizer.
        step_size: the period of the decay, in epochs.
        gamma: the factor applied at each decay.
        last_epoch: see :class:`LRScheduler`.

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
        self.step_size = step_size
        self.gamma = gamma
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
        milestones: epoch indices (kept as a ``Counter``, like torch).
        gamma: the factor applied at each milestone.
        last_epoch: see :class:`LRScheduler`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
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
        total_iters: the number of epochs the factor takes to reach ``end_factor``.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        ValueError: ``start_factor`` or ``end_factor`` is out of range.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
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
        gamma: the factor applied each epoch.
        last_epoch: see :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``γ · lr`` (the current lr on the initial step)."""
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]


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
        T_max: the number of epochs of a half period.
        eta_min: the minimum lr.
        last_epoch: see :class:`LRScheduler`.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
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
        base_momentum, max_momentum: the momentum bounds (scalars or one per group).
        div_factor: ``max_lr / initial_lr``.
        final_div_factor: ``initial_lr / min_lr``.
        three_phase: use the three-phase schedule.
        last_epoch: the index of the last *batch*; see :class:`LRScheduler`.

    Raises:
        ValueError: no valid ``total_steps`` (nor ``epochs`` and ``steps_per_epoch``), a
            ``pct_start`` that is not a float in [0, 1], an unknown ``anneal_strategy``, a
            per-group list of the wrong length, ``cycle_momentum`` on an optimizer with
            neither ``momentum`` nor ``betas``; :meth:`step` past ``total_steps``.
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
        self.optimizer = optimizer
        if total_steps is not None:
            if not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"epochs must be a positive int, got {epochs!r}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("give total_steps, or both epochs and steps_per_epoch")
        if not isinstance(pct_start, float) or pct_start < 0 or pct_start > 1:
            raise ValueError(f"pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")

        up = float(pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if three_phase:
            down = float(2 * pct_start * self.total_steps) - 2
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
        self._anneal_func_type = anneal_strategy

        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, max_lrs, strict=True):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(
                    f"cycle_momentum=True needs an optimizer with momentum or betas; "
                    f"{type(optimizer).__name__} has neither"
                )
            self.use_beta1 = "betas" in optimizer.defaults
            max_momenta = _per_group("max_momentum", optimizer, max_momentum)
            base_momenta = _per_group("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for group, high, low in zip(
                    optimizer.param_groups, max_momenta, base_momenta, strict=True
                ):
                    self._set_momentum(group, high)
                    group["max_momentum"] = high
                    group["base_momentum"] = low
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

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
                self._set_momentum(group, momentum)
        return lrs


class SequentialLR(LRScheduler):
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
        schedulers: the schedulers, at least one.
        milestones: ``len(schedulers) − 1`` epoch indices, increasing.
        last_epoch: see :class:`LRScheduler`.

    Raises:
        ValueError: no schedulers, a scheduler of another optimizer, or the wrong number
            of milestones.
        TypeError: a scheduler that is not a pyopt :class:`LRScheduler`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if len(schedulers) < 1:
            raise ValueError("schedulers must hold at least one scheduler, got none")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(
                    f"schedulers[{i}] must be a pyopt LRScheduler, got {type(scheduler).__name__}"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"schedulers[{i}] ({type(scheduler).__name__}) drives another optimizer"
                )
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} entries, "
                f"got {len(milestones)}"
            )
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
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
        if isinstance(scheduler, SequentialLR):
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
        for scheduler, saved in zip(
            self._schedulers, state_dict.get("_schedulers", ()), strict=False
        ):
            scheduler.load_state_dict(saved)


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
        ValueError: ``warmup_steps`` is not an int ≥ 1.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``base_lr · t / w`` during the warmup, then ``base_lr · sqrt(w / t)``."""
        t, w = self.last_epoch, self.warmup_steps
        if t < w:
            return [base_lr * t / w for base_lr in self.base_lrs]
        decay = math.sqrt(w / t)
        return [base_lr * decay for base_lr in self.base_lrs]
