"""pyopt check: every kernel family on this machine against the float64 references.

pyopt check [--device auto|cpu|cuda] [--json FILE] [--quick] [--family NAME ...]

What a user runs after installing on a new machine, and what the GPU session
(``bench/gpu.sh``) runs first. Each check calls one public operation (batch norm forward
and backward in both layouts, train and eval, affine and not; every optimizer rule with
its flags over several steps, also with float32 master weights over float16/bfloat16
params (the ``mixed`` family); gradient clipping; dropout; the init fills) on the chosen
device, on random inputs of small, awkward (1, primes, 1023, 1025) and large shapes, and
compares the result with :mod:`pyopt._reference` (float64 NumPy). One row per check:
family, case, max error, limit, pass/fail; the exit status is 0 only when every row
passes (1 otherwise, 2 when the device cannot be used).

The ``torch`` family runs the same cases through :mod:`pyopt.torch` on torch tensors of
the device (CUDA tensors reach the kernels through ``__cuda_array_interface__``):
``functional.batch_norm`` forward and, through autograd, backward on contiguous and
channels-last tensors; every optimizer case through ``optim.<rule>`` (the "flat" layout
with ``flatten=True``, "separate" with ``flatten=False``), each gradient written by a
backward (through a ``torch.amp.GradScaler`` where the case has a ``grad_scale``), its
params and ``opt.state[p]`` against the reference; ``nn.Dropout`` forward and backward
from one call. It needs torch (and on CUDA ``torch.cuda.is_available()``, and no Numba
simulator, which cannot reach torch's device memory): without, it is one "skip" line in
the table and an entry of the JSON's ``skipped`` list, not a failure.

The "max error" of a row is, by family:

* ``mixed``: the ``optim`` measure of the float32 masters, ``inf`` unless every 16-bit
  param is exactly its master rounded to nearest even.
* ``batchnorm``, ``optim``, ``clip``: ``max |actual − expected| / max(1, max |expected|)``
  over each output (every returned array, the running statistics, every optimizer state
  tensor), the largest over the outputs; a shape or finiteness mismatch is ``inf``. The
  error is relative to the output's scale, or absolute where that is below 1 (a
  gradient that cancels to 0, as batch norm's ``dx`` over 2 values, has no relative
  error to speak of).
* ``dropout``: the same measure for the values (exactly 0 when right: a kept element is
  ``x·(1/(1 − p))`` rounded once, a dropped one 0), and for the kept count its distance
  from ``n·(1 − p)`` in standard deviations of the binomial.
* ``init``: the larger distance of the sample mean and variance from the distribution's,
  in standard deviations of those estimators; ``inf`` when a value lies outside a uniform
  fill's bounds.
* ``torch``: the measure of the family it repeats; also ``inf`` when batch norm's output
  has another layout (strides) than its input, or an optimizer's step counts are wrong.
  An optimizer whose ``state[p]`` holds other entries than ``torch.optim``'s own is a
  failed row that names them.

Inputs are NumPy arrays on the CPU and, on CUDA, CuPy arrays where CuPy is installed
(Numba device arrays otherwise, and always under the simulator, which runs only tiny
shapes: a Python thread per CUDA thread). A check that raises is a failed row that says
why; the run goes on.

``--json FILE`` writes ``{"device": ..., "versions": ..., "checks": [{"family", "case",
"max_error", "limit", "status": "pass" | "fail"}, ...], "skipped": [{"family",
"reason"}, ...]}`` (``max_error`` null when not finite or when the check raised).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import pyopt
from pyopt import _reference as reference
from pyopt import functional as F
from pyopt._backend import copy_into, device_full, resolve_device, to_numpy

# The kernel families, named as pyopt bench names them, then pyopt.torch's glue over them.
FAMILIES = ("batchnorm", "optim", "mixed", "clip", "dropout", "init", "torch")

# Error limits per dtype (the measure: the module docstring). The unit roundoff u is
# 6.0e-8 in float32 and 1.1e-16 in float64. A correct kernel rounds each elementwise
# result a few times and accumulates its reductions in float32 or wider with stable
# merges (Welford/Chan, blocked sums): a few u times a slowly growing factor. The largest
# errors of a full CPU run are 6e-7 (float32: batch norm's dx, Adam's params) and 8e-14
# (float64: batch norm on 6.4M values offset by up to 30 standard deviations, where the
# mean's rounding is amplified); the limits are 30x and 120x those, room for a GPU's FMA
# contraction, libdevice and another reduction order. A bug does not fit in them: a
# wrong constant (eps, a momentum, 1 − β) or a bias correction one step off moves
# results by 1e-4 or more; an off-by-one count (n for n − 1, an element left out or read
# twice) by about 1/n, which the small and awkward shapes (n of 1 to 1025) make 1e-3 or
# more; a race or an unwritten element by garbage or NaN. Measured: Adam's eps x10 or its
# step size x(1 + 1e-4), batch norm's eps x2 or momentum x1.01, a norm that skips the
# last element each fail rows of a quick run.
LIMITS = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}
# Exact operations: clamping, and dropout's scaling (one multiplication in the dtype).
EXACT = 0.0
# Sampling checks (dropout's kept count, init moments): within 5 standard deviations. A
# correct kernel fails one with probability 6e-7, and the inputs are seeded, so verdicts
# are reproducible. At the largest quick sizes (1M elements, 525k weights) a keep rate
# 2% off or a standard deviation 1% off is 10 standard deviations out (measured).
SIGMAS = 5.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes of one run of the checks (see :data:`SIZES`).

    Attributes:
        dtypes: element types checked.
        batch_norm: input shapes ``(N, C, *spatial)``; each runs with ``axis=1`` and,
            when it has spatial axes, channels-last (``C`` moved last, ``axis=-1``).
        optimizer: ``(layout, param shapes)``: "separate" arrays (one kernel call per
            tensor) or a "flat" run of adjacent views of one buffer (one call per step).
        steps: optimizer steps per check (state and bias correction matter after 1).
        clip: lists of gradient sizes, one array each.
        dropout: ``(n, p)`` pairs.
        init: weight shapes ``(out, in, *kernel)``.
    """

    dtypes: tuple[str, ...]
    batch_norm: tuple[tuple[int, ...], ...]
    optimizer: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]
    steps: int
    clip: tuple[tuple[int, ...], ...]
    dropout: tuple[tuple[int, float], ...]
    init: tuple[tuple[int, ...], ...]


