"""Drop-in ``torch.optim`` optimizers on pyopt's fused kernels.

:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`Adagrad`, :class:`RMSprop` and
:class:`Adadelta` are ``torch.optim.Optimizer`` subclasses with torch's signatures,
defaults, param groups, ``state`` and ``state_dict`` format (a state dict loads into the
torch optimizer of the same name and the reverse), so torch's ``lr_scheduler`` classes and
``torch.amp.GradScaler`` drive them unchanged. The update rules are pyopt's
(:mod:`pyopt.optim`, the same functions), run on the tensors' memory: CPU tensors as
zero-copy NumPy views, CUDA tensors through ``__cuda_array_interface__`` on torch's
current stream.

**Flat buffers** (``flatten=True``, the default). At construction each param group's
params are moved, per device and dtype, into one flat buffer, and every ``p.data``
re-pointed to its view of it (as Apex's flat master params and DDP's gradient buckets
do); the optimizer state is flat in the same order. :meth:`zero_grad` points every
``p.grad`` at its view of one flat grad buffer and zeroes that buffer in one call, and
autograd then accumulates into the views in place. A step is then one kernel call per
group, device and dtype however many tensors the model has. What this changes for the
user:

- After ``zero_grad()`` (``set_to_none=True``, the default) ``p.grad`` is a zeroed view,
  not None; a param that no backward reached since is still skipped by ``step`` exactly
  as torch skips a None grad (no state update, no weight decay, no step count).
- Replacing ``p.data`` or ``p.grad`` with another tensor (``model.zero_grad()`` sets the
  grads to None, and the next backward allocates new ones) is allowed: those params are
  updated by a call of their own, with the same result; the next
  ``optimizer.zero_grad()`` points the grads back at the flat buffer.

``flatten=False`` leaves params and grads where they are (one kernel call per tensor).

``step(closure=None, *, max_grad_norm=None)`` clips by the global gradient norm inside the
update pass, as :meth:`pyopt.optim.Optimizer.step` does; ``last_step`` then holds the
norm. Not supported (``ValueError``): ``differentiable=True``, ``capturable=True``, sparse
gradients; ``foreach`` and ``fused`` are accepted and stored, and change nothing: pyopt
always runs its fused kernels.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from pyopt import _checks, _multi
from pyopt import optim as _pyopt_optim
from pyopt._backend import dtype_of
from pyopt._clip import grad_sumsq
from pyopt._optim_functional import Part, Plan, check_hyperparameters, run, state_dtype_for
from pyopt.optim._optimizer import (
    MASTER,
    STATE_DTYPES,
    StepResult,
    _step_count,
    check_precision_options,
    state_dtype,
    state_dtype_name,
)
from pyopt.torch._tensors import as_array, check_float_tensor

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "RMSprop"]

# torch's flags that pick among torch's implementations: accepted, stored, no effect here.
_IMPLEMENTATION_FLAGS = ("foreach", "fused")
# torch's flags for what pyopt's in-place kernels cannot do.
_REFUSED_FLAGS = {
    "differentiable": "pyopt's kernels update params in place, outside autograd",
    "capturable": "pyopt's steps run host code between kernels (no CUDA graph capture)",
}


def _dense_strides(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s strides when its elements fill a block of memory without gaps
    (contiguous, channels_last...), else the contiguous strides of its shape: the layout
    its views of the flat buffers get."""
    return torch.empty_like(tensor, device="meta").stride()


