"""The optimizer base class: param groups, flat state, fused steps, checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from pyopt import _checks, _multi
from pyopt._backend import (
    SIXTEEN_BIT,
    backend_of,
    call_for,
    compute_dtype,
    copy_into,
    dtype_of,
    host_value,
    is_array,
    is_torch,
    to_numpy,
    type_name,
)
from pyopt._clip import grad_sumsq
from pyopt._optim_functional import (
    FLAGS,
    Part,
    Plan,
    check_hyperparameters,
    run,
    state_dtype_for,
)

# The mixed-precision options every optimizer takes, with their defaults: group
# hyperparameters like lr (see Optimizer).
PRECISION = {"master_weights": False, "state_dtype": None, "stochastic_rounding": False, "seed": 0}
MASTER = "master_param"  # the state tensor holding a 16-bit param's float32 master copy
STATE_DTYPES = {None: None, "float32": np.dtype(np.float32), "bfloat16": SIXTEEN_BIT[1]}


def state_dtype_name(value: Any) -> str | None:
    """A ``state_dtype=`` option as its name: None, "float32" or "bfloat16" (a dtype,
    its name, ``ml_dtypes.bfloat16``; torch dtypes too); else a ``TypeError``."""
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if not isinstance(value, str):
        try:
            name = np.dtype(value).name
        except TypeError:
            pass
    if name not in ("float32", "bfloat16"):
        raise TypeError(f"state_dtype must be None, float32 or bfloat16, got {value!r}")
    return name


def check_precision_options(group: Mapping[str, Any]) -> None:
    """The mixed-precision options of a param group (:data:`PRECISION`), checked."""
    master = _checks.flag("master_weights", group["master_weights"])
    stochastic = _checks.flag("stochastic_rounding", group["stochastic_rounding"])
    state_dtype_name(group["state_dtype"])
    seed = _checks.integer("seed", group["seed"], minimum=0)
    if seed >= 2**63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    if master and stochastic:
        raise ValueError(
            "stochastic_rounding is for bfloat16 params without a master copy: "
            "use master_weights=True or stochastic_rounding=True, not both"
        )


def state_dtype(group: Mapping[str, Any], param: np.dtype) -> np.dtype:
    """The dtype of the group's state for a param of dtype ``param``: its
    ``state_dtype`` option, else the compute dtype (float32 for 16-bit params)."""
    chosen = STATE_DTYPES[state_dtype_name(group.get("state_dtype"))]
    return compute_dtype(param) if chosen is None else chosen


class StepResult(NamedTuple):
    """What :meth:`Optimizer.step` did.

    Attributes:
        grad_norm: the global L2 norm of the gradients (divided by ``grad_scale``), when
            the step computed one (clipping, loss scaling or a finiteness check), else
            None. inf or NaN when a gradient element was.
        skipped: True when a gradient element was inf or NaN and the step changed
            nothing (params, state and step counts untouched).
    """

    grad_norm: float | None
    skipped: bool


class _GroupState:
    """The state of one param group: step counts and flat state buffers.

    Each state tensor (``exp_avg``, ...) of the group is one allocation per dtype, handed
    out as per-param views in param order, so consecutive params' state is adjacent and a
    step over a flat param store is one kernel call per state layout.
    """

    def __init__(self, n: int):
        self.steps = np.zeros(n, dtype=np.int64)
        self.buffers: dict[str, list[Any]] = {}


class Optimizer:
    """Base class of pyopt's optimizers (torch.optim semantics, fused kernels).

    Args:
        params: as torch's: an iterable (a list, a generator) of arrays or of
            ``(name, array)`` pairs (``model.named_parameters()``), a dict name -> array,
            or a list of param-group dicts (``{"params": ..., "lr": ...}``, where
            ``params`` may also be one array). All groups named or none; a single array
            as ``params`` itself is a TypeError, as in torch. Arrays are float32 or
            float64, float16 or bfloat16 (``ml_dtypes.bfloat16`` NumPy arrays, torch
            tensors), writeable, sharing no memory, all NumPy (CPU) or all CUDA (CuPy,
            Numba, torch), updated in place.
        defaults: the hyperparameters of every group that does not set its own, checked
            as torch checks them when a group is added, and again at every step except
            the sign of ``lr``: a scheduler's rounding of the lr below zero
            (``-5.6e-19``) is a valid value, as in torch.

    Mixed precision (group options, given to every optimizer's constructor):

    * ``master_weights=True``: each float16/bfloat16 param gets a float32 master copy
      (state ``"master_param"``); the step updates the master in float32 with the
      gradient upcast and writes the param as the master rounded to nearest even, in the
      same pass. The params after each step are bit-identical to rounding the params of
      the float32 optimizer fed the same (upcast) gradients.
    * ``state_dtype``: None (the compute dtype: float32 for 16-bit params), "float32" or
      "bfloat16" (half the state memory; for float32 and 16-bit params).
    * ``stochastic_rounding=True, seed=0``: bfloat16 params without a master are rounded
      up or down with probability proportional to the distance (Philox keyed by the seed,
      the param's index and the step: reproducible, the same on CPU and CUDA).

    Each group's ``"params"`` list is fixed once added (change it through
    :meth:`add_param_group`); the other entries of ``param_groups`` are read at every
    step.

    A step is one fused kernel call (one launch on CUDA) per dtype, for every group and
    step count, however the arrays are allocated: the kernel walks a table of their
    addresses. A :class:`ParamBuffer` keeps the arrays adjacent, which the kernel reads
    as one stream.
    """

    _rule: ClassVar[str]
    # Hyperparameters a loaded state dict cannot change (AdamW's decoupled decay).
    _forced_on_load: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._names: list[str | None] = []
        self._params: list[Any] = []
        self._states: list[_GroupState] = []
        self._backend: str | None = None
        self._plan = Plan()  # where the params and state lie, kept between steps
        if is_array(params) or is_torch(params):
            raise TypeError(
                "params must be an iterable of arrays, a dict name -> array or a list of "
                f"param groups, got a single array ({type_name(params)}): pass [params]"
            )
        if isinstance(params, Mapping):
            groups: list[Any] = [{"params": params}]
        else:
            groups = _as_list("params", params)
            if not groups:
                raise ValueError("params is empty: the optimizer got an empty parameter list")
            if not isinstance(groups[0], Mapping):
                groups = [{"params": groups}]
        for gi, group in enumerate(groups):
            self._add_group(group, f"params[{gi}]" if len(groups) > 1 else "params")

    # --- construction -----------------------------------------------------------------

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a param group (torch's ``add_param_group``): its params and, optionally, its
        own hyperparameters; the others are taken from the optimizer's defaults.

        Everything is checked before the optimizer changes: a group that does not fit
        (a param already in another group, a bad hyperparameter, named params beside
        unnamed ones, another device) raises and adds nothing.

        Args:
            param_group: ``{"params": arrays, <hyperparameter>: value, ...}``; ``params``
                is an array, an iterable of arrays or of ``(name, array)`` pairs (as
                ``named_parameters()`` gives), or a dict name -> array.

        Raises:
            TypeError, ValueError: what does not fit, named.
        """
        self._add_group(param_group, f"param_groups[{len(self.param_groups)}]")

    def _add_group(self, param_group: Any, where: str) -> None:
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{where} must be a param group dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{where} is a param group without a 'params' key")
        names, arrays = _split_params(param_group["params"], f"{where}['params']")
        if not arrays:
            raise ValueError(f"{where}['params'] is empty")
        if self.param_groups and (names is None) != (self._names[0] is None):
            raise ValueError(
                f"{where} has {'unnamed' if names is None else 'named'} params but the "
                f"optimizer's other groups are {'named' if names is None else 'unnamed'}: "
                "all params must be given with names or all without"
            )
        options = {k: v for k, v in param_group.items() if k not in ("params", "param_names")}
        group = {**self.defaults, **options, "params": arrays}
        if names is not None:
            group["param_names"] = names
        try:
            self._check_group(group, lr_sign=True)
        except (TypeError, ValueError) as exc:
            if where == "params":
                raise
            raise type(exc)(f"{where}: {exc}") from None
        pairs = [(f"{where}['params'][{k}]", arr) for k, arr in enumerate(arrays)]
        known = [("the optimizer's params", self._params[0])] if self._params else []
        backend = backend_of([*known, *pairs])
        call = call_for(backend, arrays[0])
        group["state_dtype"] = state_dtype_name(group["state_dtype"])
        for name, arr in pairs:
            dtype = _checks.param_dtype(name, arr)
            call.check_inplace(name, arr)
            chosen = STATE_DTYPES[group["state_dtype"]]
            if chosen is not None:
                state_dtype_for(f"{where}: state_dtype", chosen, dtype)
        # A param given twice (or two views of one memory) would be updated twice a step.
        _multi.check_disjoint([*((f"param {i}", p) for i, p in enumerate(self._params)), *pairs])
        # Checked: now the optimizer changes.
        self._backend = backend
        self.param_groups.append(group)
        self._names.extend(names if names is not None else [None] * len(arrays))
        self._params.extend(arrays)
        self._states.append(_GroupState(len(arrays)))
        self._init_group_state(len(self.param_groups) - 1)

    def _check_params_unchanged(self) -> None:
        """ValueError when a group's ``"params"`` list no longer holds the arrays it was
        built with: the state and step counts are laid out for those (add params with
        :meth:`add_param_group`)."""
        start = 0
        for gi, group in enumerate(self.param_groups):
            mine = self._params[start : start + len(self._states[gi].steps)]
            start += len(mine)
            current = group["params"]
            if len(current) != len(mine) or any(
                a is not b for a, b in zip(current, mine, strict=True)
            ):
                raise ValueError(
                    f"param_groups[{gi}]['params'] was changed after the group was added; "
                    "add params with add_param_group() instead"
                )

    def _saved_step(self, entry: Mapping[str, Any], where: str) -> int:
        """The step count of a saved param state (``where`` names it in errors)."""
        if "step" not in entry:
            raise ValueError(f"{where} lacks 'step'")
        return _step_count(entry["step"], f"{where}['step']")

    def _init_group_state(self, gi: int) -> None:
        """Allocate the state a rule keeps from the start (none by default)."""

    def _check_group(self, group: dict[str, Any], lr_sign: bool = False) -> None:
        """The group's hyperparameters (see :func:`check_hyperparameters`); ``lr >= 0``
        only with ``lr_sign``, when a group is added, as torch checks it: at a step a
        scheduler's rounding (``-5.6e-19`` for a zero lr) is a valid value."""
        check_hyperparameters(self._rule, group, lr_sign=lr_sign)
        check_precision_options(group)

    # --- per-rule hooks ---------------------------------------------------------------
    # Static: they depend on the group's hyperparameters only, and pyopt.torch.optim's
    # optimizers call the same hooks on torch's param groups.

    @staticmethod
    def _state_names(group: dict[str, Any]) -> tuple[str, ...]:
        """The state tensors this group's hyperparameters use."""
        raise NotImplementedError

    @staticmethod
    def _initial_value(name: str, group: dict[str, Any]) -> float:
        """The value state tensor ``name`` starts from (0 unless the rule says)."""
        return 0.0

    @staticmethod
    def _part(
        group: dict[str, Any],
        params: list[Any],
        grads: list[Any],
        state: dict[str, list[Any] | None],
        steps: np.ndarray,
        grad_scale: float | None,
    ) -> Part:
        """The rule's step over the params that have grads, built by its functional form
        without validating again (:func:`pyopt._optim_functional.run` launches it)."""
        raise NotImplementedError

    # --- state ------------------------------------------------------------------------

    def _allocate(self, gi: int, name: str) -> None:
        """Give group ``gi`` the state tensor ``name``: one buffer per dtype, viewed; the
        master copies (float32 copies of the 16-bit params) likewise."""
        group, gstate = self.param_groups[gi], self._states[gi]
        params = group["params"]
        call = call_for(self._backend, params[0])
        fill = self._initial_value(name, group)
        views: list[Any] = [None] * len(params)
        by_dtype: dict[np.dtype, list[int]] = {}
        for k, p in enumerate(params):
            dtype = dtype_of(p)
            if name == MASTER:
                if dtype in SIXTEEN_BIT:
                    by_dtype.setdefault(np.dtype(np.float32), []).append(k)
            else:
                by_dtype.setdefault(state_dtype(group, dtype), []).append(k)
        for dtype, members in by_dtype.items():
            sizes = [math.prod(params[k].shape) for k in members]
            flat = call.full((sum(sizes),), fill, dtype)
            start = 0
            for k, size in zip(members, sizes, strict=True):
                views[k] = flat[start : start + size].reshape(tuple(params[k].shape))
                if name == MASTER:
                    copy_into(views[k], to_numpy(params[k]).astype(np.float32))
                start += size
        gstate.buffers[name] = views

    def _stored_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The state tensors a group keeps: the rule's and, with ``master_weights``, the
        master copies (None entries for float32/float64 params)."""
        return (*self._state_names(group), *((MASTER,) if group["master_weights"] else ()))

    def _ensure_state(self, gi: int) -> None:
        for name in self._stored_names(self.param_groups[gi]):
            if name not in self._states[gi].buffers:
                self._allocate(gi, name)

    # --- stepping ---------------------------------------------------------------------

    def _grads_list(self, grads: Any) -> list[Any]:
        """The grads as a list aligned with the params in group order (None: no grad)."""
        n = len(self._names)
        if isinstance(grads, Mapping):
            if any(name is None for name in self._names):
                raise TypeError(
                    "grads is a dict but the params were not given names; pass a list "
                    "aligned with the params in group order"
                )
            names = set(self._names)
            for key in grads:
                if key not in names:
                    raise ValueError(f"grads has a key {key!r} that names no param")
            missing = [name for name in self._names if name not in grads]
            if missing:
                raise ValueError(f"grads is missing {missing[0]!r} (pass None for no grad)")
            return [grads[name] for name in self._names]
        if isinstance(grads, Sequence) and not isinstance(grads, str):
            if len(grads) != n:
                raise ValueError(f"grads has {len(grads)} entries but there are {n} params")
            return list(grads)
        raise TypeError(
            f"grads must be a list aligned with the params or a dict name -> array, got "
            f"{type(grads).__module__}.{type(grads).__qualname__}"
        )

    def _label(self, k: int) -> str:
        name = self._names[k]
        return f"grads[{k}]" if name is None else f"grads[{name!r}]"

    def _check_grads(self, grads: list[Any]) -> None:
        present = [k for k, g in enumerate(grads) if g is not None]
        if not present:
            return
        if self._backend == "cpu" and all(isinstance(grads[k], np.ndarray) for k in present):
            backend = "cpu"  # the common case, without naming every grad
        else:
            backend = backend_of((self._label(k), grads[k]) for k in present)
        if backend != self._backend:
            where = {"cpu": "host (NumPy)", "cuda": "device (CUDA)"}
            raise TypeError(
                f"{self._label(present[0])} is a {where[backend]} array but the params are "
                f"{where[self._backend]} arrays"
            )
        for k in present:
            g, p = grads[k], self._params[k]
            if g.dtype != p.dtype or tuple(g.shape) != tuple(p.shape):  # fast path, then name it
                _checks.same_dtype(self._label(k), g, dtype_of(p), "its param")
                _checks.shape_is(self._label(k), g, tuple(p.shape), "the shape of its param")

    def step(
        self,
        grads: Any,
        *,
        max_grad_norm: float | None = None,
        grad_scale: float | None = None,
        skip_if_nonfinite: bool | None = None,
    ) -> StepResult:
        """Update every param that has a gradient, in place (one fused pass).

        Args:
            grads: a list aligned with the params in group order, or (for named params)
                a dict name -> array. ``None`` entries skip their param, like torch's
                ``p.grad is None``.
            max_grad_norm: clip by the global L2 norm over all gradients: scale them by
                ``min(1, max_grad_norm / (norm + 1e-6))`` (torch's ``clip_grad_norm_``),
                inside the update kernel; the norm costs one read of the gradients.
            grad_scale: a loss scale; gradients are divided by it inside the kernel, and
                the norm (and clipping) applies to the unscaled gradients.
            skip_if_nonfinite: skip the whole step when a gradient element is inf or
                NaN. Default: on when a norm is computed anyway (``max_grad_norm`` or
                ``grad_scale`` given), off otherwise (no extra pass).

        Returns:
            :class:`StepResult` with the norm when one was computed, and whether the
            step was skipped.

        Raises:
            TypeError, ValueError: bad grads or hyperparameters (named); nothing changed.
        """
        self._check_params_unchanged()
        grads = self._grads_list(grads)
        self._check_grads(grads)
        for group in self.param_groups:
            self._check_group(group)
        if max_grad_norm is not None:
            max_grad_norm = _checks.real_scalar("max_grad_norm", max_grad_norm)
            if max_grad_norm < 0:
                raise ValueError(f"max_grad_norm must be >= 0, got {max_grad_norm}")
        if grad_scale is not None:
            grad_scale = _checks.positive("grad_scale", grad_scale)
        if skip_if_nonfinite is None:
            skip_if_nonfinite = max_grad_norm is not None or grad_scale is not None
        else:
            skip_if_nonfinite = _checks.flag("skip_if_nonfinite", skip_if_nonfinite)

        norm = None
        scale = grad_scale
        if skip_if_nonfinite or max_grad_norm is not None:
            sumsq, finite = grad_sumsq(grads, self._backend)  # checked above
            norm = math.sqrt(sumsq) / (grad_scale or 1.0)
            if skip_if_nonfinite and not finite:
                return StepResult(grad_norm=norm, skipped=True)
            if max_grad_norm is not None:
                coef = max_grad_norm / (norm + 1e-6)
                if not coef >= 1.0:
                    scale = (grad_scale or 1.0) / coef
        # Every group in one kernel call per dtype; a group with params lacking grads
        # steps a copy of its step counts, written back after the call.
        parts, partial_steps = [], []
        start = 0
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            mine = grads[start : start + len(params)]
            first = start
            start += len(params)
            have = [k for k, g in enumerate(mine) if g is not None]
            if not have:
                continue
            self._ensure_state(gi)
            gstate = self._states[gi]
            names = self._state_names(group)
            masters = gstate.buffers.get(MASTER) if group["master_weights"] else None
            seed = group["seed"] if group["stochastic_rounding"] else None
            if len(have) == len(params):
                state = {name: gstate.buffers[name] for name in names}
                part = self._part(group, params, mine, state, gstate.steps, scale)
                streams = first + np.arange(len(params))
            else:
                steps = gstate.steps[have]
                state = {name: [gstate.buffers[name][k] for k in have] for name in names}
                picked = [params[k] for k in have], [mine[k] for k in have]
                part = self._part(group, *picked, state, steps, scale)
                partial_steps.append((gstate.steps, have, steps))
                masters = None if masters is None else [masters[k] for k in have]
                streams = first + np.array(have)
            parts.append(part.with_precision(masters, seed, streams))
        run(self._backend, parts, self._plan)
        for all_steps, have, steps in partial_steps:
            all_steps[have] = steps
        return StepResult(grad_norm=norm, skipped=False)

    # --- checkpoints ------------------------------------------------------------------

    def _has_state(self, gi: int, k: int) -> bool:
        return bool(self._states[gi].steps[k] > 0)

    def state_dict(self) -> dict[str, Any]:
        """NumPy copies of all state and hyperparameters (torch's layout).

        ``{"state": {index: {"step": int, <name>: ndarray, ...}}, "param_groups":
        [{<hyperparameters>, "params": [index, ...]}]}``, indices counting params across
        groups in order. Only params that have state appear in ``"state"``.
        """
        self._check_params_unchanged()
        state: dict[int, dict[str, Any]] = {}
        groups = []
        index = 0
        for gi, group in enumerate(self.param_groups):
            gstate = self._states[gi]
            indices = list(range(index, index + len(group["params"])))
            for k, i in enumerate(indices):
                if self._has_state(gi, k):
                    entry: dict[str, Any] = {"step": int(gstate.steps[k])}
                    for name, views in gstate.buffers.items():
                        if views[k] is not None:  # no master copy of a float32 param
                            entry[name] = to_numpy(views[k])
                    state[i] = entry
            saved = {key: _plain(value) for key, value in group.items() if key != "params"}
            saved["params"] = indices
            groups.append(saved)
            index += len(indices)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validated in full before anything changes.

        A run saved at step k and restored into an optimizer over the same params
        continues bit for bit like the uninterrupted run on the same backend.

        Raises:
            TypeError, ValueError: the dict does not fit these params (what and where).
        """
        self._check_params_unchanged()
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(
                f"state_dict['state'] must be a dict index -> state, got "
                f"{type(saved_state).__name__}"
            )
        if isinstance(saved_groups, str | Mapping) or not isinstance(saved_groups, Sequence):
            raise TypeError(
                f"state_dict['param_groups'] must be a list, got {type(saved_groups).__name__}"
            )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        indices = {i: i for i in range(len(self._params))} | {
            str(i): i for i in range(len(self._params))
        }
        for key in saved_state:
            if isinstance(key, bool) or key not in indices:
                raise ValueError(
                    f"state_dict['state'] has the key {key!r}, which is no param index "
                    f"(0 to {len(self._params) - 1})"
                )
        params = self._params
        new_groups = []
        plan: list[tuple[int, int, dict[str, np.ndarray], int]] = []
        index = 0
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            if not isinstance(saved, Mapping):
                raise TypeError(
                    f"state_dict['param_groups'][{gi}] must be a dict, got {type(saved).__name__}"
                )
            n = len(group["params"])
            expected = list(range(index, index + n))
            saved_indices = saved.get("params", ())
            if isinstance(saved_indices, str) or not isinstance(saved_indices, Sequence):
                raise TypeError(
                    f"state_dict param_groups[{gi}]['params'] must be a list of param "
                    f"indices, got {type(saved_indices).__name__}"
                )
            if list(saved_indices) != expected:
                raise ValueError(
                    f"state_dict param_groups[{gi}]['params'] must be {expected} for these "
                    f"params, got {saved.get('params')!r}"
                )
            # As torch's __setstate__: flags an older checkpoint lacks default to False;
            # the precision options a torch (or older) checkpoint lacks stay the group's.
            merged = {
                **{k: False for k in FLAGS if k in self.defaults},
                **{k: group[k] for k in PRECISION},
                **{k: v for k, v in saved.items() if k != "params"},
                "params": group["params"],
                **self._forced_on_load,
            }
            missing = [k for k in self.defaults if k not in merged]
            if missing:
                raise ValueError(f"state_dict param_groups[{gi}] lacks {missing[0]!r}")
            if isinstance(merged.get("betas"), list):
                merged["betas"] = tuple(merged["betas"])
            self._check_group(merged)
            merged["state_dtype"] = state_dtype_name(merged["state_dtype"])
            for k, i in enumerate(expected):
                entry = saved_state.get(i, saved_state.get(str(i)))
                if entry is None:
                    continue
                if not isinstance(entry, Mapping):
                    raise TypeError(
                        f"state_dict state[{i}] must be a dict, got {type(entry).__name__}"
                    )
                step = self._saved_step(entry, f"state_dict state[{i}]")
                arrays = {}
                dtype = dtype_of(params[i])
                for name in entry:
                    if name == "step":
                        continue
                    where = f"state_dict state[{i}][{name!r}]"
                    if name == MASTER and dtype not in SIXTEEN_BIT:
                        raise ValueError(f"{where}: a master copy of a {dtype} param")
                    kept = np.dtype(np.float32) if name == MASTER else state_dtype(merged, dtype)
                    arr = _checks.numeric_host_array(where, host_value(entry[name]), kept)
                    _checks.shape_is(where, arr, tuple(params[i].shape), "the shape of its param")
                    arrays[name] = arr
                # A master copy is required of the 16-bit params only.
                names = (
                    self._stored_names(merged)
                    if dtype in SIXTEEN_BIT
                    else (self._state_names(merged))
                )
                absent = [name for name in names if name not in arrays]
                if absent:
                    raise ValueError(f"state_dict state[{i}] lacks {absent[0]!r}")
                plan.append((gi, k, arrays, step))
            new_groups.append(merged)
            index += n
        # Validated: now change things.
        self.param_groups[:] = new_groups
        self._states = [_GroupState(len(g["params"])) for g in self.param_groups]
        for gi in range(len(self.param_groups)):
            self._ensure_state(gi)
        for gi, _, arrays, _ in plan:
            for name in arrays:
                if name not in self._states[gi].buffers:
                    self._allocate(gi, name)
        for gi, k, arrays, step in plan:
            gstate = self._states[gi]
            gstate.steps[k] = step
            for name, arr in arrays.items():
                copy_into(gstate.buffers[name][k], arr)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join([*lines, ")"])


def _step_count(value: Any, where: str) -> int:
    """A saved step count: an int, or an integer-valued float or 0-d array (torch saves
    ``tensor(3.)``), >= 0."""
    if is_torch(value) or isinstance(value, np.ndarray):
        value = value.item() if math.prod(tuple(value.shape)) == 1 else value
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{where} must be an int (a step count), got {value!r}")
    if value < 0:
        raise ValueError(f"{where} must be an int >= 0, got {value!r}")
    return int(value)


def _plain(value: Any) -> Any:
    """Hyperparameter values as plain Python objects (lists of names copied)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return list(value)
    return value


def _as_list(where: str, items: Any) -> list[Any]:
    """``items`` (any ordered iterable, e.g. a generator) as a list; sets are refused as
    torch refuses them: their order, hence the param order, changes between runs."""
    if isinstance(items, set | frozenset):
        raise TypeError(
            f"{where} must be an ordered collection (a list), not a set: the order of a "
            "set's items changes between runs"
        )
    if isinstance(items, str) or not isinstance(items, Iterable):
        raise TypeError(
            f"{where} must be an iterable of arrays, a dict name -> array or a list of "
            f"param groups, got {type_name(items)}"
        )
    return list(items)


def _split_params(params: Any, where: str) -> tuple[list[str] | None, list[Any]]:
    """``(names or None, arrays)`` of one group's params: an array, a dict name -> array,
    or an iterable of arrays or of ``(name, array)`` pairs (all named or none)."""
    if is_array(params):
        return None, [params]
    if isinstance(params, Mapping):
        items = list(params.items())
    else:
        entries = _as_list(where, params)
        pairs = [isinstance(e, tuple) and len(e) == 2 for e in entries]
        if any(pairs) and not all(pairs):
            raise ValueError(
                f"{where} mixes (name, array) pairs and bare arrays: all optimizer params "
                "should be with names or without"
            )
        if not (entries and all(pairs)):
            return None, entries
        items = entries
    for name, _ in items:
        if not isinstance(name, str):
            raise TypeError(f"{where} names must be str, got {name!r}")
    return [name for name, _ in items], [arr for _, arr in items]