_AWKWARD_PARAMS = ((1,), (7,), (3, 11), (1023,), (1025,))
_AWKWARD_GRADS = (1, 7, 97, 1023, 1025)
_SMALL = Sizes(
    dtypes=("float32", "float64"),
    batch_norm=((2, 1), (3, 7, 11), (1023, 5), (5, 3, 1025)),
    optimizer=(("separate", _AWKWARD_PARAMS), ("flat", _AWKWARD_PARAMS)),
    steps=4,
    clip=(_AWKWARD_GRADS, (65_537,)),
    dropout=((1, 0.5), (1023, 0.2), (1025, 0.7), (1_000_003, 0.2)),
    init=((1, 1), (63, 37), (512, 1025)),
)
SIZES = {
    "quick": _SMALL,
    # The large shapes: ResNet-50's first stage at batch 32 (6.4M elements, 100k per
    # channel), a 1M-parameter tensor, 4M-element gradients, masks and weights.
    "full": dataclasses.replace(
        _SMALL,
        batch_norm=(*_SMALL.batch_norm, (7, 64, 13, 13), (32, 64, 56, 56)),
        optimizer=(*_SMALL.optimizer, ("separate", (((1 << 20) + 3,),))),
        clip=(_AWKWARD_GRADS, ((1 << 22) + 5,)),
        dropout=(*_SMALL.dropout, (4_000_037, 0.1), (4_000_037, 0.5)),
        init=(*_SMALL.init, (64, 32, 3, 3), (4096, 1025)),
    ),
    # Under the Numba CUDA simulator: each family once, on shapes of a few dozen elements.
    "simulator": Sizes(
        dtypes=("float32",),
        batch_norm=((3, 5, 7),),
        optimizer=(("flat", ((1,), (7,), (3, 5))),),
        steps=3,
        clip=((1, 7, 37),),
        dropout=((37, 0.3),),
        init=((7, 5),),
    ),
}


class OptimizerCase(NamedTuple):
    """An optimizer configuration of :data:`OPTIMIZER_CASES`.

    Attributes:
        rule: the ``torch.optim`` (and :mod:`pyopt.optim`) class.
        kwargs: its constructor's hyperparameters, by torch.optim's names.
        grad_scale: the loss scale the gradients carry (the functional forms' and
            :meth:`pyopt.optim.Optimizer.step`'s ``grad_scale``, a ``GradScaler``'s in
            torch), or None.
    """

    rule: str
    kwargs: dict[str, Any]
    grad_scale: float | None = None

    @property
    def label(self) -> str:
        """The rule and every setting, e.g. ``Adam(lr=0.01, grad_scale=1024.0)``."""
        scale = {} if self.grad_scale is None else {"grad_scale": self.grad_scale}
        options = ", ".join(f"{k}={v}" for k, v in {**self.kwargs, **scale}.items())
        return f"{self.rule}({options})"


# The optimizer configurations of pyopt check, tests/test_optim.py, tests/test_torch_optim.py
# and pyopt bench (which times the ones its ``RULES`` name): every flag of every rule at
# least once.
OPTIMIZER_CASES: dict[str, OptimizerCase] = {
    "SGD": OptimizerCase("SGD", {"lr": 0.1}),
    "SGD-momentum": OptimizerCase(
        "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}
    ),
    "SGD-nesterov": OptimizerCase(
        "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}, 8.0
    ),
    "Adam": OptimizerCase("Adam", {"lr": 0.01}),
    "AMSGrad": OptimizerCase(
        "Adam", {"lr": 0.01, "betas": (0.4, 0.9), "weight_decay": 0.1, "amsgrad": True}
    ),
    "Adam-maximize": OptimizerCase("Adam", {"lr": 0.01, "maximize": True, "eps": 1e-3}, 1024.0),
    "AdamW": OptimizerCase("AdamW", {"lr": 0.01}),
    "AdamW-amsgrad": OptimizerCase(
        "AdamW", {"lr": 0.01, "weight_decay": 0.5, "amsgrad": True, "maximize": True}
    ),
    "Adagrad": OptimizerCase("Adagrad", {"lr": 0.1}),
    "Adagrad-decay": OptimizerCase(
        "Adagrad",
        {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.5, "maximize": True},
    ),
    "RMSprop": OptimizerCase("RMSprop", {"lr": 0.01}),
    "RMSprop-centered-momentum": OptimizerCase(
        "RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1}
    ),
    "RMSprop-momentum": OptimizerCase(
        "RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "maximize": True}
    ),
    "Adadelta": OptimizerCase("Adadelta", {}),
    "Adadelta-decay": OptimizerCase(
        "Adadelta", {"lr": 0.5, "rho": 0.5, "weight_decay": 0.1, "maximize": True}
    ),
}
CLIP_NORM_TYPES = (2.0, 1.0, math.inf, -math.inf, 3.0, 0.5)
# (initializer, keyword arguments): every function, mode and nonlinearity branch.
INIT_CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("uniform_", {"a": -2.0, "b": 3.0}),
    ("normal_", {"mean": 1.5, "std": 0.25}),
    ("xavier_uniform_", {"gain": 2.0}),
    ("xavier_normal_", {"gain": 0.5}),
    ("kaiming_uniform_", {"a": math.sqrt(5)}),
    ("kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal_", {"nonlinearity": "relu"}),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "tanh"}),
    ("lecun_normal_", {}),
)
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


