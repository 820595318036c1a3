"""The optimizer base class: param groups, flat state, fused steps, checkpoints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from pyopt import _checks
from pyopt._backend import backend_of, call_for, copy_into, dtype_of, to_numpy
from pyopt._optim_functional import check_hyperparameters, grad_sumsq


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
        params: a list of arrays, a dict name -> array, or a list of param-group dicts
            (``{"params": [...] or {...}, "lr": ...}``) as in torch. Arrays are float32 or
            float64, all NumPy (CPU) or all CUDA (CuPy, Numba, torch), updated in place.
        defaults: the hyperparameters of every group that does not set its own.

    A step runs one fused kernel call per run of params that lie end to end in memory
    (with their grads): over a :class:`ParamBuffer` that is one call per group and
    dtype, however many tensors the model has. Separately allocated arrays cost one call
    (one kernel launch on CUDA, a few microseconds of host time on either backend) each.
    """

    _rule: ClassVar[str]
    # Hyperparameters whose value decides which state tensors exist.
    _layout_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        groups = self._parse_params(params)
        self.param_groups: list[dict[str, Any]] = []
        self._names: list[str | None] = []
        seen: dict[int, str] = {}
        pairs = []
        for gi, (names, arrays, options) in enumerate(groups):
            for k, arr in enumerate(arrays):
                where = f"param_groups[{gi}]['params'][{k}]"
                if id(arr) in seen:
                    raise ValueError(f"{where} is also {seen[id(arr)]}: a param may appear once")
                seen[id(arr)] = where
                pairs.append((where, arr))
            group = {**self.defaults, **options, "params": list(arrays)}
            if names is not None:
                group["param_names"] = list(names)
            self._check_group(group)
            self.param_groups.append(group)
            self._names.extend(names if names is not None else [None] * len(arrays))
        self._backend = backend_of(pairs)
        call = call_for(self._backend, pairs[0][1])
        for where, arr in pairs:
            _checks.float_dtype(where, arr)
            call.check_inplace(where, arr)
        self._params = [p for _, p in pairs]
        self._states = [_GroupState(len(g["params"])) for g in self.param_groups]

    # --- construction -----------------------------------------------------------------

    @staticmethod
    def _parse_params(params: Any) -> list[tuple[list[str] | None, list[Any], dict]]:
        """``[(names or None, arrays, options)]`` for each group."""

        def split(ps: Any, where: str) -> tuple[list[str] | None, list[Any]]:
            if isinstance(ps, Mapping):
                for name in ps:
                    if not isinstance(name, str):
                        raise TypeError(f"{where} keys must be str names, got {name!r}")
                return list(ps), list(ps.values())
            if isinstance(ps, Sequence) and not isinstance(ps, str):
                return None, list(ps)
            raise TypeError(
                f"{where} must be a list of arrays, a dict name -> array or a list of param "
                f"groups, got {type(ps).__module__}.{type(ps).__qualname__}"
            )

        if isinstance(params, Sequence) and params and all(isinstance(g, dict) for g in params):
            groups = []
            for gi, g in enumerate(params):
                if "params" not in g:
                    raise ValueError(f"params[{gi}] is a param group without a 'params' key")
                names, arrays = split(g["params"], f"params[{gi}]['params']")
                if not arrays:
                    raise ValueError(f"params[{gi}]['params'] is empty")
                options = {k: v for k, v in g.items() if k not in ("params", "param_names")}
                groups.append((names, arrays, options))
            return groups
        names, arrays = split(params, "params")
        if not arrays:
            raise ValueError("the optimizer got an empty parameter list")
        return [(names, arrays, {})]

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hyperparameters(self._rule, group)

    # --- per-rule hooks ---------------------------------------------------------------

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The state tensors this group's hyperparameters use."""
        raise NotImplementedError

    def _initial_value(self, name: str, group: dict[str, Any]) -> float:
        return 0.0

    def _update(
        self,
        group: dict[str, Any],
        params: list[Any],
        grads: list[Any],
        state: dict[str, list[Any] | None],
        steps: np.ndarray,
        grad_scale: float | None,
    ) -> None:
        """Call the rule's functional form on the params that have grads."""
        raise NotImplementedError

    # --- state ------------------------------------------------------------------------

    def _allocate(self, gi: int, name: str) -> None:
        """Give group ``gi`` the state tensor ``name``: one buffer per dtype, viewed."""
        group, gstate = self.param_groups[gi], self._states[gi]
        params = group["params"]
        call = call_for(self._backend, params[0])
        fill = self._initial_value(name, group)
        views: list[Any] = [None] * len(params)
        by_dtype: dict[np.dtype, list[int]] = {}
        for k, p in enumerate(params):
            by_dtype.setdefault(dtype_of(p), []).append(k)
        for dtype, members in by_dtype.items():
            sizes = [math.prod(params[k].shape) for k in members]
            flat = call.full((sum(sizes),), fill, dtype)
            start = 0
            for k, size in zip(members, sizes, strict=True):
                views[k] = flat[start : start + size].reshape(tuple(params[k].shape))
                start += size
        gstate.buffers[name] = views

    def _ensure_state(self, gi: int) -> None:
        for name in self._state_names(self.param_groups[gi]):
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
        elif not isinstance(skip_if_nonfinite, bool):
            raise TypeError("skip_if_nonfinite must be a bool or None")

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
        start = 0
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            mine = grads[start : start + len(params)]
            start += len(params)
            have = [k for k, g in enumerate(mine) if g is not None]
            if not have:
                continue
            self._ensure_state(gi)
            gstate = self._states[gi]
            names = self._state_names(group)
            if len(have) == len(params):
                state = {name: gstate.buffers[name] for name in names}
                self._update(group, params, mine, state, gstate.steps, scale)
                continue
            steps = gstate.steps[have]
            state = {name: [gstate.buffers[name][k] for k in have] for name in names}
            self._update(
                group, [params[k] for k in have], [mine[k] for k in have], state, steps, scale
            )
            gstate.steps[have] = steps
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
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, Sequence) or len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        params = self._params
        new_groups = []
        plan: list[tuple[int, int, dict[str, np.ndarray], int]] = []
        index = 0
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            n = len(group["params"])
            expected = list(range(index, index + n))
            if list(saved.get("params", ())) != expected:
                raise ValueError(
                    f"state_dict param_groups[{gi}]['params'] must be {expected} for these "
                    f"params, got {saved.get('params')!r}"
                )
            merged = {
                **{k: v for k, v in saved.items() if k != "params"},
                "params": group["params"],
            }
            missing = [k for k in self.defaults if k not in merged]
            if missing:
                raise ValueError(f"state_dict param_groups[{gi}] lacks {missing[0]!r}")
            if isinstance(merged.get("betas"), list):
                merged["betas"] = tuple(merged["betas"])
            self._check_group(merged)
            names = self._state_names(merged)
            for k, i in enumerate(expected):
                entry = saved_state.get(i, saved_state.get(str(i)))
                if entry is None:
                    continue
                step = entry.get("step")
                if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
                    raise ValueError(f"state_dict state[{i}]['step'] must be an int >= 0")
                arrays = {}
                for name in entry:
                    if name == "step":
                        continue
                    arr = np.asarray(entry[name])
                    if arr.shape != tuple(params[i].shape) or arr.dtype.kind != "f":
                        raise ValueError(
                            f"state_dict state[{i}][{name!r}] must be a float array of shape "
                            f"{tuple(params[i].shape)}, got {arr.dtype} {arr.shape}"
                        )
                    arrays[name] = arr
                absent = [name for name in names if name not in arrays]
                if absent:
                    raise ValueError(f"state_dict state[{i}] lacks {absent[0]!r}")
                plan.append((gi, k, arrays, int(step)))
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
            dtype = dtype_of(self.param_groups[gi]["params"][k])
            for name, arr in arrays.items():
                copy_into(gstate.buffers[name][k], arr.astype(dtype, copy=False))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join([*lines, ")"])


def _plain(value: Any) -> Any:
    """Hyperparameter values as plain Python objects (lists of names copied)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return list(value)
    return value
