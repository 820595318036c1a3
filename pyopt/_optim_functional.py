"""Functional optimizer steps, in the style of ``torch.optim._functional``.

Each ``<rule>_(params, grads, <state lists>, state_steps, *, <hyperparameters>)`` updates
the params and their state in place with one fused kernel per run of adjacent tensors
(see ``pyopt/_multi.py``), after validating every argument: a call that raises has
modified nothing. Hyperparameters are checked as torch's constructors check them, except
the sign of ``lr``: a scheduler's rounding (an lr of ``-5.6e-19``) is a valid value at a
step, as in torch. ``state_steps`` is a NumPy integer array with one step count per param,
incremented in place like torch's ``state_steps`` tensors. The classes of
:mod:`pyopt.optim` are thin stateful wrappers over these functions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pyopt import _checks, _multi
from pyopt._backend import CpuCall, backend_of, call_for, kernels_for

__all__ = ["adadelta_", "adagrad_", "adam_", "adamw_", "check_hyperparameters", "rmsprop_", "sgd_"]


# --- hyperparameters ----------------------------------------------------------------

_NON_NEGATIVE = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay"),
    "Adam": ("lr", "eps", "weight_decay"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    "RMSprop": ("lr", "alpha", "eps", "momentum", "weight_decay"),
    "Adadelta": ("lr", "eps", "weight_decay"),
}
FLAGS = ("nesterov", "maximize", "amsgrad", "centered", "decoupled_weight_decay")


def check_hyperparameters(rule: str, hp: dict[str, Any], lr_sign: bool = True) -> None:
    """Raise ``ValueError``/``TypeError`` for hyperparameters torch.optim would reject.

    ``rule`` is one of SGD, Adam (also AdamW), Adagrad, RMSprop, Adadelta; ``hp`` holds
    the keys that rule uses (unknown keys are ignored, missing ones not checked). Numbers
    must be real and not NaN, flags bools, ``betas`` a pair, and the values must lie where
    torch's constructors require (``betas`` in [0, 1), Nesterov with momentum and no
    dampening, ...; outside, the update divides by zero). ``lr >= 0`` is checked only with
    ``lr_sign``: torch checks it when an optimizer is built, and a scheduler's rounding
    (``LinearLR`` to 0 gives ``-5.6e-19``) is a valid lr at a step.
    """
    for name in _NON_NEGATIVE[rule]:
        if name not in hp:
            continue
        value = _checks.real_scalar(name, hp[name])
        if value < 0 and (lr_sign or name != "lr"):
            raise ValueError(f"{name} must be >= 0 (torch.optim rejects it), got {value}")
    for name in FLAGS:
        if name in hp and not isinstance(hp[name], bool | np.bool_):
            raise TypeError(f"{name} must be a bool, got {type(hp[name]).__name__}")
    if rule == "Adam":
        betas = hp["betas"]
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        for i, beta in enumerate(betas):
            value = _checks.real_scalar(f"betas[{i}] (beta{i + 1})", beta)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"betas[{i}] (beta{i + 1}) must be in [0, 1), got {value}")
    elif rule == "Adadelta":
        rho = _checks.real_scalar("rho", hp["rho"])
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {rho}")
    elif rule == "SGD" and hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")


def _grad_mult(maximize: bool, grad_scale: float | None) -> float:
    """The factor the kernels multiply gradients by: ``±1 / grad_scale``."""
    mult = 1.0 if grad_scale is None else 1.0 / grad_scale
    return -mult if maximize else mult


def _check_grad_scale(grad_scale: Any) -> None:
    if grad_scale is not None:
        _checks.positive("grad_scale", grad_scale)


# --- the driver shared by every rule ------------------------------------------------


def _check_lists(
    params: Sequence[Any],
    grads: Sequence[Any],
    states: dict[str, Sequence[Any] | None],
    state_steps: Any,
    optional: tuple[str, ...] = (),
) -> str:
    """Validate aligned lists; return the backend. Nothing is modified.

    The state lists named in ``optional`` may be None (a state the flags do not use);
    every other list is required. Params and state, which the kernels write, must be
    writeable and lie in memory no other of them shares.
    """
    lists = {"params": params, "grads": grads, **states}
    for name, lst in lists.items():
        if lst is None and name in optional:
            continue
        if not isinstance(lst, list | tuple):
            raise TypeError(f"{name} must be a list of arrays, got {type(lst).__name__}")
    n = len(params)
    for name, lst in lists.items():
        if lst is not None and len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} entries but params has {n}")
    if not isinstance(state_steps, np.ndarray) or state_steps.dtype.kind not in "iu":
        raise TypeError("state_steps must be a NumPy integer array (one step count per param)")
    if state_steps.shape != (n,):
        raise ValueError(f"state_steps must have shape ({n},), got {state_steps.shape}")
    CpuCall().check_inplace("state_steps", state_steps)
    if n and state_steps.min() < 0:
        raise ValueError("state_steps must hold step counts >= 0")
    if n == 0:
        return "cpu"
    given = [(name, lst) for name, lst in lists.items() if lst is not None]
    if all(isinstance(arr, np.ndarray) for _, lst in given for arr in lst):
        backend = "cpu"  # the common case, without naming every array
    else:
        backend = backend_of(
            (f"{name}[{i}]", arr) for name, lst in given for i, arr in enumerate(lst)
        )
    call = call_for(backend, params[0])
    others = given[1:]
    for i, p in enumerate(params):
        dtype = (
            p.dtype if p.dtype in _checks.FLOAT_DTYPES else _checks.float_dtype(f"params[{i}]", p)
        )
        shape = tuple(p.shape)
        call.check_inplace(f"params[{i}]", p)
        for name, lst in others:
            arr = lst[i]
            if arr.dtype != dtype or tuple(arr.shape) != shape:  # fast path, then name it
                _checks.same_dtype(f"{name}[{i}]", arr, dtype, f"params[{i}]")
                _checks.shape_is(f"{name}[{i}]", arr, shape, f"the shape of params[{i}]")
            if name != "grads":
                call.check_inplace(f"{name}[{i}]", arr)
    _multi.check_disjoint(
        (f"{name}[{i}]", arr) for name, lst in given if name != "grads" for i, arr in enumerate(lst)
    )
    return backend


@functools.cache
def _nothing(backend: str, dtype: str) -> Any:
    """A length-0 array standing for a state tensor the rule does not use."""
    if backend == "cpu":
        return np.empty(0, dtype=dtype)
    from numba import cuda

    return cuda.device_array(0, dtype=dtype)


def _launch(
    backend: str,
    kernel: Callable[..., None],
    columns: list[Sequence[Any] | None],
    keys: Sequence[Any] | None,
    scalars: Callable[[int], tuple],
) -> None:
    """Call ``kernel(*column arrays, *scalars(lo))`` once per run ``[lo, hi)``.

    ``columns[0]`` are the params, ``columns[1]`` the grads (read only), the rest state
    (None: unused, passed as a length-0 array). Params and state are updated in place.
    """
    params = columns[0]
    call = call_for(backend, params[0])
    for lo, hi in _multi.runs(columns, keys):
        dtype = _checks.float_dtype("params", params[lo])
        args, write_backs = [], []
        for c, col in enumerate(columns):
            if col is None:
                args.append(_nothing(backend, dtype.name))
                continue
            if hi - lo > 1:
                flat = _multi.span(col[lo:hi])
                args.append(flat if backend == "cpu" else call.view(flat))
                continue
            arr = col[lo]
            size = math.prod(arr.shape)
            if c == 1:
                work = call.contiguous(arr)
            else:
                work, back = call.inplace(arr)
                if back is not None:
                    write_backs.append(back)
            args.append(work.reshape(size))
        kernel(*args, *scalars(lo), **call.kernel_kwargs)
        for back in write_backs:
            back()


def _step_count(state_steps: np.ndarray) -> np.ndarray:
    """Increment the step counts in place (torch counts before it updates)."""
    state_steps += 1
    return state_steps


# --- the rules ----------------------------------------------------------------------


def adam_(
    params: Sequence[Any],
    grads: Sequence[Any],
    exp_avgs: Sequence[Any],
    exp_avg_sqs: Sequence[Any],
    max_exp_avg_sqs: Sequence[Any] | None,
    state_steps: np.ndarray,
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    grad_scale: float | None = None,
) -> None:
    """One Adam (or, with ``decoupled_weight_decay``, AdamW) step over every param.

    ``g ← ±g/grad_scale (+ λ·p)``, ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``p ← p − lr/(1−β1^t) · m / (√(v̂/(1−β2^t)) + ε)`` with ``v̂ = max(v̂, v)`` under
    amsgrad and ``v̂ = v`` otherwise; AdamW first decays ``p ← p·(1 − lr·λ)`` instead of
    adding ``λ·p``. Memory traffic: 28 bytes per float32 param (36 with amsgrad).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: aligned lists of same-shape arrays.
        max_exp_avg_sqs: list of arrays when ``amsgrad``, else None.
        state_steps: NumPy integer array of step counts, incremented in place.
        lr, beta1, beta2, eps, weight_decay, amsgrad, maximize: as ``torch.optim.Adam``.
        decoupled_weight_decay: AdamW's decay.
        grad_scale: divide gradients by this (a loss scale) inside the kernel.

    Raises:
        TypeError, ValueError: a bad argument (named); nothing was modified.

    Example:
        >>> import numpy as np, pyopt
        >>> p, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
        >>> m, v, steps = np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(1, int)
        >>> pyopt.functional.adam_([p], [g], [m], [v], None, steps, lr=0.1)
        >>> [round(float(x), 4) for x in p], int(steps[0])
        ([0.9, 0.9, 0.9], 1)
    """
    hp = {"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": (beta1, beta2)}
    flags = {
        "amsgrad": amsgrad,
        "maximize": maximize,
        "decoupled_weight_decay": decoupled_weight_decay,
    }
    check_hyperparameters("Adam", {**hp, **flags}, lr_sign=False)
    _check_grad_scale(grad_scale)
    maxes = max_exp_avg_sqs if amsgrad else None
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError("max_exp_avg_sqs is required when amsgrad=True")
    backend = _check_lists(
        params,
        grads,
        {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "max_exp_avg_sqs": maxes},
        state_steps,
        optional=("max_exp_avg_sqs",),
    )
    if not params:
        return
    steps = _step_count(state_steps)
    decoupled = bool(decoupled_weight_decay)
    param_mult = 1.0 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    mult = _grad_mult(maximize, grad_scale)

    def scalars(i: int) -> tuple:
        t = float(steps[i])
        return (
            mult,
            param_mult,
            0.0 if decoupled else weight_decay,
            1.0 - beta1,
            beta2,
            1.0 - beta2,
            (1.0 - beta2**t) ** 0.5,
            eps,
            -(lr / (1.0 - beta1**t)),
            bool(amsgrad),
        )

    kernel = kernels_for(backend, "optim").adam_update
    _launch(backend, kernel, [params, grads, exp_avgs, exp_avg_sqs, maxes], steps, scalars)


def adamw_(*args: Any, weight_decay: float = 1e-2, **kwargs: Any) -> None:
    """:func:`adam_` with decoupled weight decay (``torch.optim.AdamW``; λ defaults to 1e-2)."""
    adam_(*args, weight_decay=weight_decay, decoupled_weight_decay=True, **kwargs)


def sgd_(
    params: Sequence[Any],
    grads: Sequence[Any],
    momentum_buffers: Sequence[Any] | None,
    state_steps: np.ndarray,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    grad_scale: float | None = None,
) -> None:
    """One SGD step, with momentum and Nesterov as ``torch.optim.SGD``.

    ``g ← ±g/grad_scale + λ·p``; with momentum μ: ``b ← g`` on a buffer's first step
    (its ``state_steps`` entry is 0), else ``b ← μ·b + (1 − dampening)·g``;
    ``g ← g + μ·b`` (Nesterov) or ``g ← b``; ``p ← p − lr·g``. Memory traffic: 12 bytes
    per float32 param, 20 with momentum.

    Args:
        momentum_buffers: list of arrays when ``momentum != 0``, else None.
        state_steps: the buffers' step counts (0: the buffer is initialized to ``g``).
        Others: as ``torch.optim.SGD``; ``grad_scale`` as in :func:`adam_`.
    """
    hp = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
    check_hyperparameters("SGD", {**hp, "nesterov": nesterov, "maximize": maximize}, lr_sign=False)
    _check_grad_scale(grad_scale)
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("momentum_buffers is required when momentum != 0")
    buffers = momentum_buffers if momentum != 0 else None
    backend = _check_lists(
        params, grads, {"momentum_buffers": buffers}, state_steps, optional=("momentum_buffers",)
    )
    if not params:
        return
    first = state_steps == 0
    _step_count(state_steps)
    mult = _grad_mult(maximize, grad_scale)

    def scalars(i: int) -> tuple:
        return (
            mult,
            weight_decay,
            momentum,
            1.0 - dampening,
            -lr,
            bool(first[i]),
            bool(nesterov),
        )

    kernel = kernels_for(backend, "optim").sgd_update
    _launch(backend, kernel, [params, grads, buffers], first, scalars)


def adagrad_(
    params: Sequence[Any],
    grads: Sequence[Any],
    state_sums: Sequence[Any],
    state_steps: np.ndarray,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    grad_scale: float | None = None,
) -> None:
    """One Adagrad step (``torch.optim.Adagrad``).

    ``g ← ±g/grad_scale + λ·p``, ``s ← s + g²``, ``p ← p − clr·g/(√s + ε)`` with
    ``clr = lr / (1 + (t − 1)·lr_decay)``. Memory traffic: 20 bytes per float32 param.
    """
    hp = {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps}
    check_hyperparameters("Adagrad", {**hp, "maximize": maximize}, lr_sign=False)
    _check_grad_scale(grad_scale)
    backend = _check_lists(params, grads, {"state_sums": state_sums}, state_steps)
    if not params:
        return
    steps = _step_count(state_steps)
    mult = _grad_mult(maximize, grad_scale)

    def scalars(i: int) -> tuple:
        return (mult, weight_decay, eps, -(lr / (1.0 + (float(steps[i]) - 1.0) * lr_decay)))

    kernel = kernels_for(backend, "optim").adagrad_update
    _launch(backend, kernel, [params, grads, state_sums], steps, scalars)


def rmsprop_(
    params: Sequence[Any],
    grads: Sequence[Any],
    square_avgs: Sequence[Any],
    grad_avgs: Sequence[Any] | None,
    momentum_buffers: Sequence[Any] | None,
    state_steps: np.ndarray,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    grad_scale: float | None = None,
) -> None:
    """One RMSprop step (``torch.optim.RMSprop``).

    ``g ← ±g/grad_scale + λ·p``, ``v ← α·v + (1 − α)·g²``; centered:
    ``ḡ ← α·ḡ + (1 − α)·g``, ``a = √(v − ḡ²) + ε``, else ``a = √v + ε``; momentum μ > 0:
    ``b ← μ·b + g/a``, ``p ← p − lr·b``, else ``p ← p − lr·g/a``. Memory traffic: 20
    bytes per float32 param, 28 centered or with momentum, 36 with both.

    Args:
        grad_avgs: list of arrays when ``centered``, else None.
        momentum_buffers: list of arrays when ``momentum > 0``, else None.
    """
    hp = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum}
    check_hyperparameters(
        "RMSprop",
        {**hp, "weight_decay": weight_decay, "centered": centered, "maximize": maximize},
        lr_sign=False,
    )
    _check_grad_scale(grad_scale)
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs is required when centered=True")
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("momentum_buffers is required when momentum > 0")
    averages = grad_avgs if centered else None
    buffers = momentum_buffers if momentum > 0 else None
    states = {"square_avgs": square_avgs, "grad_avgs": averages, "momentum_buffers": buffers}
    backend = _check_lists(
        params, grads, states, state_steps, optional=("grad_avgs", "momentum_buffers")
    )
    if not params:
        return
    _step_count(state_steps)
    args = (
        _grad_mult(maximize, grad_scale),
        weight_decay,
        alpha,
        1.0 - alpha,
        eps,
        momentum,
        -lr,
        bool(centered),
    )
    kernel = kernels_for(backend, "optim").rmsprop_update
    columns = [params, grads, square_avgs, averages, buffers]
    _launch(backend, kernel, columns, None, lambda i: args)


def adadelta_(
    params: Sequence[Any],
    grads: Sequence[Any],
    square_avgs: Sequence[Any],
    acc_deltas: Sequence[Any],
    state_steps: np.ndarray,
    *,
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: float | None = None,
) -> None:
    """One Adadelta step (``torch.optim.Adadelta``).

    ``g ← ±g/grad_scale + λ·p``, ``v ← ρ·v + (1 − ρ)·g²``,
    ``Δ = √(u + ε)/√(v + ε)·g``, ``u ← ρ·u + (1 − ρ)·Δ²``, ``p ← p − lr·Δ``. Memory
    traffic: 28 bytes per float32 param.
    """
    hp = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay}
    check_hyperparameters("Adadelta", {**hp, "maximize": maximize}, lr_sign=False)
    _check_grad_scale(grad_scale)
    states = {"square_avgs": square_avgs, "acc_deltas": acc_deltas}
    backend = _check_lists(params, grads, states, state_steps)
    if not params:
        return
    _step_count(state_steps)
    args = (_grad_mult(maximize, grad_scale), weight_decay, rho, 1.0 - rho, eps, -lr)
    kernel = kernels_for(backend, "optim").adadelta_update
    _launch(backend, kernel, [params, grads, square_avgs, acc_deltas], None, lambda i: args)


def grad_sumsq(grads: Sequence[Any], backend: str) -> tuple[float, bool]:
    """``(Σ g², all finite)`` over every element of ``grads`` (None entries skipped),
    accumulated in float64; ``grads`` are validated arrays of ``backend``.

    Deterministic: per-block partial sums from the kernels are added on the host in a
    fixed order. One read of every gradient; on CUDA, one small device-to-host copy.
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0, True
    kernels = kernels_for(backend, "optim")
    call = call_for(backend, grads[0])
    partials = _multi.block_partials(
        call,
        _multi.run_pieces(grads),
        kernels.grad_sumsq_blocks,
        lambda flat, rows: kernels.grad_sumsq(flat, rows, **call.kernel_kwargs),
        columns=(2,),
    )
    total = float(np.sum(partials[:, 0]))
    finite = bool(np.sum(partials[:, 1]) == 0.0)
    return total, finite