@dataclasses.dataclass(frozen=True)
class Check:
    """One row: ``run()`` computes the max error (see the module docstring)."""

    family: str
    case: str
    limit: float
    run: Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Result:
    """A check's outcome; ``error`` is what it raised (None when it ran)."""

    family: str
    case: str
    max_error: float | None
    limit: float
    error: str | None = None

    @property
    def status(self) -> str:
        ok = self.error is None and self.max_error is not None and self.max_error <= self.limit
        return "pass" if ok else "fail"

    def row(self) -> dict[str, Any]:
        """The JSON row; a non-finite error is null (JSON has no inf or NaN)."""
        finite = self.max_error is not None and math.isfinite(self.max_error)
        return {
            "family": self.family,
            "case": self.case,
            "max_error": self.max_error if finite else None,
            "limit": self.limit,
            "status": self.status,
        }


# --- arrays on the device -----------------------------------------------------------


def _put(device: str, host: np.ndarray) -> Any:
    """A copy of ``host`` on ``device``: NumPy, or CuPy / a Numba device array."""
    arr = device_full(host.shape, 0.0, host.dtype, device)
    copy_into(arr, host)
    return arr


def _tensor(device: str, host: np.ndarray) -> Any:
    """A torch tensor on ``device`` holding a copy of ``host`` (in-place updates leave the
    host inputs, which the references read, as they were)."""
    import torch  # the torch family only: pyopt check runs without torch

    return torch.tensor(host, device=device)


def _max_error(pairs: Iterable[tuple[Any, Any]]) -> float:
    """The largest ``max |a − e| / max(1, max |e|)`` over ``(actual, expected)`` pairs:
    NaN where ``a`` has a NaN and ``e`` a number, ``inf`` for an inf, a shape mismatch or
    a non-finite ``e`` that ``a`` does not match."""
    worst = 0.0
    for actual, expected in pairs:
        a = to_numpy(actual).astype(np.float64)
        e = np.asarray(expected, np.float64)
        if a.shape != e.shape:
            return math.inf
        finite = np.isfinite(e)
        if not np.array_equal(a[~finite], e[~finite], equal_nan=True):
            return math.inf
        scale = float(np.max(np.abs(e[finite]), initial=1.0))
        error = float(np.max(np.abs(a[finite] - e[finite]), initial=0.0)) / scale
        if math.isnan(error):
            return math.nan
        worst = max(worst, error)
    return worst


def _rng(case: str) -> np.random.Generator:
    # Each case draws its own inputs, the same ones in every run (reproducible verdicts).
    return np.random.default_rng(zlib.crc32(case.encode()))


