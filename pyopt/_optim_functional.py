"""Functional optimizer steps, in the style of ``torch.optim._functional``.

Each ``<rule>_(params, grads, <state lists>, state_steps, *, <hyperparameters>)`` updates
the params and their state in place with one fused kernel call per dtype, however the
arrays are allocated (a segment table of their addresses: see ``kernels/specs.py``),
after validating every argument: a call that raises has modified nothing.
Hyperparameters are checked as torch's constructors check them, except the sign of
``lr``: a scheduler's rounding (an lr of ``-5.6e-19``) is a valid value at a step, as in
torch. ``state_steps`` is a NumPy integer array with one step count per param,
incremented in place like torch's ``state_steps`` tensors. The classes of
:mod:`pyopt.optim` and :mod:`pyopt.torch.optim` build the same :class:`Part` per param
group (without validating again what their step checked) and :func:`run` all of a
step's groups at once.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from pyopt import _checks, _multi
from pyopt._backend import (
    SIXTEEN_BIT,
    CpuCall,
    backend_of,
    call_for,
    compute_dtype,
    dtype_of,
    format_of,
    kernels_for,
)
from pyopt.kernels import specs

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


_BFLOAT16 = SIXTEEN_BIT[1]


def state_dtype_for(name: str, state: np.dtype, param: np.dtype) -> np.dtype:
    """``state`` when optimizer state of that dtype may go with ``param``'s params: the
    param dtype for float32/float64, bfloat16 (half the state memory) for float32 and
    16-bit params, float32 for 16-bit params; else a ``TypeError`` naming ``name``."""
    allowed = [param] if param in _checks.FLOAT_DTYPES else []
    if param != np.float64:
        allowed += [np.dtype(np.float32), _BFLOAT16]
    if state not in allowed:
        names = " or ".join(dict.fromkeys(str(d) for d in allowed))
        raise TypeError(f"{name} has dtype {state}; with {param} params it must be {names}")
    return state


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
    states_of = [(name, lst) for name, lst in others if name != "grads"]
    for i, p in enumerate(params):
        dtype = _checks.param_dtype(f"params[{i}]", p)
        shape = tuple(p.shape)
        call.check_inplace(f"params[{i}]", p)
        grad = grads[i]
        if dtype_of(grad) != dtype or tuple(grad.shape) != shape:  # fast path, then name it
            _checks.same_dtype(f"grads[{i}]", grad, dtype, f"params[{i}]")
            _checks.shape_is(f"grads[{i}]", grad, shape, f"the shape of params[{i}]")
        first = None  # the state's dtype: one for all of a param's state
        for name, lst in states_of:
            arr = lst[i]
            if first is None:
                first = (f"{name}[{i}]", state_dtype_for(f"{name}[{i}]", dtype_of(arr), dtype))
            if dtype_of(arr) != first[1] or tuple(arr.shape) != shape:
                _checks.same_dtype(f"{name}[{i}]", arr, first[1], first[0])
                _checks.shape_is(f"{name}[{i}]", arr, shape, f"the shape of params[{i}]")
            call.check_inplace(f"{name}[{i}]", arr)
    _multi.check_disjoint(
        (f"{name}[{i}]", arr) for name, lst in given if name != "grads" for i, arr in enumerate(lst)
    )
    return backend


class Part(NamedTuple):
    """One rule's step over aligned lists, ready to launch (see :func:`run`).

    Attributes:
        spec: the kernel spec of the rule.
        columns: the params, the grads, then each state list of ``spec.states`` (None: a
            state these hyperparameters do not use), then, with ``master``, the float32
            master copies of the (16-bit) params.
        steps: the step counts, incremented in place by :func:`run`.
        row: step count after the increment -> ``(scalars, flags)`` of the kernel row.
        master: whether the last column holds master copies.
        seed: the Philox seed of stochastic rounding (bfloat16 params without a master),
            None to round to nearest.
        streams: per param, the Philox stream its stochastic rounding draws from (None:
            its position in this part), and ``starts`` the index its first element has
            in that stream (None: 0). An optimizer keys a param by its index among all
            its params, so the draws depend on the seed, the param, the element and the
            step only.
    """

    spec: specs.RuleSpec
    columns: list[Sequence[Any] | None]
    steps: np.ndarray
    row: Callable[[int], tuple[tuple[float, ...], tuple[bool, ...]]]
    master: bool = False
    seed: int | None = None
    streams: Any = None
    starts: Any = None

    def with_precision(
        self,
        masters: Sequence[Any] | None,
        seed: int | None,
        streams: Any = None,
        starts: Any = None,
    ) -> Part:
        """This part with the master copies ``masters`` (None: none; None entries for
        float32/float64 params) as its last column and stochastic rounding under ``seed``
        (None: round to nearest) from ``streams`` at ``starts``."""
        columns = [*self.columns, masters] if masters is not None else self.columns
        return self._replace(
            columns=columns, master=masters is not None, seed=seed, streams=streams, starts=starts
        )

    def storage(self, dtype: np.dtype, state_dtype: np.dtype | None) -> specs.Storage:
        """The kernel variant of an entry with params of ``dtype`` and state of
        ``state_dtype`` (None: no state): master copies and stochastic rounding apply to
        16-bit and bfloat16 params only."""
        sixteen = dtype in SIXTEEN_BIT
        return specs.Storage(
            param=format_of(dtype) if sixteen else None,
            state="bfloat16" if state_dtype == _BFLOAT16 else None,
            master=self.master and sixteen,
            stochastic=self.seed is not None and dtype == _BFLOAT16 and not self.master,
        )


def _address(call: Any, arr: Any, read_only: bool, alive: list, write_backs: list) -> int:
    """The address the kernel reads ``arr`` at: its own when C-contiguous, else that of a
    contiguous copy kept in ``alive`` (and, unless ``read_only``, written back by the
    function appended to ``write_backs``)."""
    where = _multi.locate(arr)
    if where is None:
        if read_only:
            work = call.contiguous(arr)
        else:
            work, back = call.inplace(arr)
            write_backs.append(back)
        alive.append(work)
        where = _multi.locate(work)
    return where[1]


class _Layout:
    """Where one part's params and states lie: per entry its element count, dtype and a
    segment-table row (``kernels/specs.py``) with every address but the grad's (grads are
    located per step).

    A plan keeps the arrays it located, so it can tell by identity that a later step
    meets the same ones (and their ids cannot be reused meanwhile).
    """

    def __init__(self, call: Any, part: Part):
        self.arrays = _written_arrays(part)
        params = part.columns[0]
        self.sizes = np.array([math.prod(p.shape) for p in params], dtype=np.int64)
        states = [column for column in part.columns[2 : 2 + len(part.spec.states)] if column]
        self.storages = [
            part.storage(dtype_of(p), dtype_of(states[0][k]) if states else None)
            for k, p in enumerate(params)
        ]
        self.compute = [compute_dtype(dtype_of(p)) for p in params]
        extra = 3 if part.seed is not None else 0  # the stochastic stream: seed, offset, start
        self.segments = np.zeros((len(params), 1 + len(part.columns) + extra), dtype=np.int64)
        self.alive: list[Any] = []  # contiguous copies of strided params or state
        self.write_backs: list[Callable[[], None]] = []
        for c, column in enumerate(part.columns):
            if c != 1 and column is not None:
                self.segments[:, 1 + c] = [
                    0 if arr is None else _address(call, arr, False, self.alive, self.write_backs)
                    for arr in column
                ]
        # With copies, the next step must copy again: such a layout is not kept.
        self.reusable = not self.alive

    def matches(self, part: Part) -> bool:
        arrays = _written_arrays(part)
        return len(arrays) == len(self.arrays) and all(map(operator.is_, arrays, self.arrays))


def _written_arrays(part: Part) -> list[Any]:
    """The params, state and master arrays of ``part``, in column order."""
    return [
        arr
        for c, column in enumerate(part.columns)
        if c != 1 and column
        for arr in column
        if arr is not None
    ]


class Plan:
    """The layouts of an optimizer's parts, kept between steps: a step over the same
    params and state (the common case) locates only its grads."""

    def __init__(self) -> None:
        self.layouts: list[_Layout] = []

    def layout(self, call: Any, index: int, part: Part) -> _Layout:
        if index < len(self.layouts) and self.layouts[index].matches(part):
            return self.layouts[index]
        layout = _Layout(call, part)
        if layout.reusable:
            del self.layouts[index:]
            self.layouts.append(layout)
        return layout


def run(backend: str, parts: Sequence[Part], plan: Plan | None = None) -> None:
    """Increment the step counts and update every entry of ``parts`` (validated lists of
    one rule, one backend) in place: one kernel call per dtype, whatever the allocation
    of the arrays, their param groups and their step counts.

    Contiguous arrays are read in place through their addresses; a strided param or state
    is updated through a contiguous copy written back after the call, a strided grad read
    through a contiguous copy. ``plan`` (an optimizer's) keeps the located params and
    state between calls.
    """
    parts = [part for part in parts if part.columns[0]]
    if not parts:
        return
    spec = parts[0].spec
    call = call_for(backend, parts[0].columns[0][0])
    plan = plan or Plan()
    pieces: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}
    scalars: list[tuple[float, ...]] = []
    flags: list[tuple[bool, ...]] = []
    layouts, grad_copies = [], []
    for pi, part in enumerate(parts):
        steps = part.steps
        steps += 1  # in place (torch counts before it updates)
        layout = plan.layout(call, pi, part)
        layouts.append(layout)
        addresses = layout.segments.copy()
        addresses[:, 2] = [_address(call, g, True, grad_copies, []) for g in part.columns[1]]
        # One kernel row per distinct step count of the part.
        counts, row_of = np.unique(steps, return_inverse=True)
        addresses[:, 0] = len(scalars) + row_of.reshape(-1)
        for t in counts.tolist():
            row_scalars, row_flags = part.row(t)
            scalars.append(row_scalars)
            flags.append(row_flags)
        if part.seed is not None:  # Philox key: the seed; counter: (element, stream + step·2³²)
            stream = np.arange(len(steps)) if part.streams is None else part.streams
            addresses[:, -3] = part.seed
            addresses[:, -2] = np.asarray(stream, np.int64) | (
                (steps.astype(np.int64) & 0xFFFFFFFF) << 32
            )
            addresses[:, -1] = 0 if part.starts is None else part.starts
        keys = [(st, c) for st, c in zip(layout.storages, layout.compute, strict=True)]
        for key in dict.fromkeys(keys):
            keep = np.array([k == key for k in keys]) & (layout.sizes > 0)
            # The part's table holds every column its entries use, in kernel order: the
            # variant takes its leading ones (no master or stream for a float32 entry).
            width = 1 + len(key[0].columns(spec)) + len(key[0].extra())
            pieces.setdefault(key, []).append((addresses[keep, :width], layout.sizes[keep]))
    kernels = kernels_for(backend, "optim")
    for (storage, dtype), parts_of_key in pieces.items():
        segments = np.concatenate([a for a, _ in parts_of_key])
        offsets = np.zeros(len(segments) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([n for _, n in parts_of_key]), out=offsets[1:])
        kernels.update(
            spec,
            segments,
            offsets,
            np.array(scalars, dtype=dtype).reshape(len(scalars), len(spec.scalars)),
            np.array(flags, dtype=np.uint8).reshape(len(flags), len(spec.flags)),
            storage=storage,
            **call.kernel_kwargs,
        )
    for layout in layouts:
        for back in layout.write_backs:
            back()


def check_precision(
    params: Sequence[Any],
    master_params: Sequence[Any] | None,
    stochastic_rounding: Any,
    seed: Any,
    others: Sequence[tuple[str, Any]] = (),
) -> tuple[list[Any] | None, int | None]:
    """Validate the mixed-precision options of a step over ``params`` (checked arrays);
    return ``(masters, seed)`` for :meth:`Part.with_precision` (None: not used).

    ``master_params``: None, or one entry per param: a float32 array of its shape for a
    float16/bfloat16 param, None for a float32/float64 one. ``stochastic_rounding``:
    round bfloat16 params (those without a master) stochastically, keyed by ``seed`` (an
    int in [0, 2⁶³)). ``others`` are the step's other written arrays, which the masters
    must not overlap. Raises ``TypeError``/``ValueError`` naming the argument.
    """
    stochastic = _checks.flag("stochastic_rounding", stochastic_rounding)
    seed = _checks.integer("seed", seed, minimum=0)
    if seed >= 2**63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    if master_params is None:
        return None, seed if stochastic else None
    if stochastic:
        raise ValueError(
            "stochastic_rounding is for bfloat16 params without master copies; "
            "master_params were given"
        )
    if not isinstance(master_params, list | tuple):
        raise TypeError(f"master_params must be a list, got {type(master_params).__name__}")
    if len(master_params) != len(params):
        raise ValueError(
            f"master_params has {len(master_params)} entries but params has {len(params)}"
        )
    written = list(others)
    for i, (p, master) in enumerate(zip(params, master_params, strict=True)):
        name = f"master_params[{i}]"
        if dtype_of(p) not in SIXTEEN_BIT:
            if master is not None:
                raise ValueError(f"{name} must be None: params[{i}] is {dtype_of(p)}, not 16-bit")
            continue
        if master is None:
            raise ValueError(
                f"{name} is None but params[{i}] is {dtype_of(p)}: give its float32 copy"
            )
        _checks.same_dtype(name, master, np.dtype(np.float32), "a master copy")
        _checks.shape_is(name, master, tuple(p.shape), f"the shape of params[{i}]")
        backend_of([("params[0]", params[0]), (name, master)])
        call_for(backend_of([(name, master)]), master).check_inplace(name, master)
        written.append((name, master))
    _multi.check_disjoint(written)
    return list(master_params), None


def _public(build: Callable[..., tuple[str | None, Part]], name: str) -> Callable[..., None]:
    """The public step of the rule whose arguments ``build`` maps to ``(backend, part)``
    after validating them, with the mixed-precision options of :func:`check_precision`:
    same signature and documentation, launches the part."""

    @functools.wraps(build)
    def step(
        *args: Any,
        master_params: Sequence[Any] | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if "check" in kwargs:
            raise TypeError(f"{name}() got an unexpected keyword argument 'check'")
        backend, part = build(*args, check=True, **kwargs)
        written = [
            (f"{c}[{i}]", arr)
            for c, column in zip(part.spec.columns, part.columns, strict=False)
            if column and c != "grad"
            for i, arr in enumerate(column)
        ]
        masters, seed = check_precision(
            part.columns[0], master_params, stochastic_rounding, seed, written
        )
        run(backend, [part.with_precision(masters, seed)])

    signature = inspect.signature(build)
    parameters = [p for p in signature.parameters.values() if p.name != "check"]
    precision = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
        for n, d, a in (
            ("master_params", None, "Sequence[Any] | None"),
            ("stochastic_rounding", False, "bool"),
            ("seed", 0, "int"),
        )
    ]
    variadic = [p for p in parameters if p.kind is p.VAR_KEYWORD]
    parameters = [p for p in parameters if p.kind is not p.VAR_KEYWORD] + precision + variadic
    step.__signature__ = signature.replace(parameters=parameters, return_annotation=None)
    step.__name__ = step.__qualname__ = name
    return step


# --- the rules ----------------------------------------------------------------------
#
# Each ``_<rule>`` validates its arguments and returns ``(backend, Part)``; with
# ``check=False`` (optimizers that validated the step themselves) it only builds the part,
# and the backend is None. The part holds the kernel rows as a
# function of the step count, computed in float64 and cast to the param dtype.


def _adam(
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
    check: bool = True,
) -> tuple[str | None, Part]:
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
    backend = None
    if check:  # before anything reads the hyperparameters
        hp = {"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": (beta1, beta2)}
        flags = {
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        check_hyperparameters("Adam", {**hp, **flags}, lr_sign=False)
        _check_grad_scale(grad_scale)
        if amsgrad and max_exp_avg_sqs is None:
            raise ValueError("max_exp_avg_sqs is required when amsgrad=True")
    maxes = max_exp_avg_sqs if amsgrad else None
    states = {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "max_exp_avg_sqs": maxes}
    if check:
        backend = _check_lists(params, grads, states, state_steps, optional=("max_exp_avg_sqs",))
    decoupled = bool(decoupled_weight_decay)
    param_mult = 1.0 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    mult = _grad_mult(maximize, grad_scale)

    def row(t: int) -> tuple[tuple[float, ...], tuple[bool, ...]]:
        scalars = (
            mult,
            param_mult,
            0.0 if decoupled else weight_decay,
            1.0 - beta1,
            beta2,
            1.0 - beta2,
            (1.0 - beta2**t) ** 0.5,
            eps,
            -(lr / (1.0 - beta1**t)),
        )
        return scalars, (bool(amsgrad),)

    return backend, Part(specs.ADAM, [params, grads, *states.values()], state_steps, row)


def _adamw(*args: Any, weight_decay: float = 1e-2, **kwargs: Any) -> tuple[str | None, Part]:
    """:func:`adam_` with decoupled weight decay (``torch.optim.AdamW``; λ defaults to 1e-2)."""
    return _adam(*args, weight_decay=weight_decay, decoupled_weight_decay=True, **kwargs)


def _sgd(
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
    check: bool = True,
) -> tuple[str | None, Part]:
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
    backend = None
    if check:  # before anything reads the hyperparameters
        hp = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
        hp |= {"nesterov": nesterov, "maximize": maximize}
        check_hyperparameters("SGD", hp, lr_sign=False)
        _check_grad_scale(grad_scale)
        if momentum != 0 and momentum_buffers is None:
            raise ValueError("momentum_buffers is required when momentum != 0")
    buffers = momentum_buffers if momentum != 0 else None
    if check:
        backend = _check_lists(
            params,
            grads,
            {"momentum_buffers": buffers},
            state_steps,
            optional=("momentum_buffers",),
        )
    scalars = (_grad_mult(maximize, grad_scale), weight_decay, momentum, 1.0 - dampening, -lr)

    def row(t: int) -> tuple[tuple[float, ...], tuple[bool, ...]]:
        # A buffer's first step (b ← g) is its step count's first increment.
        return scalars, (momentum != 0, t == 1, bool(nesterov))

    return backend, Part(specs.SGD, [params, grads, buffers], state_steps, row)


def _adagrad(
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
    check: bool = True,
) -> tuple[str | None, Part]:
    """One Adagrad step (``torch.optim.Adagrad``).

    ``g ← ±g/grad_scale + λ·p``, ``s ← s + g²``, ``p ← p − clr·g/(√s + ε)`` with
    ``clr = lr / (1 + (t − 1)·lr_decay)``. Memory traffic: 20 bytes per float32 param.
    """
    backend = None
    if check:
        hp = {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps}
        check_hyperparameters("Adagrad", {**hp, "maximize": maximize}, lr_sign=False)
        _check_grad_scale(grad_scale)
        backend = _check_lists(params, grads, {"state_sums": state_sums}, state_steps)
    mult = _grad_mult(maximize, grad_scale)

    def row(t: int) -> tuple[tuple[float, ...], tuple[bool, ...]]:
        return (mult, weight_decay, eps, -(lr / (1.0 + (t - 1.0) * lr_decay))), ()

    return backend, Part(specs.ADAGRAD, [params, grads, state_sums], state_steps, row)


def _rmsprop(
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
    check: bool = True,
) -> tuple[str | None, Part]:
    """One RMSprop step (``torch.optim.RMSprop``).

    ``g ← ±g/grad_scale + λ·p``, ``v ← α·v + (1 − α)·g²``; centered:
    ``ḡ ← α·ḡ + (1 − α)·g``, ``a = √(v − ḡ²) + ε``, else ``a = √v + ε``; momentum μ > 0:
    ``b ← μ·b + g/a``, ``p ← p − lr·b``, else ``p ← p − lr·g/a``. Memory traffic: 20
    bytes per float32 param, 28 centered or with momentum, 36 with both.

    Args:
        grad_avgs: list of arrays when ``centered``, else None.
        momentum_buffers: list of arrays when ``momentum > 0``, else None.
    """
    backend = None
    if check:  # before anything reads the hyperparameters
        hp = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum}
        hp |= {"weight_decay": weight_decay, "centered": centered, "maximize": maximize}
        check_hyperparameters("RMSprop", hp, lr_sign=False)
        _check_grad_scale(grad_scale)
        if centered and grad_avgs is None:
            raise ValueError("grad_avgs is required when centered=True")
        if momentum > 0 and momentum_buffers is None:
            raise ValueError("momentum_buffers is required when momentum > 0")
    averages = grad_avgs if centered else None
    buffers = momentum_buffers if momentum > 0 else None
    states = {"square_avgs": square_avgs, "grad_avgs": averages, "momentum_buffers": buffers}
    if check:
        backend = _check_lists(
            params, grads, states, state_steps, optional=("grad_avgs", "momentum_buffers")
        )
    scalars = (
        _grad_mult(maximize, grad_scale), weight_decay, alpha, 1.0 - alpha, eps, momentum, -lr,
    )  # fmt: skip
    flags = (bool(centered), momentum > 0)
    columns = [params, grads, *states.values()]
    return backend, Part(specs.RMSPROP, columns, state_steps, lambda t: (scalars, flags))


def _adadelta(
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
    check: bool = True,
) -> tuple[str | None, Part]:
    """One Adadelta step (``torch.optim.Adadelta``).

    ``g ← ±g/grad_scale + λ·p``, ``v ← ρ·v + (1 − ρ)·g²``,
    ``Δ = √(u + ε)/√(v + ε)·g``, ``u ← ρ·u + (1 − ρ)·Δ²``, ``p ← p − lr·Δ``. Memory
    traffic: 28 bytes per float32 param.
    """
    states = {"square_avgs": square_avgs, "acc_deltas": acc_deltas}
    backend = None
    if check:
        hp = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay}
        check_hyperparameters("Adadelta", {**hp, "maximize": maximize}, lr_sign=False)
        _check_grad_scale(grad_scale)
        backend = _check_lists(params, grads, states, state_steps)
    scalars = (_grad_mult(maximize, grad_scale), weight_decay, rho, 1.0 - rho, eps, -lr)
    columns = [params, grads, *states.values()]
    return backend, Part(specs.ADADELTA, columns, state_steps, lambda t: (scalars, ()))


adam_ = _public(_adam, "adam_")
adamw_ = _public(_adamw, "adamw_")
sgd_ = _public(_sgd, "sgd_")
adagrad_ = _public(_adagrad, "adagrad_")
rmsprop_ = _public(_rmsprop, "rmsprop_")
adadelta_ = _public(_adadelta, "adadelta_")