def _hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters as Python numbers (torch allows tensor ``lr`` and
    ``betas``), without its params."""
    plain: dict[str, Any] = {}
    for key, value in group.items():
        if key in ("params", "param_names"):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, tuple):
            value = tuple(v.item() if isinstance(v, torch.Tensor) else v for v in value)
        plain[key] = value
    return plain


class _Segment:
    """The params of one group on one device with one dtype, and their flat buffers.

    Holds the flat state buffers (one per state tensor name, in param order), the step
    counts (float32 on the CPU, as torch keeps ``state["step"]``; ``state[p]["step"]`` is
    a view), and with ``flatten`` the flat param and grad buffers. ``chunks`` are the
    1-D pieces of each flat buffer, one per param, as the arrays the kernels take:
    adjacent, so a run of them is one kernel call.
    """

    def __init__(self, params: list[torch.Tensor], members: list[int], flatten: bool):
        first = params[0]
        self.members = members
        self.tensors = params
        self.device, self.dtype = first.device, first.dtype
        self.shapes = [p.shape for p in params]
        self.strides = [_dense_strides(p) for p in params]
        sizes = [p.numel() for p in params]
        self.offsets = [0, *np.cumsum(sizes).tolist()]
        self.steps = torch.zeros(len(params), dtype=torch.float32)
        self.steps_host = self.steps.numpy()
        self.state: dict[str, torch.Tensor] = {}
        self.state_views: dict[str, list[torch.Tensor]] = {}
        self.state_chunks: dict[str, list[Any]] = {}
        self.state_arrays: dict[str, Any] = {}  # the whole buffers, as the kernels take them
        # Whether every member has its state[p] entries (then a step need not look).
        self.stated = False
        # Whether each param's flat grad has been written since zero_grad(set_to_none=True).
        self.present = np.ones(len(params), dtype=bool)
        self.params = self.grads = None
        self.hooks: list[Any] = []
        if not flatten:
            return
        self.params = self._buffer(torch.empty)
        self.param_views = self._views(self.params)
        for p, view in zip(params, self.param_views, strict=True):
            view.copy_(p.detach())
            p.data = view
        self.param_ptrs = [view.data_ptr() for view in self.param_views]
        self.param_chunks = self._chunks(self.params)
        self.grads = self._buffer(torch.zeros)
        self.grad_views = self._views(self.grads)
        self.grad_chunks = self._chunks(self.grads)
        self.arrays = {"params": as_array(self.params), "grads": as_array(self.grads)}
        segment = weakref.ref(self)
        for k, p in enumerate(params):
            if p.requires_grad:
                self.hooks.append(p.register_post_accumulate_grad_hook(_Mark(segment, k)))

    def _buffer(self, factory: Any) -> torch.Tensor:
        return factory(self.offsets[-1], dtype=self.dtype, device=self.device)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [
            flat.as_strided(shape, strides, self.offsets[k])
            for k, (shape, strides) in enumerate(zip(self.shapes, self.strides, strict=True))
        ]

    def _chunks(self, flat: torch.Tensor) -> list[Any]:
        whole = as_array(flat)
        return [whole[lo:hi] for lo, hi in zip(self.offsets, self.offsets[1:], strict=False)]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def sixteen_bit(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    def allocate(self, name: str, fill: float, dtype: torch.dtype) -> None:
        """The flat state buffer ``name`` of ``dtype``, filled with ``fill`` (the master
        copies: with the params), with its views."""
        flat = torch.full((self.offsets[-1],), fill, dtype=dtype, device=self.device)
        if name == MASTER:
            for view, p in zip(self._views(flat), self.tensors, strict=True):
                view.copy_(p.detach())
        self.state[name] = flat
        self.state_views[name] = self._views(flat)
        self.state_chunks[name] = self._chunks(flat)
        self.state_arrays[name] = as_array(flat)

    def intact(self) -> bool:
        """Whether every member's data and grad are still its views of the flat buffers,
        each grad written since the last ``zero_grad(set_to_none=True)``: the common
        case, checked in bulk. (A ``p.data`` replaced by another tensor has another
        address; a grad, being its view, has the param's shape and dtype.)"""
        tensors = self.tensors
        return (
            self.params is not None
            and bool(self.present.all())
            and all(p.grad is view for p, view in zip(tensors, self.grad_views, strict=True))
            and [p.data_ptr() for p in tensors] == self.param_ptrs
        )

    def holds_param(self, k: int, p: torch.Tensor) -> bool:
        """Whether ``p.data`` is still its view of the flat param buffer."""
        return (
            self.params is not None
            and p.data_ptr() == self.param_ptrs[k]
            and p.dtype == self.dtype
            and p.shape == self.shapes[k]
        )


class _Mark:
    """The post-accumulate-grad hook: param ``k``'s flat grad now holds a gradient."""

    def __init__(self, segment: weakref.ref, k: int):
        self.segment, self.k = segment, k

    def __call__(self, _param: torch.Tensor) -> None:
        segment = self.segment()
        if segment is not None:
            segment.present[self.k] = True


class _Group:
    """pyopt's bookkeeping for one param group: its params and their segments."""

    def __init__(self, params: list[torch.Tensor], flatten: bool):
        self.params = list(params)
        by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            by_kind.setdefault((p.device, p.dtype), []).append(i)
        self.segments = [
            _Segment([params[i] for i in members], members, flatten) for members in by_kind.values()
        ]

    def check_unchanged(self, params: list[torch.Tensor], gi: int) -> None:
        if len(params) != len(self.params) or any(
            a is not b for a, b in zip(params, self.params, strict=True)
        ):
            raise ValueError(
                f"param_groups[{gi}]['params'] was changed after the group was added; add "
                "params with add_param_group() instead"
            )


class _Work:
    """One segment's part of a step: the params to update and how to reach them."""

    def __init__(self, group: dict[str, Any], segment: _Segment, intact: bool = False):
        self.group, self.segment = group, segment
        # Every member through the flat buffers (segment.intact()), or the members listed:
        self.intact = intact
        self.ks: list[int] = list(range(len(segment))) if intact else []  # in order
        self.params: list[Any] = segment.param_chunks if intact else []
        self.grads: list[Any] = segment.grad_chunks if intact else []
        # Whether each one's param and grad are views of the flat buffers.
        self.flat: list[bool] = [True] * len(segment) if intact else []

    @property
    def whole(self) -> bool:
        """Every member updated through the flat buffers, with one step count: one call
        over the whole buffers."""
        steps = self.segment.steps_host
        return self.intact and bool((steps == steps[0]).all())


class _FusedOptimizer(torch.optim.Optimizer):
    """Base of pyopt's torch optimizers: torch's bookkeeping, pyopt's kernels.

    A subclass names its :mod:`pyopt.optim` twin in ``_rules``, whose static hooks give the
    state tensor names, their initial values and the functional update.
    """

    _rules: ClassVar[type[_pyopt_optim.Optimizer]]
    # torch.amp.GradScaler.step sets grad_scale and found_inf on the optimizer and calls
    # step() without unscaling the grads first (as for torch's fused optimizers): the
    # kernels divide by the scale in the update pass, and a non-finite grad skips the
    # step. float16 grads work too (torch's own unscale_ refuses them).
    _step_supports_amp_scaling: ClassVar[bool] = True
    # Whether torch creates this rule's state at construction (Adagrad) or at the first step.
    _state_from_start: ClassVar[bool] = False
    # Whether torch keeps state["step"] for this rule (SGD does not).
    _keeps_step: ClassVar[bool] = True

    def __init__(self, params: Any, defaults: dict[str, Any], flatten: bool):
        if not isinstance(flatten, bool):
            raise TypeError(f"flatten must be a bool, got {type(flatten).__name__}")
        self._check_options(defaults, "")
        self._flatten = flatten
        self._groups: list[_Group] = []
        self.last_step: StepResult | None = None
        self._plans: dict[Any, Plan] = {}  # per device: where params and state lie
        super().__init__(params, defaults)

    # --- construction -----------------------------------------------------------------

    def _check_options(self, group: Mapping[str, Any], where: str) -> None:
        for flag, why in _REFUSED_FLAGS.items():
            if group.get(flag, False):
                raise ValueError(f"{where}{flag}=True is not supported: {why}")
        try:
            hp = _hyperparameters(group)
            check_hyperparameters(self._rules._rule, hp, lr_sign=True)
            check_precision_options(hp)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}{exc}") from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch's ``add_param_group``), checked before anything
        changes, and move its params into flat buffers (``flatten=True``).

        Raises:
            TypeError: a param that is not a dense float32/float64 tensor on the CPU or a
                CUDA device (complex, integer, sparse...).
            ValueError: params of one group on two devices, a param given twice, a bad
                hyperparameter; torch's own errors (non-leaf params...).
        """
        gi = len(self.param_groups)
        where = f"param_groups[{gi}]: " if gi else ""
        super().add_param_group(param_group)  # torch's checks; it appends the group last
        group = self.param_groups[gi]
        try:
            self._check_new_group(group, where)
        except (TypeError, ValueError):
            del self.param_groups[gi:]
            raise
        self._groups.append(_Group(group["params"], self._flatten))
        if self._state_from_start:
            for segment in self._groups[gi].segments:
                self._init_state(group, segment, range(len(segment)))

    def _check_new_group(self, group: dict[str, Any], where: str) -> None:
        params = group["params"]
        if not params:
            raise ValueError(f"{where}the param group is empty")
        for k, p in enumerate(params):
            if p.device != params[0].device:
                raise ValueError(
                    f"{where}params[{k}] is on {p.device} but params[0] is on "
                    f"{params[0].device}: the params of one group must be on one device"
                )
            check_float_tensor(f"{where}params[{k}]", p)
            if p.grad is not None and p.grad.layout != torch.strided:
                raise TypeError(f"{where}params[{k}] has a sparse grad, which is not supported")
        seen = {id(p) for g in self.param_groups[:-1] for p in g["params"]}
        for k, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(
                    f"{where}params[{k}] is given twice: a param is updated once per step"
                )
            seen.add(id(p))
        self._check_options(group, where)
        group["state_dtype"] = state_dtype_name(group["state_dtype"])
        for k, p in enumerate(params):
            chosen = STATE_DTYPES[group["state_dtype"]]
            if chosen is not None:
                state_dtype_for(f"{where}params[{k}]: state_dtype", chosen, dtype_of(p))

    def _stored_names(self, hp: Mapping[str, Any], segment: _Segment) -> tuple[str, ...]:
        """The state tensors of ``segment``'s params: the rule's, and the master copies of
        16-bit params under ``master_weights``."""
        master = (MASTER,) if hp["master_weights"] and segment.sixteen_bit else ()
        return (*self._rules._state_names(hp), *master)

    @staticmethod
    def _state_torch_dtype(hp: Mapping[str, Any], segment: _Segment, name: str) -> torch.dtype:
        """The dtype of ``segment``'s state tensor ``name`` (see
        :func:`pyopt.optim._optimizer.state_dtype`)."""
        if name == MASTER:
            return torch.float32
        return getattr(torch, state_dtype(hp, dtype_of(segment.tensors[0])).name)

    # --- state ------------------------------------------------------------------------

    def _init_state(self, group: dict[str, Any], segment: _Segment, ks: Any) -> None:
        """Give members ``ks`` their ``state[p]`` entries (views of the flat buffers),
        allocating the buffers the group's hyperparameters need."""
        hp = _hyperparameters(group)
        names = self._stored_names(hp, segment)
        for name in names:
            if name not in segment.state:
                fill = self._rules._initial_value(name, hp)
                segment.allocate(name, fill, self._state_torch_dtype(hp, segment, name))
        params = group["params"]
        for k in ks:
            entry = self.state[params[segment.members[k]]]
            if self._keeps_step:
                entry["step"] = segment.steps[k]
            for name in names:
                entry[name] = segment.state_views[name][k]

    def _saved_step(self, entry: Mapping[str, Any], where: str) -> int:
        if "step" not in entry:
            raise ValueError(f"{where} lacks 'step'")
        return _step_count(entry["step"], f"{where}['step']")

    # --- gradients --------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (torch's ``zero_grad``).

        Flattened params that require grad get their grad pointed at their view of the
        group's flat grad buffer, zeroed in one call per buffer. The next :meth:`step`
        updates exactly the params torch's would: with ``set_to_none`` (the default) a
        param counts as having no grad, as torch's ``p.grad is None``, until a backward
        accumulates into it (``p.grad`` itself stays a zero view); without, the params
        that had a grad keep a zero one. Other params (``flatten=False``, a replaced
        ``p.data``, frozen params) are reset as torch resets them.
        """
        for group, record in zip(self.param_groups, self._groups, strict=True):
            params = group["params"]
            for segment in record.segments:
                if segment.grads is not None:
                    segment.grads.zero_()
                for k, i in enumerate(segment.members):
                    p = params[i]
                    had_grad = self._grad_of(segment, k, p) is not None
                    if segment.grads is not None:
                        segment.present[k] = had_grad and not set_to_none
                        if p.requires_grad and segment.holds_param(k, p):
                            p.grad = segment.grad_views[k]
                            continue
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().requires_grad_(False).zero_()

    @staticmethod
    def _grad_of(segment: _Segment, k: int, p: torch.Tensor) -> torch.Tensor | None:
        """``p``'s gradient as torch would see it: None also when ``p.grad`` is its flat
        view and no backward has written it since ``zero_grad(set_to_none=True)``."""
        g = p.grad
        if g is not None and segment.grads is not None and g is segment.grad_views[k]:
            return g if segment.present[k] else None
        return g

    # --- stepping ---------------------------------------------------------------------

    def _gather(self) -> list[_Work]:
        """What a step updates, validated in full: nothing has changed yet."""
        work = []
        for gi, (group, record) in enumerate(zip(self.param_groups, self._groups, strict=True)):
            params = group["params"]
            record.check_unchanged(params, gi)
            try:
                check_hyperparameters(self._rules._rule, _hyperparameters(group), lr_sign=False)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"param_groups[{gi}]: {exc}") from None
            for segment in record.segments:
                if segment.intact():
                    work.append(_Work(group, segment, intact=True))
                    continue
                part = _Work(group, segment)
                for k, i in enumerate(segment.members):
                    p = params[i]
                    g = self._grad_of(segment, k, p)
                    if g is None:
                        continue
                    flat_grad = segment.grads is not None and g is segment.grad_views[k]
                    where = f"param_groups[{gi}]['params'][{i}]"
                    flat = flat_grad and segment.holds_param(k, p)
                    if not flat:
                        self._check_replaced(where, p, g, segment, k)
                    part.ks.append(k)
                    part.flat.append(flat)
                    part.params.append(segment.param_chunks[k] if flat else as_array(p))
                    part.grads.append(segment.grad_chunks[k] if flat else as_array(g))
                if part.ks:
                    work.append(part)
        if not all(part.intact or all(part.flat) for part in work):
            # A replaced p.data may alias another param: it would be updated twice.
            _multi.check_disjoint(
                (f"param {n}", arr) for n, arr in enumerate(a for w in work for a in w.params)
            )
        return work

    @staticmethod
    def _check_replaced(where: str, p: Any, g: Any, segment: _Segment, k: int) -> None:
        """A param or grad that is not a view of the flat buffers must still fit its
        state."""
        if not isinstance(g, torch.Tensor) or g.layout != torch.strided:
            what = "sparse" if isinstance(g, torch.Tensor) else type(g).__name__
            raise TypeError(f"{where} has a {what} grad; only dense tensor grads are supported")
        for name, tensor in (("", p), (".grad", g)):
            if tensor.dtype != segment.dtype:
                raise TypeError(
                    f"{where}{name} is {tensor.dtype} but the optimizer holds the param as "
                    f"{segment.dtype}"
                )
            if tensor.device != segment.device:
                raise TypeError(
                    f"{where}{name} is on {tensor.device} but the optimizer holds the param "
                    f"on {segment.device}"
                )
            if tensor.shape != segment.shapes[k]:
                raise ValueError(
                    f"{where}{name} has shape {tuple(tensor.shape)} but the param's state "
                    f"has shape {tuple(segment.shapes[k])}"
                )

    @staticmethod
    def _norm(work: list[_Work]) -> tuple[float, bool]:
        """``(global L2 norm of the grads, all finite)`` over every device."""
        by_backend: dict[str, list[Any]] = {}
        for part in work:
            backend = "cpu" if part.segment.device.type == "cpu" else "cuda"
            if part.whole:
                by_backend.setdefault(backend, []).append(part.segment.arrays["grads"])
            else:
                by_backend.setdefault(backend, []).extend(part.grads)
        total, finite = 0.0, True
        for backend, grads in by_backend.items():
            sumsq, ok = grad_sumsq(grads, backend)
            total, finite = total + sumsq, finite and ok
        return math.sqrt(total), finite

    @torch.no_grad()
    def step(self, closure: Any = None, *, max_grad_norm: float | None = None) -> Any:
        """One update of every param that has a gradient (torch's ``step``).

        Args:
            closure: re-evaluates the model and returns the loss; called under
                ``torch.enable_grad()`` before the update, as torch does.
            max_grad_norm: clip by the global L2 norm of all the optimizer's gradients,
                scaling them by ``min(1, max_grad_norm / (norm + 1e-6))`` inside the
                update (torch's ``clip_grad_norm_``); a non-finite gradient then skips
                the whole step. ``last_step`` records the norm and the skip.

        Returns:
            The closure's loss, or None.

        Raises:
            TypeError, ValueError: a grad that does not fit its param (sparse, another
                dtype, shape or device), a bad hyperparameter; nothing was modified.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._gather()
        # Under torch.amp.GradScaler.step (see _step_supports_amp_scaling): the scaler
        # has found the non-finite grads and leaves the unscaling to this step.
        amp_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) > 0:
            self.last_step = StepResult(grad_norm=None, skipped=True)
            return loss
        loss_scale = None if amp_scale is None else _checks.positive("grad_scale", float(amp_scale))
        scale, norm = loss_scale, None
        if max_grad_norm is not None:
            max_grad_norm = _checks.real_scalar("max_grad_norm", max_grad_norm)
            if max_grad_norm < 0:
                raise ValueError(f"max_grad_norm must be >= 0, got {max_grad_norm}")
            norm, finite = self._norm(work)
            norm /= loss_scale or 1.0
            if not finite:
                self.last_step = StepResult(grad_norm=norm, skipped=True)
                return loss
            coef = max_grad_norm / (norm + 1e-6)
            if coef < 1.0:
                scale = (loss_scale or 1.0) / coef
        # One kernel call per device and dtype for all groups: parts by device, then the
        # step counts written back.
        parts: dict[Any, list[Part]] = {}
        write_backs = []
        for item in work:
            part, write_back = self._part(item, scale)
            parts.setdefault(item.segment.device, []).append(part)
            write_backs.append(write_back)
        for device, device_parts in parts.items():
            plan = self._plans.setdefault(device, Plan())
            run("cpu" if device.type == "cpu" else "cuda", device_parts, plan)
        for write_back in write_backs:
            write_back()
        self.last_step = StepResult(grad_norm=norm, skipped=False)
        return loss

    def _part(self, part: _Work, grad_scale: float | None) -> tuple[Part, Any]:
        """The kernel part of one piece of work (state allocated where missing), and the
        function that stores its incremented step counts once it has run."""
        segment, group = part.segment, part.group
        hp = _hyperparameters(group)
        stored = self._stored_names(hp, segment)
        if not segment.stated or any(name not in segment.state for name in stored):
            fresh = [k for k in part.ks if not self._has_state(group, segment, k)]
            self._init_state(group, segment, fresh)
            segment.steps_host[fresh] = 0  # a param without state has not stepped yet
            segment.stated = all(self._has_state(group, segment, k) for k in range(len(segment)))
        master = MASTER in stored
        seed = hp["seed"] if hp["stochastic_rounding"] else None
        # Stochastic rounding draws from one stream per segment, element k of its flat
        # space at index k: the same draws through the flat buffers or param by param.
        stream = self._segment_index(segment)
        if part.whole:
            steps = segment.steps_host[:1].astype(np.int64)
            arrays = segment.arrays
            state = {name: [segment.state_arrays[name]] for name in stored}
            rule = self._rules._part(
                hp, [arrays["params"]], [arrays["grads"]], state, steps, grad_scale
            )
            masters = state[MASTER] if master else None
            rule = rule.with_precision(masters, seed, [stream], [0])
            return rule, lambda: segment.steps_host.__setitem__(slice(None), steps[0])
        steps = segment.steps_host[part.ks].astype(np.int64)
        state = {
            name: [
                segment.state_chunks[name][k] if flat else as_array(segment.state_views[name][k])
                for k, flat in zip(part.ks, part.flat, strict=True)
            ]
            for name in stored
        }
        rule = self._rules._part(hp, part.params, part.grads, state, steps, grad_scale)
        starts = [segment.offsets[k] for k in part.ks]
        masters = state[MASTER] if master else None
        rule = rule.with_precision(masters, seed, [stream] * len(part.ks), starts)
        return rule, lambda: segment.steps_host.__setitem__(part.ks, steps)

    def _segment_index(self, segment: _Segment) -> int:
        """``segment``'s position among all the optimizer's segments (its random stream)."""
        index = 0
        for record in self._groups:
            for other in record.segments:
                if other is segment:
                    return index
                index += 1
        raise AssertionError("a segment of another optimizer")

    def _has_state(self, group: dict[str, Any], segment: _Segment, k: int) -> bool:
        return group["params"][segment.members[k]] in self.state

    # --- checkpoints ------------------------------------------------------------------

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict of this optimizer or of torch's optimizer of the same name.

        Everything is checked before anything changes (the structure, by torch's
        ``load_state_dict``; hyperparameters, state shapes and step counts here); the
        loaded state is then copied into the flat state buffers.

        Raises:
            TypeError, ValueError: the state dict does not fit these params.
        """
        plan = self._check_state_dict(state_dict)
        current = [dict(group) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, before, record in zip(self.param_groups, current, self._groups, strict=True):
            # A torch optimizer's groups lack the mixed-precision options: they keep their
            # values (as _check_state_dict checked them), where torch's load would drop them.
            for key, value in before.items():
                group.setdefault(key, value)
            group["state_dtype"] = state_dtype_name(group["state_dtype"])
            hp = _hyperparameters(group)
            for segment in record.segments:
                for name in self._stored_names(hp, segment):
                    if name not in segment.state:
                        fill = self._rules._initial_value(name, hp)
                        segment.allocate(name, fill, self._state_torch_dtype(hp, segment, name))
                segment.stated = False
                for k, i in enumerate(segment.members):
                    p = group["params"][i]
                    if p not in plan:
                        self.state.pop(p, None)
                        segment.steps[k] = 0
                        for name, views in segment.state_views.items():
                            views[k].fill_(self._rules._initial_value(name, hp))
                        continue
                    step, saved = plan[p]
                    segment.steps[k] = step
                    entry = self.state[p]
                    # From the saved tensors: torch's load casts state to the param dtype,
                    # which would round float32 state and masters of 16-bit params.
                    for name, value in saved.items():
                        segment.state_views[name][k].copy_(value)
                        entry[name] = segment.state_views[name][k]
                    if self._keeps_step:
                        entry["step"] = segment.steps[k]
                if self._state_from_start:
                    absent = [
                        k for k, i in enumerate(segment.members) if group["params"][i] not in plan
                    ]
                    self._init_state(group, segment, absent)

    def _check_state_dict(
        self, state_dict: Any
    ) -> dict[torch.Tensor, tuple[int, dict[str, torch.Tensor]]]:
        """Per param with saved state: its step count and the saved state tensors to copy
        (a master copy where the checkpoint has one for a 16-bit param that keeps one)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict lacks {key!r}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state'] must be a dict index -> state")
        if not isinstance(saved_groups, list | tuple):
            raise TypeError("state_dict['param_groups'] must be a list")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        plan = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict with 'params'")
            params = group["params"]
            if len(saved["params"]) != len(params):
                raise ValueError(
                    f"state_dict param_groups[{gi}] has {len(saved['params'])} params, the "
                    f"optimizer's group has {len(params)}"
                )
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            self._check_options(merged, f"state_dict param_groups[{gi}]: ")
            hp = _hyperparameters(merged)
            names = self._rules._state_names(hp)
            for saved_index, p in zip(saved["params"], params, strict=True):
                entry = saved_state.get(saved_index)
                if entry is None:
                    continue
                where = f"state_dict state[{saved_index}]"
                if not isinstance(entry, Mapping):
                    raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
                step = self._saved_step(entry, where)
                if step == 0 and not self._keeps_step:
                    continue  # SGD before its first step: no state
                missing = [name for name in names if entry.get(name) is None]
                if missing:
                    raise ValueError(f"{where} lacks {missing[0]!r}")
                keeps_master = hp["master_weights"] and p.dtype in (torch.float16, torch.bfloat16)
                if keeps_master and entry.get(MASTER) is None:
                    raise ValueError(f"{where} lacks {MASTER!r} (master_weights=True)")
                copied = [*names, *((MASTER,) if keeps_master else ())]
                for name in copied:
                    value = entry[name]
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(
                            f"{where}[{name!r}] must be a tensor, got {type(value).__name__}"
                        )
                    if value.shape != p.shape:
                        raise ValueError(
                            f"{where}[{name!r}] has shape {tuple(value.shape)}, its param "
                            f"{tuple(p.shape)}"
                        )
                plan[p] = (step, {name: entry[name] for name in copied})
        return plan


def _defaults(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's hyperparameters: its arguments (``locals()``) but the params and
    ``flatten``; ``betas`` a tuple, as torch keeps it."""
    defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "flatten")}
    defaults.pop("__class__", None)
    if isinstance(defaults.get("betas"), list):
        defaults["betas"] = tuple(defaults["betas"])
    return defaults


class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize) on
    pyopt's fused kernel: the rule of :class:`pyopt.optim.SGD`. State: ``momentum_buffer``
    (when ``momentum != 0``), no step count, as torch's.

    Args:
        params, lr, momentum, dampening, weight_decay, nesterov, maximize, foreach,
            differentiable, fused: as ``torch.optim.SGD`` (``foreach``/``fused`` change
            nothing; ``differentiable=True`` is refused).
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision, as
            :class:`pyopt.optim.Optimizer` (see the module docstring).
        flatten: move the params into flat buffers (see the module docstring).

    Example:
        >>> import torch
        >>> from pyopt.torch.optim import SGD
        >>> w = torch.nn.Parameter(torch.ones(4))
        >>> opt = SGD([w], lr=0.5, momentum=0.9)
        >>> opt.zero_grad()
        >>> (w.sum() / 4).backward()
        >>> opt.step()
        >>> w.detach().tolist()
        [0.875, 0.875, 0.875, 0.875]
    """

    _rules = _pyopt_optim.SGD
    _keeps_step = False

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(params, _defaults(locals()), flatten)

    def _saved_step(self, entry: Mapping[str, Any], where: str) -> int:
        # torch's SGD keeps no step count: a saved momentum buffer has had its first step.
        return int(entry.get("momentum_buffer") is not None)

    def _has_state(self, group: dict[str, Any], segment: _Segment, k: int) -> bool:
        # The momentum buffer's first step copies the gradient: SGD's step counts count it.
        return group["momentum"] == 0 or super()._has_state(group, segment, k)


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` (AMSGrad, L2 or decoupled weight decay, maximize) on pyopt's
    fused kernel: the rule of :class:`pyopt.optim.Adam`. State: ``step``, ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq``), as torch's.

    Args:
        params, lr, betas, eps, weight_decay, amsgrad, foreach, maximize, capturable,
            differentiable, fused, decoupled_weight_decay: as ``torch.optim.Adam``
            (``foreach``/``fused`` change nothing; ``capturable``/``differentiable`` True
            are refused).
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision, as
            :class:`pyopt.optim.Optimizer` (see the module docstring).
        flatten: move the params into flat buffers (see the module docstring).
    """

    _rules = _pyopt_optim.Adam

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(params, _defaults(locals()), flatten)


class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay
    (``p ← p·(1 − lr·λ)`` before the update), ``weight_decay`` 1e-2 by default."""

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(
            params, **_defaults(locals()), decoupled_weight_decay=True, flatten=flatten
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """As :meth:`Adam.load_state_dict`; the decay stays decoupled, as torch's AdamW
        keeps it."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class Adagrad(_FusedOptimizer):
    """``torch.optim.Adagrad`` on pyopt's fused kernel (the rule of
    :class:`pyopt.optim.Adagrad`). State from construction: ``step`` (0) and ``sum``
    (``initial_accumulator_value``), as torch's.

    Args:
        params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, foreach,
            maximize, differentiable, fused: as ``torch.optim.Adagrad``.
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision, as
            :class:`pyopt.optim.Optimizer` (see the module docstring).
        flatten: move the params into flat buffers (see the module docstring).
    """

    _rules = _pyopt_optim.Adagrad
    _state_from_start = True

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(params, _defaults(locals()), flatten)


class RMSprop(_FusedOptimizer):
    """``torch.optim.RMSprop`` (centered, momentum) on pyopt's fused kernel (the rule of
    :class:`pyopt.optim.RMSprop`). State: ``step``, ``square_avg``, ``momentum_buffer``
    (momentum > 0), ``grad_avg`` (centered), as torch's.

    Args:
        params, lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach,
            maximize, differentiable: as ``torch.optim.RMSprop``.
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision, as
            :class:`pyopt.optim.Optimizer` (see the module docstring).
        flatten: move the params into flat buffers (see the module docstring).
    """

    _rules = _pyopt_optim.RMSprop

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(params, _defaults(locals()), flatten)


class Adadelta(_FusedOptimizer):
    """``torch.optim.Adadelta`` on pyopt's fused kernel (the rule of
    :class:`pyopt.optim.Adadelta`). State: ``step``, ``square_avg``, ``acc_delta``.

    Args:
        params, lr, rho, eps, weight_decay, foreach, capturable, maximize,
            differentiable: as ``torch.optim.Adadelta``.
        master_weights, state_dtype, stochastic_rounding, seed: mixed precision, as
            :class:`pyopt.optim.Optimizer` (see the module docstring).
        flatten: move the params into flat buffers (see the module docstring).
    """

    _rules = _pyopt_optim.Adadelta

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        master_weights: bool = False,
        state_dtype: Any = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
        flatten: bool = True,
    ):
        super().__init__(params, _defaults(locals()), flatten)