def _signed(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """float64 values of magnitude in [0.5, 2] and random sign: never 0 nor near it."""
    return rng.uniform(0.5, 2.0, shape) * rng.choice((-1.0, 1.0), shape)


def _sizes(sizes: Iterable[int]) -> str:
    """Tensor sizes as ``n=1+7+1023``: a list of tensors, one call each (or one run)."""
    return "n=" + "+".join(map(str, sizes))


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --- batch norm ---------------------------------------------------------------------


def _batch_norm_inputs(case: str, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> dict:
    """Per-channel offsets in [-3, 3] and scales in [0.1, 2] (log-uniform): a mean far
    from 0 tests the reductions' stability, a small variance makes eps matter."""
    rng = _rng(case)
    channels = shape[axis]
    view = [1] * len(shape)
    view[axis] = channels
    loc = rng.uniform(-3.0, 3.0, channels).reshape(view)
    scale = np.exp(rng.uniform(math.log(0.1), math.log(2.0), channels)).reshape(view)
    return {
        "x": (loc + scale * rng.standard_normal(shape)).astype(dtype),
        "dy": rng.standard_normal(shape).astype(dtype),
        "weight": rng.uniform(0.5, 1.5, channels).astype(dtype),
        "bias": rng.standard_normal(channels).astype(dtype),
        "running_mean": rng.standard_normal(channels).astype(dtype),
        "running_var": rng.uniform(0.5, 2.0, channels).astype(dtype),
    }


def _batch_norm_reference(inp: dict, training: bool, affine: bool, axis: int) -> tuple:
    """:func:`reference.batch_norm` of :func:`_batch_norm_inputs`: ``(y, mean, invstd,
    running_mean, running_var)`` in float64."""
    return reference.batch_norm(
        inp["x"], inp["weight"] if affine else None, inp["bias"] if affine else None,
        inp["running_mean"], inp["running_var"], training, BN_MOMENTUM, BN_EPS, axis,
    )  # fmt: skip


def _batch_norm_forward(device, case, shape, axis, training, affine, dtype) -> float:
    inp = _batch_norm_inputs(case, shape, axis, dtype)
    dev = {k: _put(device, v) for k, v in inp.items()}
    w, b = (dev["weight"], dev["bias"]) if affine else (None, None)
    y, mean, invstd = F.batch_norm(
        dev["x"], weight=w, bias=b, running_mean=dev["running_mean"],
        running_var=dev["running_var"], training=training, momentum=BN_MOMENTUM, eps=BN_EPS,
        axis=axis,
    )  # fmt: skip
    outputs = (y, mean, invstd, dev["running_mean"], dev["running_var"])
    ref = _batch_norm_reference(inp, training, affine, axis)
    return _max_error(zip(outputs, ref, strict=True))


def _batch_norm_backward(device, case, shape, axis, training, affine, dtype) -> float:
    inp = _batch_norm_inputs(case, shape, axis, dtype)
    # The saved statistics are the reference's, rounded to the dtype: the backward alone.
    _, mean, invstd, _, _ = _batch_norm_reference(inp, training, affine, axis)
    mean, invstd = mean.astype(dtype), invstd.astype(dtype)
    weight = inp["weight"] if affine else None
    got = F.batch_norm_backward(
        _put(device, inp["dy"]), _put(device, inp["x"]),
        weight=None if weight is None else _put(device, weight),
        mean=_put(device, mean), invstd=_put(device, invstd), training=training, axis=axis,
    )  # fmt: skip
    want = reference.batch_norm_backward(inp["dy"], inp["x"], weight, mean, invstd, training, axis)
    if not affine:
        if got[1] is not None or got[2] is not None:
            return math.inf  # no weight: no dweight or dbias, as torch
        got, want = got[:1], want[:1]
    return _max_error(zip(got, want, strict=True))


_BN_PASSES = (("forward", _batch_norm_forward), ("backward", _batch_norm_backward))


def _batch_norm_variants(sizes: Sizes) -> Iterator[tuple[str, tuple[int, ...], int, bool, bool]]:
    """``(dtype name, shape, axis, training, affine)`` of every batch-norm check: each
    shape of ``sizes`` with ``axis=1`` and, when it has spatial axes, channels-last (``C``
    moved last, ``axis=-1``), in train and eval, with and without weight and bias."""
    for dtype_name, nchw in itertools.product(sizes.dtypes, sizes.batch_norm):
        layouts = [(nchw, 1)]
        if len(nchw) > 2:  # rank 2: axis 1 is the last axis already
            layouts.append(((nchw[0], *nchw[2:], nchw[1]), -1))
        for (shape, axis), training, affine in itertools.product(
            layouts, (True, False), (True, False)
        ):
            yield dtype_name, shape, axis, training, affine


def _batch_norm_mode(training: bool, affine: bool) -> str:
    return f"{'train' if training else 'eval'} {'affine' if affine else 'plain'}"


def _batch_norm_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    for dtype_name, shape, axis, training, affine in _batch_norm_variants(sizes):
        dtype = np.dtype(dtype_name)
        for name, fn in _BN_PASSES:
            mode = _batch_norm_mode(training, affine)
            case = f"{name} {mode} axis={axis} {_shape(shape)} {dtype_name}"
            run = functools.partial(fn, device, case, shape, axis, training, affine, dtype)
            yield Check("batchnorm", case, LIMITS[dtype], run)


# --- optimizers ---------------------------------------------------------------------


def _columns(device: str, hosts: list[np.ndarray], layout: str) -> list[Any]:
    """``hosts`` on ``device``: separate arrays, or adjacent views of one flat buffer."""
    if layout == "separate":
        return [_put(device, h) for h in hosts]
    flat = _put(device, np.concatenate([h.reshape(-1) for h in hosts]))
    views, start = [], 0
    for h in hosts:
        views.append(flat[start : start + h.size].reshape(h.shape))
        start += h.size
    return views


def _functional_steps(device, rule, hp, grad_scale, layout, params, grads) -> tuple:
    """The steps through the functional form of ``rule`` (``pyopt.functional.adam_``...)
    on ``layout`` arrays: see :func:`_optimizer` for the arguments and what it returns."""
    step = getattr(F, f"{rule.lower()}_")
    # Its state lists, in argument order: those of the pyopt.optim class (torch's names).
    state_keys = getattr(pyopt.optim, rule)._state_args
    kwargs = {k: v for k, v in hp.items() if k != "initial_accumulator_value"}
    kwargs["grad_scale"] = grad_scale
    if "betas" in kwargs:
        kwargs["beta1"], kwargs["beta2"] = kwargs.pop("betas")
    dev_params = _columns(device, params, layout)
    states = []
    for key in state_keys:
        fill = hp.get("initial_accumulator_value", 0.0) if key == "sum" else 0.0
        states.append(_columns(device, [np.full_like(p, fill) for p in params], layout))
    state_steps = np.zeros(len(params), np.int64)
    for step_grads in grads:
        step(dev_params, _columns(device, step_grads, layout), *states, state_steps, **kwargs)
    per_param = [
        dict(zip(state_keys, entries, strict=True)) for entries in zip(*states, strict=True)
    ]
    return dev_params, per_param, state_steps


def _optimizer(device, case, config, layout, shapes, steps, dtype, through) -> float:
    """``steps`` steps of the :class:`OptimizerCase` ``config`` on params of ``shapes``,
    made by ``through``, against the reference rule.

    ``through(device, rule, hp, grad_scale, layout, params, grads)`` runs the steps from
    the host ``params`` with the host ``grads`` (one list per step, multiplied by the
    loss scale ``grad_scale`` when not None) and returns ``(params, states, step
    counts)``: the params after the last step, per param a dict of its state tensors by
    the reference's (torch's) names, the per-param step counts (None where the optimizer
    keeps none).
    """
    rng = _rng(case)
    # Gradients of magnitude >= 0.5 and params in [-2, 2]: g + λ·p (λ <= 0.1 here) never
    # cancels. Adam's and RMSprop's steps are scale-free in g (m / √v), so a cancelled g
    # would turn float32 rounding into an O(lr) difference: an ill-conditioned input that
    # no float32 kernel (nor torch) gets right, not a kernel error.
    params = [rng.uniform(-2.0, 2.0, s).astype(dtype) for s in shapes]
    rule, hp, grad_scale = config
    # Scaled by the loss scale (a power of two: exact), as a mixed-precision step gets them.
    grads = [
        [(_signed(rng, s) * (grad_scale or 1.0)).astype(dtype) for s in shapes]
        for _ in range(steps)
    ]
    got_params, got_states, got_steps = through(device, rule, hp, grad_scale, layout, params, grads)
    want = [p.astype(np.float64) for p in params]
    ref_states: list[dict[str, Any]] = [{} for _ in shapes]
    mult = 1.0 if grad_scale is None else 1.0 / grad_scale
    for step_grads in grads:
        want = [
            reference.OPTIMIZERS[rule](p, g, s, grad_mult=mult, **hp)
            for p, g, s in zip(want, step_grads, ref_states, strict=True)
        ]
    if got_steps is not None and not (np.asarray(got_steps) == steps).all():
        return math.inf
    pairs = list(zip(got_params, want, strict=True))
    for got, ref in zip(got_states, ref_states, strict=True):
        pairs += [(tensor, ref[key]) for key, tensor in got.items() if key in ref]
    return _max_error(pairs)


def _optimizer_rows(device, sizes, family, prefix, through) -> Iterator[Check]:
    """Every case of :data:`OPTIMIZER_CASES` at every layout and dtype of ``sizes``, as
    rows of ``family`` named ``prefix + rule(...)``, stepped by ``through`` (see
    :func:`_optimizer`)."""
    for dtype_name in sizes.dtypes:
        dtype = np.dtype(dtype_name)
        for layout, shapes in sizes.optimizer:
            where = f"{layout} {_sizes(math.prod(s) for s in shapes)}"
            for config in OPTIMIZER_CASES.values():
                case = f"{prefix}{config.label} x{sizes.steps} {where} {dtype_name}"
                run = functools.partial(
                    _optimizer, device, case, config, layout, shapes, sizes.steps, dtype, through
                )
                yield Check(family, case, LIMITS[dtype], run)


def _optimizer_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    return _optimizer_rows(device, sizes, "optim", "", _functional_steps)


# --- mixed precision ------------------------------------------------------------------

# The 16-bit formats checked per device: NumPy and CuPy/Numba arrays have float16; only
# ml_dtypes' NumPy arrays (and torch tensors) have bfloat16.
MIXED_FORMATS = {"cpu": ("bfloat16", "float16"), "cuda": ("float16",)}


def _mixed(device, case, config, shapes, steps, fmt) -> float:
    """``steps`` steps of ``config`` with ``master_weights=True`` on 16-bit params: the
    float32 masters against the float64 reference fed the same (16-bit) params and
    grads, and ``inf`` unless every param is exactly its master rounded to nearest even."""
    import ml_dtypes  # noqa: F401  (registers the name "bfloat16")

    rng = _rng(case)
    dtype = np.dtype(fmt)
    rule, hp, grad_scale = config
    params = [rng.uniform(-2.0, 2.0, s).astype(dtype) for s in shapes]
    grads = [
        [(_signed(rng, s) * (grad_scale or 1.0)).astype(dtype) for s in shapes]
        for _ in range(steps)
    ]
    dev_params = [_put(device, p) for p in params]
    opt = getattr(pyopt.optim, rule)(dev_params, **hp, master_weights=True)
    for step_grads in grads:
        opt.step([_put(device, g) for g in step_grads], grad_scale=grad_scale)
    masters = [entry["master_param"] for entry in opt.state_dict()["state"].values()]
    want = [p.astype(np.float64) for p in params]
    states: list[dict[str, Any]] = [{} for _ in shapes]
    mult = 1.0 if grad_scale is None else 1.0 / grad_scale
    for step_grads in grads:
        want = [
            reference.OPTIMIZERS[rule](p, g.astype(np.float64), s, grad_mult=mult, **hp)
            for p, g, s in zip(want, step_grads, states, strict=True)
        ]
    for p, master in zip(dev_params, masters, strict=True):
        if not np.array_equal(to_numpy(p).view(np.uint16), master.astype(dtype).view(np.uint16)):
            return math.inf
    return _max_error(zip(masters, want, strict=True))


def _mixed_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    """Every case of :data:`OPTIMIZER_CASES` with float32 master weights over 16-bit
    params (separate arrays) of the first optimizer shapes of ``sizes``, in each format of
    the device."""
    shapes = sizes.optimizer[0][1]
    where = _sizes(math.prod(s) for s in shapes)
    for fmt in MIXED_FORMATS[device]:
        for config in OPTIMIZER_CASES.values():
            case = f"{config.label} master_weights x{sizes.steps} {where} {fmt}"
            run = functools.partial(_mixed, device, case, config, shapes, sizes.steps, fmt)
            yield Check("mixed", case, LIMITS[np.dtype(np.float32)], run)


# --- clipping -----------------------------------------------------------------------


def _grads(case: str, sizes: tuple[int, ...], dtype: np.dtype) -> list[np.ndarray]:
    rng = _rng(case)
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


def _clip_norm(device, case, sizes, p, dtype) -> float:
    grads = _grads(case, sizes, dtype)
    total = reference.total_norm(grads, p)
    max_norm = 0.5 * float(total)  # clips: every gradient is scaled
    coef = reference.clip_coefficient(total, max_norm)
    dev = [_put(device, g) for g in grads]
    got = pyopt.clip_grad_norm_(dev, max_norm, p)
    pairs = [(np.asarray([got]), np.asarray([total]))]
    pairs += [(a, g.astype(np.float64) * coef) for a, g in zip(dev, grads, strict=True)]
    return _max_error(pairs)


def _clip_value(device, case, sizes, dtype) -> float:
    grads = _grads(case, sizes, dtype)
    dev = [_put(device, g) for g in grads]
    pyopt.clip_grad_value_(dev, 1.0)
    return _max_error((a, np.clip(g, -1.0, 1.0)) for a, g in zip(dev, grads, strict=True))


def _clip_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    for dtype_name in sizes.dtypes:
        dtype = np.dtype(dtype_name)
        for grad_sizes in sizes.clip:
            where = f"{_sizes(grad_sizes)} {dtype_name}"
            for p in CLIP_NORM_TYPES:
                case = f"clip_grad_norm_ p={p} {where}"
                yield Check(
                    "clip",
                    case,
                    LIMITS[dtype],
                    functools.partial(_clip_norm, device, case, grad_sizes, p, dtype),
                )
            case = f"clip_grad_value_ 1.0 {where}"
            yield Check(
                "clip", case, EXACT, functools.partial(_clip_value, device, case, grad_sizes, dtype)
            )


# --- dropout ------------------------------------------------------------------------

# Key words past 2**32 in both halves: the stream's high counter and key words matter.
_DROPOUT_SEED, _DROPOUT_OFFSET = 2**63 + 5, 2**33 + 1


def _dropout_inputs(case: str, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(case)
    # Never 0: a dropped element must be told from a kept zero.
    x = _signed(rng, n).astype(dtype)
    return x, rng.standard_normal(n).astype(dtype)


def _dropout_functional(device: str, x: np.ndarray, dy: np.ndarray, p: float) -> tuple:
    """``(y, dx)``: :func:`pyopt.functional.dropout` of ``x`` and its backward of ``dy``,
    with one fixed key."""
    key = {"seed": _DROPOUT_SEED, "offset": _DROPOUT_OFFSET}
    return F.dropout(_put(device, x), p, **key), F.dropout_backward(_put(device, dy), p, **key)


def _dropout(device, n, p, dtype, run, measure) -> float:
    """``measure(x, dy, y, dx, p)`` on host copies of what ``run(device, x, dy, p)``
    returns: ``(y, dx)``, the dropout of ``x`` and the backward of ``dy`` with its mask."""
    x, dy = _dropout_inputs(f"dropout {n} {p} {dtype}", n, dtype)
    y, dx = run(device, x, dy, p)
    return measure(x, dy, to_numpy(y), to_numpy(dx), p)


def _dropout_values(x, dy, y, dx, p) -> float:
    return _max_error([(y, np.where(y != 0, x * x.dtype.type(1 / (1 - p)), 0))])


def _dropout_kept(x, dy, y, dx, p) -> float:
    expected, sd = reference.dropout_keep_bounds(p, y.size, sigmas=1.0)
    return abs(int(np.count_nonzero(y)) - expected) / sd


def _dropout_backward(x, dy, y, dx, p) -> float:
    return _max_error([(dx, np.where(y != 0, dy * dy.dtype.type(1 / (1 - p)), 0))])


def _dropout_matches_cpu(x, dy, y, dx, p) -> float:
    return _max_error([(y, to_numpy(_dropout_functional("cpu", x, dy, p)[0]))])


_DROPOUT_MEASURES = (
    ("forward values", EXACT, _dropout_values),
    ("kept count [sd]", SIGMAS, _dropout_kept),
    ("backward == forward mask", EXACT, _dropout_backward),
)


def _dropout_rows(device, sizes, family, prefix, run, measures) -> Iterator[Check]:
    """``measures`` (``(what, limit, measure)``) of every dropout size and dtype of
    ``sizes``, as rows of ``family`` named ``prefix + what``, made by ``run`` (see
    :func:`_dropout`)."""
    for dtype_name in sizes.dtypes:
        dtype = np.dtype(dtype_name)
        for n, p in sizes.dropout:
            for what, limit, measure in measures:
                case = f"{prefix}{what} p={p} n={n} {dtype_name}"
                run_row = functools.partial(_dropout, device, n, p, dtype, run, measure)
                yield Check(family, case, limit, run_row)


def _dropout_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    measures = list(_DROPOUT_MEASURES)
    if device == "cuda":
        # The mask is a function of (seed, offset, i) on every backend: CUDA's must be the
        # CPU kernel's bit for bit (the CPU's follows the Philox reference in the tests).
        measures.append(("forward == CPU", EXACT, _dropout_matches_cpu))
    return _dropout_rows(device, sizes, "dropout", "", _dropout_functional, measures)


# --- init ---------------------------------------------------------------------------


def _init(device, name, kwargs, shape, dtype) -> float:
    # NaN-poisoned: an element the fill does not write fails the check.
    tensor = device_full(shape, math.nan, dtype, device)
    getattr(pyopt.init, name)(tensor, **kwargs, seed=zlib.crc32(f"{name}{shape}".encode()))
    sample = to_numpy(tensor).astype(np.float64).reshape(-1)
    kind, mean, std, bound = reference.init_distribution(name, shape, **kwargs)
    if bound is not None and not (bound[0] <= sample.min() and sample.max() <= bound[1]):
        return math.inf
    mean_sd, var_sd = reference.moment_bounds(kind, std, sample.size, sigmas=1.0)
    return max(abs(sample.mean() - mean) / mean_sd, abs(sample.var() - std**2) / var_sd)


def _init_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    for dtype_name in sizes.dtypes:
        dtype = np.dtype(dtype_name)
        for shape in sizes.init:
            for name, kwargs in INIT_CASES:
                options = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in kwargs.items()
                )
                case = f"{name}({options}) moments [sd] {_shape(shape)} {dtype_name}"
                yield Check(
                    "init",
                    case,
                    SIGMAS,
                    functools.partial(_init, device, name, kwargs, shape, dtype),
                )


# --- torch (pyopt.torch) ------------------------------------------------------------


def _torch_unavailable(device: str) -> str | None:
    """Why the torch family cannot run on ``device``, or None when it can."""
    try:
        import torch
    except (ImportError, OSError) as exc:  # OSError: a libtorch that does not load
        return f"torch is not importable ({type(exc).__name__}: {exc})"
    if device == "cuda":
        if _simulator():
            return "the Numba CUDA simulator cannot reach torch's CUDA memory"
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} cannot use CUDA (torch.cuda.is_available() is False)"
    return None


def _torch_batch_norm(device, case, shape, axis, training, affine, dtype) -> tuple:
    """``(inputs, tensors, y)``: :func:`pyopt.torch.functional.batch_norm` on tensors on
    ``device`` of :func:`_batch_norm_inputs`, ``x`` and ``dy`` seen as ``(N, C, ...)``
    (views of channels-last memory where ``axis`` is -1), ``x`` and the weight and bias
    used requiring grad."""
    from pyopt.torch import functional

    inp = _batch_norm_inputs(case, shape, axis, dtype)
    t = {k: _tensor(device, v) for k, v in inp.items()}
    t["x"], t["dy"] = t["x"].movedim(axis, 1), t["dy"].movedim(axis, 1)
    w, b = (t["weight"], t["bias"]) if affine else (None, None)
    for leaf in (t["x"], w, b):
        if leaf is not None:
            leaf.requires_grad_()
    y = functional.batch_norm(
        t["x"], t["running_mean"], t["running_var"], w, b, training, BN_MOMENTUM, BN_EPS
    )
    return inp, t, y


def _torch_batch_norm_forward(device, case, shape, axis, training, affine, dtype) -> float:
    inp, t, y = _torch_batch_norm(device, case, shape, axis, training, affine, dtype)
    if y.stride() != t["x"].stride():
        return math.inf  # the output keeps the input's layout
    ref = _batch_norm_reference(inp, training, affine, axis)
    outputs = (y.movedim(1, axis), t["running_mean"], t["running_var"])
    return _max_error(zip(outputs, (ref[0], *ref[3:]), strict=True))


def _torch_batch_norm_backward(device, case, shape, axis, training, affine, dtype) -> float:
    inp, t, y = _torch_batch_norm(device, case, shape, axis, training, affine, dtype)
    y.backward(t["dy"])
    # The reference differentiates at its own float64 statistics, the kernels at theirs.
    _, mean, invstd, _, _ = _batch_norm_reference(inp, training, affine, axis)
    weight = inp["weight"] if affine else None
    want = reference.batch_norm_backward(inp["dy"], inp["x"], weight, mean, invstd, training, axis)
    got = (t["x"].grad.movedim(1, axis), t["weight"].grad, t["bias"].grad)
    if not affine:
        got, want = got[:1], want[:1]
    return _max_error(zip(got, want, strict=True))


_TORCH_BN_PASSES = (
    ("forward", _torch_batch_norm_forward),
    ("backward", _torch_batch_norm_backward),
)


def _torch_state_names(rule: str, hp: dict[str, Any]) -> set[str]:
    """The keys of ``torch.optim.<rule>``'s own ``state[p]`` after a step with ``hp``."""
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    optimizer = getattr(torch.optim, rule)([param], **hp)
    optimizer.step()
    return set(optimizer.state[param])


def _torch_steps(device, rule, hp, grad_scale, layout, params, grads) -> tuple:
    """The steps through ``pyopt.torch.optim.<rule>`` (``flatten`` for the "flat"
    layout) on Parameters on ``device``, each gradient written by a backward, through a
    ``torch.amp.GradScaler`` of scale ``grad_scale`` when not None: see
    :func:`_optimizer` for the arguments and what it returns.

    Raises:
        ValueError: a ``state[p]`` whose keys are not ``torch.optim.<rule>``'s.
    """
    import torch

    from pyopt.torch import optim

    tensors = [torch.nn.Parameter(_tensor(device, p)) for p in params]
    opt = getattr(optim, rule)(tensors, flatten=layout == "flat", **hp)
    scaler = None
    if grad_scale is not None:
        scaler = torch.amp.GradScaler(tensors[0].device.type, init_scale=grad_scale)
    for step_grads in grads:
        opt.zero_grad()
        # Σ <p, g / scale>: its gradient, times the loss scale (a power of two), is g.
        loss = sum(
            (p * _tensor(device, g / (grad_scale or 1.0))).sum()
            for p, g in zip(tensors, step_grads, strict=True)
        )
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    names = _torch_state_names(rule, hp)
    for i, p in enumerate(tensors):
        if set(opt.state[p]) != names:
            raise ValueError(
                f"state[params[{i}]] holds {sorted(opt.state[p])}, torch.optim.{rule}'s "
                f"{sorted(names)}"
            )
    states = [{k: v for k, v in opt.state[p].items() if k != "step"} for p in tensors]
    steps = [float(opt.state[p]["step"]) for p in tensors] if "step" in names else None
    return tensors, states, steps


def _dropout_torch(device: str, x: np.ndarray, dy: np.ndarray, p: float) -> tuple:
    """``(y, dx)``: one forward of ``pyopt.torch.nn.Dropout(p)`` on ``x`` on ``device``
    and the backward of ``dy`` through autograd, with torch's generator seeded (and
    restored afterwards: the check leaves torch's random state as it found it)."""
    import torch

    from pyopt.torch import nn

    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_DROPOUT_SEED)
        xt = _tensor(device, x).requires_grad_()
        y = nn.Dropout(p)(xt)
        y.backward(_tensor(device, dy))
    return y.detach(), xt.grad


def _torch_checks(device: str, sizes: Sizes) -> Iterator[Check]:
    for dtype_name, shape, axis, training, affine in _batch_norm_variants(sizes):
        dtype = np.dtype(dtype_name)
        layout = "contiguous" if axis == 1 else "channels-last"
        nchw = shape if axis == 1 else (shape[0], shape[-1], *shape[1:-1])
        for name, fn in _TORCH_BN_PASSES:
            mode = _batch_norm_mode(training, affine)
            case = f"functional.batch_norm {name} {mode} {layout} {_shape(nchw)} {dtype_name}"
            run = functools.partial(fn, device, case, shape, axis, training, affine, dtype)
            yield Check("torch", case, LIMITS[dtype], run)
    yield from _optimizer_rows(device, sizes, "torch", "optim.", _torch_steps)
    yield from _dropout_rows(
        device, sizes, "torch", "nn.Dropout ", _dropout_torch, _DROPOUT_MEASURES
    )


_BUILDERS: dict[str, Callable[[str, Sizes], Iterator[Check]]] = {
    "batchnorm": _batch_norm_checks,
    "optim": _optimizer_checks,
    "mixed": _mixed_checks,
    "clip": _clip_checks,
    "dropout": _dropout_checks,
    "init": _init_checks,
    "torch": _torch_checks,
}


def skipped(device: str, families: Sequence[str] = FAMILIES) -> dict[str, str]:
    """The families of ``families`` that cannot run on ``device``, each with why.

    Args:
        device: "cpu" or "cuda" (already resolved and usable).
        families: kernel families asked for.

    Returns:
        family -> why. Only ``torch`` has needs of its own: torch, and on CUDA torch's
        CUDA without the Numba simulator.
    """
    reason = _torch_unavailable(device) if "torch" in families else None
    return {} if reason is None else {"torch": reason}


def checks(device: str, sizes: Sizes, families: Sequence[str] = FAMILIES) -> list[Check]:
    """Every check of ``families`` on ``device`` ("cpu" or "cuda") at ``sizes``, but those
    of the :func:`skipped` families.

    Args:
        device: "cpu" or "cuda" (already resolved and usable).
        sizes: the shapes, one of :data:`SIZES`.
        families: kernel families to include, in the order of :data:`FAMILIES`.

    Returns:
        The checks, not yet run.
    """
    skip = skipped(device, families)
    runnable = [f for f in FAMILIES if f in families and f not in skip]
    return [c for family in runnable for c in _BUILDERS[family](device, sizes)]


def run_check(check: Check) -> Result:
    """Run one check; an exception becomes a failed result that names it."""
    try:
        error = float(check.run())
    except Exception as exc:
        detail = " ".join(str(exc).split())
        return Result(
            check.family, check.case, None, check.limit, f"{type(exc).__name__}: {detail}"
        )
    return Result(check.family, check.case, error, check.limit)


# --- the machine --------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _guarded(fn: Callable[[], Any]) -> Any:
    """``fn()``, or what went wrong as a string (a machine detail must not stop the run)."""
    try:
        return fn()
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _simulator() -> bool:
    # numba loads when the checks run, not when the pyopt command builds its parser.
    import numba

    return bool(numba.config.ENABLE_CUDASIM)


def _cuda_info() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(device, versions)`` details of the current CUDA device (or the simulator)."""
    from numba import cuda

    if _simulator():
        device = {"name": "Numba CUDA simulator", "simulator": True}
        return device, {"cuda_driver": None, "cuda_runtime": None, "nvidia_driver": None}

    def nvidia_driver() -> str | None:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(\S+)", text)
        return match.group(1) if match else None

    def driver_version() -> str:
        from numba.cuda.cudadrv.driver import driver

        return ".".join(map(str, driver.get_version()))

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    device = {
        "name": name,
        "compute_capability": ".".join(map(str, dev.compute_capability)),
        "multiprocessors": _guarded(lambda: dev.MULTIPROCESSOR_COUNT),
        "simulator": False,
    }
    versions = {
        "cuda_driver": _guarded(driver_version),
        "cuda_runtime": _guarded(lambda: ".".join(map(str, cuda.runtime.get_version()))),
        "nvidia_driver": _guarded(nvidia_driver),
        "cupy": _guarded(lambda: importlib.import_module("cupy").__version__)
        if importlib.util.find_spec("cupy") is not None
        else None,
    }
    return device, versions


def machine(device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(device, versions)``: what the checks ran on, and the libraries behind them.

    Args:
        device: "cpu" or "cuda".

    Returns:
        The device (``backend``; the CPU model and cores, or the GPU's name and compute
        capability) and the versions of pyopt, Python, NumPy, Numba, numba-cuda and, on
        CUDA, the driver, the runtime and CuPy.
    """
    import numba

    details: dict[str, Any] = {"backend": device}
    versions: dict[str, Any] = {
        "pyopt": pyopt.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_cuda": _distribution_version("numba-cuda"),
    }
    if device == "cuda":
        cuda_device, cuda_versions = _cuda_info()
        details.update(cuda_device)
        versions.update(cuda_versions)
    else:
        details.update(
            name=_cpu_model(), cores=os.cpu_count(), numba_threads=numba.get_num_threads()
        )
    return details, versions


# --- the command --------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}" if value else "0"


def _print_row(cells: Sequence[str], width: int) -> None:
    family, case, error, limit, status = cells
    print(f"{family:<10}  {case:<{width}}  {error:>9}  {limit:>8}  {status}", flush=True)


def add_family_option(parser: argparse.ArgumentParser, families: Sequence[str]) -> None:
    """Add ``--family NAME`` (repeatable, one of ``families``) to ``parser``: the option
    ``pyopt check`` and ``pyopt bench`` share, each with its own families.

    Args:
        parser: the parser to extend; ``args.family`` is then a list of names, or None.
        families: the names ``--family`` accepts.
    """
    parser.add_argument(
        "--family",
        action="append",
        choices=families,
        metavar="NAME",
        help=f"only this kernel family (repeatable; one of {', '.join(families)})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pyopt check``'s options to ``parser`` (the ``check`` subcommand's parser).

    Args:
        parser: the parser to extend; :func:`run` takes what it parses.
    """
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when it is usable, else the CPU ($PYOPT_DEVICE sets the default)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="small and awkward shapes only (no large ones)"
    )
    add_family_option(parser, FAMILIES)


def run(args: argparse.Namespace) -> int:
    """Run the checks ``args`` asks for, print the table, write ``args.json``.

    Args:
        args: parsed by a parser that :func:`add_arguments` set up.

    Returns:
        The exit status: 0 when every check passed (a skipped family, one line of the
        table, is not a failure), 1 when one failed, 2 when the device cannot be used
        (one line on stderr says why).

    Raises:
        KeyboardInterrupt: an interrupt (Ctrl-C, or ``timeout -s INT`` in bench/gpu.sh),
            let through once the closing line and the JSON of the checks that ran are
            written.
    """
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        print(f"pyopt check: {exc}", file=sys.stderr)
        return 2
    simulator = device == "cuda" and _simulator()
    size_name = "simulator" if simulator else "quick" if args.quick else "full"
    details, versions = machine(device)
    print(f"pyopt check on {device}: {json.dumps(details)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    if simulator:
        print("the Numba CUDA simulator is on: tiny shapes only, one dtype")
    families = args.family or FAMILIES
    skip = skipped(device, families)
    todo = checks(device, SIZES[size_name], families)
    print(
        f"{len(todo)} checks ({size_name} sizes) against float64 references; max error: "
        "relative to the output's scale (at least 1), [sd]: in standard deviations"
    )
    width = max((len(c.case) for c in todo), default=4)
    _print_row(("family", "case", "max error", "limit", "status"), width)
    for family, reason in skip.items():
        _print_row((family, f"skipped: {reason}", "-", "-", "skip"), width)
    started = time.perf_counter()
    results: list[Result] = []
    try:
        for check in todo:
            result = run_check(check)
            results.append(result)
            error, limit = _fmt(result.max_error), _fmt(result.limit)
            _print_row((result.family, result.case, error, limit, result.status), width)
            if result.error is not None:
                print(f"{'':10}  raised {result.error}", flush=True)
    finally:
        failed = [r for r in results if r.status == "fail"]
        not_run = len(todo) - len(results)
        print(
            f"{len(results) - len(failed)} passed, {len(failed)} failed"
            + (f", {not_run} not run (interrupted)" if not_run else "")
            + (f", {' '.join(skip)} skipped" if skip else "")
            + f" in {time.perf_counter() - started:.1f} s"
        )
        if args.json:
            document = {
                "device": details,
                "versions": versions,
                "checks": [r.row() for r in results],
                "skipped": [{"family": f, "reason": reason} for f, reason in skip.items()],
            }
            Path(args.json).write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pyopt._check [options]``: :func:`run` on the parsed command line.

    Args:
        argv: the options (None: ``sys.argv[1:]``).

    Returns:
        :func:`run`'s exit status.
    """
    parser = argparse.ArgumentParser(prog="pyopt check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
