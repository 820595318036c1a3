"""Benchmark cases: what ``pyopt bench`` times, one ``Case`` per (op, shape, backend).

Each case has the providers of ``PROVIDERS`` that apply to it: the first three in every
case (pyopt and torch alone in the ``torch`` family, which has no array reference), the
others only in the full run (``--quick`` keeps to the first three). Optimizer
steps are also timed with global-norm clipping (shape ``<model> +clip``): pyopt's
``step(grads, max_grad_norm=1.0)`` (the norm, then the update with the clip coefficient
fused in) against the reference's and torch's ``clip_grad_norm_`` followed by the step;
their ``min_bytes`` add one read of the grads.

The ``torch`` family times :mod:`pyopt.torch.optim` inside a torch training loop: a step
over ResNet-50's params created as separate ``torch.nn.Parameter`` tensors (pyopt's
optimizer moves them into flat buffers at construction), against ``torch.optim`` in the
rule's mode and, in the full run, its other mode; pyopt's first step is checked against
torch's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from pyopt import _reference as reference
from pyopt._check import OPTIMIZER_CASES

from .shapes import GPT2_SMALL_PARAM_SHAPES, RESNET50_BN_SHAPES, RESNET50_PARAM_SHAPES, n_params


# --- protocol (shared with bench/suite.py) ---
class Unavailable(Exception):
    """A provider cannot run on this machine (library missing, no device); carries the reason."""


@dataclass
class Case:
    """One benchmarked op on one shape and backend, with a setup per provider.

    ``providers`` maps a provider name ("pyopt", "numpy", "torch", ...) to
    ``setup(rotate)``, which allocates ``rotate`` independent input sets and returns a
    zero-argument ``run()`` doing one call on the next set (cycling), or raises
    ``Unavailable``. ``min_bytes`` is the memory one call must move at the least.
    ``baseline_order`` names the providers every row gets a speedup over.
    """

    family: str
    op: str
    shape: str
    dtype: str
    backend: str
    min_bytes: int
    providers: dict[str, Callable[[int], Callable[[], object]]]
    baseline_order: tuple[str, ...] = ("numpy", "torch")


# --- cases ---
PROVIDERS = {
    "pyopt": "the public call: validation, dispatch and output allocation included",
    "numpy": (
        "the same math as vectorized NumPy (cupy: CuPy on CUDA): pyopt._reference's batch "
        "norm, optimizer steps and clipping in the case's dtype; every pyopt provider is "
        "checked once before it is timed (against those references in float64)"
    ),
    "torch": (
        "what a torch training loop calls: fused=True optimizers where torch has them for "
        "the device (else foreach=True), foreach=True clipping, the autograd-recording "
        "batch-norm forward, F.dropout"
    ),
    "pyopt-kernel": (
        "the kernel launchers alone, replaying the calls the public layer made into the "
        "arrays it allocated (batch norm, optimizer steps): pyopt's overhead is the gap"
    ),
    "torch-nograd": "the batch-norm forward under torch.no_grad (a baseline column)",
    "torch-single": "torch's CPU default for the optimizers: the single-tensor loop",
    "torch-foreach": (
        "torch.optim with foreach=True: the torch family's other column for fused rules"
    ),
    "torch-native": "torch.native_dropout, which also returns the bool mask autograd keeps",
    "stream-floor": (
        "Adam on the flat buffer (CPU): a Numba loop with Adam's 28 B/param traffic and no "
        "arithmetic to speak of, the memory floor of the step"
    ),
}
FAMILIES = ("batchnorm", "optim", "mixed", "torch", "dropout", "clip", "init")
# The kernel families (pyopt.kernels.<backend>.<name>) each benchmark family calls.
KERNELS = {
    "batchnorm": ("batchnorm",),
    "optim": ("optim",),
    "mixed": ("optim",),
    "torch": ("optim",),
    "dropout": ("random",),
    "clip": ("clip",),
    "init": ("random",),
}
DTYPES = ("float32", "float64")
FLAT = 16 * 2**20  # one 64 MiB float32 buffer: far beyond any last-level cache
BN_BATCH = 32
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
BN_MLP_SHAPES = ((256, 512), (4096, 1024))
# ResNet-50 BN inputs of --quick: the network's commonest (stage 3, 11 of its 53 layers)
# and stage 1's (6 layers, 4x the elements, few channels).
BN_QUICK = ((256, 14, 14), (64, 56, 56))
# The benchmarked optimizer configurations, by their names in pyopt check's
# OPTIMIZER_CASES (the op of each: ``step_op(name)``, e.g. ``sgd_momentum_step``); the
# bench times their hyperparameters, not their loss scale.
OPTIMIZERS = (
    "Adam",
    "AdamW",
    "AMSGrad",
    "SGD-momentum",
    "SGD-nesterov",
    "Adagrad",
    "RMSprop",
    "RMSprop-centered-momentum",
    "Adadelta",
)
# The rules torch.optim fuses on the CPU (fused=True); it runs the others foreach=True.
TORCH_FUSED = ("Adam", "AdamW", "SGD", "Adagrad")


class Rule(NamedTuple):
    """A benchmarked optimizer configuration (see :data:`RULES`)."""

    cls: str  # the pyopt.optim / torch.optim class
    hp: dict[str, Any]  # its constructor's hyperparameters
    torch_mode: str  # torch's mode for it: "fused" or "foreach"
    bytes_per_param: int  # float32 bytes a step moves at the least


def _bytes_per_param(cls: str, hp: dict[str, Any]) -> int:
    """The memory traffic of one float32 param's step: its rule spec's count
    (``RuleSpec.bytes_per_element``) under the flags these hyperparameters set, at a step
    after the first (SGD's first step only writes the momentum buffer)."""
    import pyopt.optim

    opt = getattr(pyopt.optim, cls)([np.zeros(1, np.float32)], **hp)
    part = opt._part(opt.param_groups[0], [], [], {}, np.zeros(0, np.int64), None)
    flags = dict(zip(part.spec.flags, part.row(2)[1], strict=True))
    return part.spec.bytes_per_element(4, **flags)


def _rule(name: str) -> Rule:
    """The configuration ``name`` of OPTIMIZER_CASES, with torch's mode and its traffic."""
    cls, hp, _ = OPTIMIZER_CASES[name]
    return Rule(cls, hp, "fused" if cls in TORCH_FUSED else "foreach", _bytes_per_param(cls, hp))


# name -> the rule, its hyperparameters, torch's mode and the float32 bytes per param: one
# read of the param, grad and each state tensor the rule uses, one write of the param and
# the state.
RULES: dict[str, Rule] = {name: _rule(name) for name in OPTIMIZERS}
OPTIM_QUICK = ("Adam",)
# A rule's torch mode in RULES -> the other mode the torch family's full run times beside it
# (torch has no fused CPU kernel for the foreach rules).
OTHER_TORCH_MODE = {"fused": "foreach", "foreach": "single"}
MAX_GRAD_NORM = 1.0  # the +clip cases' max norm: far below the grads' (~0.01·√n), always scales
DROPOUT_P = (0.1, 0.5)
DROPOUT_2D = (4096, 1024)  # the full run's second dropout shape: 16 MiB, in the L3 here
GRAD_SCALE = 1e-2  # grads are GRAD_SCALE x N(0, 1)
CLIP_SHRINK = 0.99  # each clip_grad_norm_ call's max_norm over the call before: always scales
CLIP_VALUE = 1e-2  # clip_grad_value_'s bound: a third of the grads lie outside
SEED = 1234
SIGMAS = 6  # random draws are checked to this many standard errors of their statistic


def step_op(rule: str) -> str:
    """The op name of optimizer rule ``rule`` (a key of ``RULES``), e.g. ``sgd_momentum_step``."""
    return rule.lower().replace("-", "_") + "_step"


def cases(
    backend: str, quick: bool, families: set[str] | None = None, dtype: str = "float32"
) -> list[Case]:
    """The benchmark cases of ``backend`` ("cpu" or "cuda") for ``families`` (None: all).

    ``quick`` keeps a subset of the shapes, Adam alone among the optimizers, and the three
    main providers (pyopt, the array library, torch); the full run adds every rule, the
    clipped optimizer steps, dropout's backward and p=0.5, clip_grad_value_, uniform_,
    and the detail providers of the module docstring.

    Raises:
        ValueError: an unknown backend, family or dtype.
    """
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu' or 'cuda', got {backend!r}")
    unknown = sorted(set(families or ()) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    builders = {
        "batchnorm": _batchnorm_cases,
        "optim": _optim_cases,
        "mixed": _mixed_cases,
        "torch": _torch_optim_cases,
        "dropout": _dropout_cases,
        "clip": _clip_cases,
        "init": _init_cases,
    }
    return [
        case
        for family in FAMILIES
        if families is None or family in families
        for case in builders[family](backend, quick, np.dtype(dtype))
    ]


def _case(
    family: str,
    op: str,
    label: str,
    backend: str,
    dtype: np.dtype,
    min_bytes: int,
    setups: tuple[Callable[..., Callable[[], object]], ...],
    extra: dict[str, Callable[..., Callable[[], object]]] | None = None,
    extra_baselines: tuple[str, ...] = (),
    **args: object,
) -> Case:
    """A case labelled ``label`` (its shape) with the three providers ``setups`` = (pyopt,
    array library, torch) and the ``extra`` ones, each called as
    ``setup(rotate, backend=backend, dtype=dtype, **args)``."""
    array_lib = "numpy" if backend == "cpu" else "cupy"
    named = dict(zip(("pyopt", array_lib, "torch"), setups, strict=True)) | (extra or {})
    baselines = (array_lib, "torch", *extra_baselines)
    providers = _bound(named, backend=backend, dtype=dtype, **args)
    return Case(family, op, label, dtype.name, backend, min_bytes, providers, baselines)


def _bound(named: dict[str, Callable[..., Callable[[], object]]], **args: object) -> dict:
    """The providers of a case: each setup of ``named`` called as ``setup(rotate, **args)``."""
    return {name: functools.partial(setup, **args) for name, setup in named.items()}


def _label(shape: tuple[int, ...]) -> str:
    return "flat-16M" if shape == (FLAT,) else "x".join(map(str, shape))


# --- arrays, rotation and checks ---
def _array_module(backend: str) -> Any:
    """NumPy on the CPU, CuPy on CUDA: the arrays pyopt and the array baseline run on."""
    if backend == "cpu":
        return np
    try:
        import cupy
    except ImportError as exc:
        raise Unavailable("CuPy is not installed (the CUDA cases run on CuPy arrays)") from exc
    return cupy


def _torch(backend: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch is not installed") from exc
    if backend == "cuda" and not torch.cuda.is_available():
        raise Unavailable(f"torch {torch.__version__} cannot use CUDA here")
    return torch


def _torch_device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def _tensor(torch: Any, host: np.ndarray, backend: str) -> Any:
    """A torch copy of ``host`` on ``backend``'s device."""
    tensor = torch.from_numpy(host)
    return tensor.clone() if backend == "cpu" else tensor.to("cuda")


def _torch_empty(torch: Any, shape: tuple[int, ...], dtype: np.dtype, backend: str) -> Any:
    return torch.empty(shape, dtype=getattr(torch, dtype.name), device=_torch_device(backend))


def _host(arr: Any) -> np.ndarray:
    return arr if isinstance(arr, np.ndarray) else arr.get()


@functools.lru_cache(maxsize=4)
def _normal(shape: tuple[int, ...], seed: int, dtype: np.dtype, scale: float = 1.0) -> np.ndarray:
    """``scale`` x N(0, 1) host data, generated once for all providers of a case (they
    copy it into their own sets and never write it)."""
    data = np.random.default_rng(seed).standard_normal(shape, dtype=dtype)
    if scale != 1.0:
        data *= dtype.type(scale)
    return data


def _rotating(
    make: Callable[[], Callable[[], object]],
    rotate: int,
    check: Callable[[object], None] | None = None,
) -> Callable[[], object]:
    """``run()``, one call on each of ``rotate`` input sets in turn (each set's call made
    by ``make()``), after an untimed first call whose result ``check`` verifies."""
    calls = [make() for _ in range(max(1, rotate))]
    first = calls[0]()
    if check is not None:
        check(first)
    following = itertools.cycle(calls).__next__
    return lambda: following()()


def _check(what: str, ours: Any, expected: Any, tol: float, against: str = "the reference") -> None:
    """Raise ``AssertionError`` unless ``ours`` is within ``tol`` of ``expected`` (what
    ``against`` names), relative to the larger of 1 and its largest magnitude."""
    ours, expected = _host(ours), _host(expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(ours - expected), initial=0.0)) / scale
    if not err <= tol:
        raise AssertionError(
            f"{what}: pyopt differs from {against} by {err:.1e} (relative), more than {tol:.0e}"
        )


@contextlib.contextmanager
def _recording(backend: str, family: str, launcher: str) -> Iterator[list[tuple]]:
    """Record ``(function, args, kwargs)`` of every call of the launcher
    ``pyopt.kernels.<backend>.<family>.<launcher>`` made meanwhile (the public layer looks
    it up on its module at each call), calling it through."""
    from pyopt._backend import kernels_for

    module = kernels_for(backend, family)
    original = getattr(module, launcher)
    launches: list[tuple] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        launches.append((original, args, kwargs))
        return original(*args, **kwargs)

    setattr(module, launcher, record)
    try:
        yield launches
    finally:
        setattr(module, launcher, original)


def _kernel_only(
    make: Callable[[], Callable[[], object]], backend: str, family: str, launcher: str
) -> Callable[[], Callable[[], object]]:
    """``make`` of a ``pyopt-kernel`` provider from that of its ``pyopt`` one: the public
    call is made twice (the first compiles and allocates any state), the launcher calls of
    the second are recorded, and each run replays them on the same arrays, returning what
    the second call returned (the arrays they write)."""

    def make_replay() -> Callable[[], object]:
        call = make()
        call()
        with _recording(backend, family, launcher) as launches:
            result = call()
        if not launches:
            raise RuntimeError(f"the public call made no {family}.{launcher} launch to replay")

        def replay() -> object:
            for launch, args, kwargs in launches:
                launch(*args, **kwargs)
            return result

        # The launches' segment tables hold raw addresses of arrays that only ``call``
        # (its optimizer's state, its grads) keeps alive.
        replay.keeps_alive = call
        return replay

    return make_replay


# --- batch norm ---
def _batchnorm_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    chw = BN_QUICK if quick else tuple(dict.fromkeys(RESNET50_BN_SHAPES.values()))
    inputs: list[tuple[tuple[int, ...], int, str]] = []
    for c, h, w in chw:
        for shape, axis, layout in (((c, h, w), 1, "NCHW"), ((h, w, c), -1, "NHWC")):
            full = (BN_BATCH, *shape)
            inputs.append((full, axis, f"{_label(full)} {layout}"))
    for shape in BN_MLP_SHAPES[-1:] if quick else BN_MLP_SHAPES:
        inputs.append((shape, 1, _label(shape)))
    forward_extra = {
        "pyopt-kernel": functools.partial(_bn_forward_pyopt, kernel_only=True),
        "torch-nograd": functools.partial(_bn_forward_torch, grad=False),
    }
    backward_extra = {"pyopt-kernel": functools.partial(_bn_backward_pyopt, kernel_only=True)}
    out = []
    for shape, axis, label in inputs:
        nbytes = dtype.itemsize * math.prod(shape)
        # Forward reads x twice (statistics, normalization) and writes y; backward reads
        # x and dy twice (the two sums, then dx) and writes dx.
        out.append(
            _case(
                "batchnorm",
                "batch_norm_forward",
                label,
                backend,
                dtype,
                3 * nbytes,
                (_bn_forward_pyopt, _bn_forward_array, _bn_forward_torch),
                None if quick else forward_extra,
                () if quick else ("torch-nograd",),
                shape=shape,
                axis=axis,
            )
        )
        out.append(
            _case(
                "batchnorm",
                "batch_norm_backward",
                label,
                backend,
                dtype,
                5 * nbytes,
                (_bn_backward_pyopt, _bn_backward_array, _bn_backward_torch),
                None if quick else backward_extra,
                shape=shape,
                axis=axis,
            )
        )
    return out


def _bn_inputs(shape: tuple[int, ...], axis: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """Host ``x``, ``dy`` (N(0, 1)), ``weight`` and ``bias`` of a batch-norm case."""
    channels = shape[axis]
    rng = np.random.default_rng(SEED)
    weight = (1.0 + 0.1 * rng.standard_normal(channels)).astype(dtype)
    bias = (0.1 * rng.standard_normal(channels)).astype(dtype)
    return _normal(shape, 0, dtype), _normal(shape, 1, dtype), weight, bias


def _bn_checked(
    rotate: int,
    backend: str,
    launcher: str,
    what: str,
    make: Callable[[], Callable[[], object]],
    expected: np.ndarray,
    kernel_only: bool,
) -> Callable:
    """A pyopt batch-norm provider: ``make()`` makes one call of the public op of the
    launcher ``launcher``, whose first output (``what``) the first call checks against
    ``expected`` (the float64 reference's); with ``kernel_only``, the launcher alone (see
    :func:`_kernel_only`)."""
    if kernel_only:
        make = _kernel_only(make, backend, "batchnorm", launcher)

    def check(result):
        _check(f"{launcher} {what}", result[0], expected, 1e-4)

    return _rotating(make, rotate, check)


def _bn_forward_pyopt(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int, kernel_only=False
) -> Callable:
    from pyopt.functional import batch_norm

    xp = _array_module(backend)
    x, _, weight, bias = _bn_inputs(shape, axis, dtype)
    c = shape[axis]

    def make():
        return functools.partial(
            batch_norm,
            xp.array(x),
            weight=xp.array(weight),
            bias=xp.array(bias),
            running_mean=xp.zeros(c, dtype),
            running_var=xp.ones(c, dtype),
            momentum=BN_MOMENTUM,
            eps=BN_EPS,
            axis=axis,
        )

    y = reference.batch_norm(x, weight, bias, eps=BN_EPS, axis=axis)[0]
    return _bn_checked(rotate, backend, "batch_norm_forward", "y", make, y, kernel_only)


def _bn_forward_array(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int
) -> Callable:
    xp = _array_module(backend)
    x, _, weight, bias = _bn_inputs(shape, axis, dtype)
    c = shape[axis]

    def make():
        # A training forward with running statistics, in the input dtype, on xp.
        arrays = [xp.array(a) for a in (x, weight, bias, np.zeros(c, dtype), np.ones(c, dtype))]
        where = {"axis": axis, "xp": xp, "dtype": dtype}
        return functools.partial(reference.batch_norm, *arrays, True, BN_MOMENTUM, BN_EPS, **where)

    return _rotating(make, rotate)


def _bn_forward_torch(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int, grad: bool = True
) -> Callable:
    torch = _torch(backend)
    inputs = _bn_inputs(shape, axis, dtype)

    def make():
        x, weight, bias = (_tensor(torch, inputs[i], backend) for i in (0, 2, 3))
        rm, rv = torch.zeros_like(weight), torch.ones_like(weight)
        if grad:  # a training forward: autograd records it (and keeps what backward needs)
            for t in (x, weight, bias):
                t.requires_grad_()
        # (N, H, W, C) memory seen as an NCHW tensor in torch's channels_last format.
        call = functools.partial(
            torch.nn.functional.batch_norm,
            x.movedim(axis, 1),
            rm,
            rv,
            weight,
            bias,
            training=True,
            momentum=BN_MOMENTUM,
            eps=BN_EPS,
        )
        if grad:
            return call

        def no_grad():
            with torch.no_grad():
                return call()

        return no_grad

    return _rotating(make, rotate)


def _bn_backward_pyopt(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int, kernel_only=False
) -> Callable:
    from pyopt.functional import batch_norm, batch_norm_backward

    xp = _array_module(backend)
    inputs = _bn_inputs(shape, axis, dtype)

    def make():
        x, dy, weight, bias = (xp.array(a) for a in inputs)
        _, mean, invstd = batch_norm(x, weight=weight, bias=bias, eps=BN_EPS, axis=axis)
        return functools.partial(
            batch_norm_backward, dy, x, weight=weight, mean=mean, invstd=invstd, axis=axis
        )

    x, dy, weight, bias = inputs
    _, mean, invstd, _, _ = reference.batch_norm(x, weight, bias, eps=BN_EPS, axis=axis)
    dx = reference.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis)[0]
    return _bn_checked(rotate, backend, "batch_norm_backward", "dx", make, dx, kernel_only)


def _bn_backward_array(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int
) -> Callable:
    xp = _array_module(backend)
    where = {"axis": axis, "xp": xp, "dtype": dtype}  # in the input dtype, on xp
    inputs = _bn_inputs(shape, axis, dtype)

    def make():
        x, dy, weight, bias = (xp.array(a) for a in inputs)
        _, mean, invstd, _, _ = reference.batch_norm(x, weight, bias, eps=BN_EPS, **where)
        return functools.partial(
            reference.batch_norm_backward, dy, x, weight, mean, invstd, **where
        )

    return _rotating(make, rotate)


def _bn_backward_torch(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, axis: int
) -> Callable:
    torch = _torch(backend)
    inputs = _bn_inputs(shape, axis, dtype)

    def make():
        x, dy = (_tensor(torch, a, backend).movedim(axis, 1) for a in inputs[:2])
        weight, bias = (_tensor(torch, a, backend).requires_grad_() for a in inputs[2:])
        x = x.detach().requires_grad_()
        y = torch.nn.functional.batch_norm(
            x, None, None, weight, bias, training=True, momentum=BN_MOMENTUM, eps=BN_EPS
        )
        return functools.partial(torch.autograd.grad, y, (x, weight, bias), dy, retain_graph=True)

    return _rotating(make, rotate)


# --- optimizers ---
def _optim_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    models = {"flat-16M": {"flat": (FLAT,)}, "resnet50": RESNET50_PARAM_SHAPES}
    if backend == "cuda":
        models["gpt2-small"] = GPT2_SMALL_PARAM_SHAPES
    # The full run also steps ResNet-50's params as separate arrays (pyopt's segment
    # tables: one kernel call per dtype, like a ParamBuffer's).
    separate = {} if quick else {"resnet50 arrays": RESNET50_PARAM_SHAPES}
    setups = (_optim_pyopt, _optim_array, _optim_torch)
    extra = {
        "pyopt-kernel": functools.partial(_optim_pyopt, kernel_only=True),
        "torch-single": functools.partial(_optim_torch, mode="single"),
    }
    out = []
    for rule in OPTIM_QUICK if quick else RULES:
        per_param = RULES[rule][3] * dtype.itemsize // 4
        for label, shapes in {**models, **separate}.items():
            n = n_params(shapes)
            detail = None
            if not quick:
                floor = rule == "Adam" and label == "flat-16M" and backend == "cpu"
                detail = extra | ({"stream-floor": _adam_stream_floor} if floor else {})
            setting = OptimSetting(rule, shapes, separate=label in separate)
            out.append(
                _case("optim", step_op(rule), label, backend, dtype, per_param * n, setups,
                      detail, setting=setting)
            )  # fmt: skip
    if not quick:  # the clipped steps after all the plain ones: one table block of them
        for rule in RULES:
            per_param = (RULES[rule][3] + 4) * dtype.itemsize // 4  # + the norm's read
            for label, shapes in models.items():
                setting = OptimSetting(rule, shapes, MAX_GRAD_NORM)
                min_bytes = per_param * n_params(shapes)
                out.append(
                    _case("optim", step_op(rule), f"{label} +clip", backend, dtype, min_bytes,
                          setups, setting=setting)
                )  # fmt: skip
    return out


# --- mixed precision: 16-bit params, float32 masters, bfloat16 state ---

# name -> (param dtype, pyopt.optim options): the modes the mixed family times. "bf16"
# keeps its state in bfloat16 like torch's fused=True on bfloat16 params (the torch
# column), "master" adds float32 master weights (Apex's and Transformer Engine's layout).
MIXED_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "bf16 master": ("bfloat16", {"master_weights": True}),
    "bf16 master bf16-state": ("bfloat16", {"master_weights": True, "state_dtype": "bfloat16"}),
    "bf16": ("bfloat16", {"state_dtype": "bfloat16"}),
    "bf16 stochastic": ("bfloat16", {"state_dtype": "bfloat16", "stochastic_rounding": True}),
    "f16 master": ("float16", {"master_weights": True}),
}
MIXED_RULES = ("Adam", "AdamW", "SGD-momentum")
MIXED_QUICK = {"Adam": ("bf16 master", "bf16")}


def _mixed_bytes(rule: str, mode: str) -> int:
    """Bytes a step of ``rule`` in ``mode`` moves per param at the least (the kernel
    variant's ``Storage.bytes_per_element``)."""
    import pyopt.optim
    from pyopt.kernels import specs

    cls, hp, _, _ = RULES[rule]
    dtype, options = MIXED_MODES[mode]
    opt = getattr(pyopt.optim, cls)([np.zeros(1, np.float32)], **hp)
    part = opt._part(opt.param_groups[0], [], [], {}, np.zeros(0, np.int64), None)
    flags = dict(zip(part.spec.flags, part.row(2)[1], strict=True))
    storage = specs.Storage(
        dtype,
        options.get("state_dtype"),
        options.get("master_weights", False),
        options.get("stochastic_rounding", False),
    )
    return storage.bytes_per_element(part.spec, 4, **flags)


def _mixed_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    """Optimizer steps over the flat 16M params in 16 bits: pyopt in each of
    ``MIXED_MODES`` against torch's fused step on the same 16-bit params (its state in
    their dtype). The run's ``dtype`` does not apply: the mode names the dtypes."""
    del dtype
    out = []
    for rule in MIXED_QUICK if quick else MIXED_RULES:
        for mode in MIXED_QUICK[rule] if quick else MIXED_MODES:
            param_dtype = np.dtype(MIXED_MODES[mode][0])
            setting = MixedSetting(rule, mode)
            providers = _bound(
                {"pyopt": _mixed_pyopt, "torch": _mixed_torch},
                backend=backend,
                dtype=param_dtype,
                setting=setting,
            )
            min_bytes = _mixed_bytes(rule, mode) * FLAT
            out.append(
                Case("mixed", step_op(rule), f"flat-16M {mode}", param_dtype.name, backend,
                     min_bytes, providers, ("torch",))
            )  # fmt: skip
    return out


class MixedSetting(NamedTuple):
    rule: str  # a key of RULES
    mode: str  # a key of MIXED_MODES


def _mixed_inputs(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat 16-bit params and grads of FLAT elements (those of the float32 cases,
    rounded)."""
    p, g = _optim_inputs({"flat": (FLAT,)}, np.dtype(np.float32))
    return p.astype(dtype), g.astype(dtype)


def _mixed_pyopt(rotate: int, *, backend: str, dtype: np.dtype, setting: MixedSetting) -> Callable:
    import pyopt.optim

    xp = _array_module(backend)
    rule, mode = setting
    cls, hp, _, _ = RULES[rule]
    options = MIXED_MODES[mode][1]
    p_host, g_host = _mixed_inputs(dtype)

    def make():
        params, grads = [xp.array(p_host)], [xp.array(g_host)]
        opt = getattr(pyopt.optim, cls)(params, **hp, **options)

        def step():
            opt.step(grads)
            return params[0], opt

        return step

    def check(result):
        params, opt = result
        expected = reference.OPTIMIZERS[cls](
            p_host.astype(np.float64), g_host.astype(np.float64), {"step": 0}, **hp
        )
        # One step: the params are the float32 step rounded once (2^-8 for bfloat16).
        _check(f"{rule} {mode} step", params.astype(np.float64), expected, 2.0**-7)
        if options.get("master_weights"):
            master = opt.state_dict()["state"][0]["master_param"]
            _check(f"{rule} {mode} master", master, expected, 1e-5)

    return _rotating(make, rotate, check)


def _mixed_torch(rotate: int, *, backend: str, dtype: np.dtype, setting: MixedSetting) -> Callable:
    torch = _torch(backend)
    p_host, g_host = _mixed_inputs(dtype)
    bits = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype.name]

    def tensor(host):
        return torch.from_numpy(host.view(np.uint16)).view(bits).to(_torch_device(backend))

    def make():
        param = torch.nn.Parameter(tensor(p_host))
        param.grad = tensor(g_host)
        return _torch_optimizer(torch, setting.rule, [param]).step

    return _rotating(make, rotate)


class OptimSetting(NamedTuple):
    """What an optimizer case times: a step of ``RULES[rule]`` over the params of a model
    (``shapes``), the grads clipped by their global norm to ``max_grad_norm`` first
    unless it is None; pyopt's params in one ``ParamBuffer``, or with ``separate`` one
    array each (as a model's layers allocate them; the baselines are the same)."""

    rule: str
    shapes: dict[str, tuple[int, ...]]
    max_grad_norm: float | None = None
    separate: bool = False  # pyopt steps separately allocated arrays, not a ParamBuffer


def _optim_inputs(
    shapes: dict[str, tuple[int, ...]], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Flat host params (N(0, 1)) and grads (``GRAD_SCALE`` x N(0, 1)) of a model."""
    n = n_params(shapes)
    return _normal((n,), 2, dtype), _normal((n,), 3, dtype, GRAD_SCALE)


def _optim_pyopt(
    rotate: int, *, backend: str, dtype: np.dtype, setting: OptimSetting, kernel_only=False
) -> Callable:
    import pyopt.optim

    xp = _array_module(backend)
    rule, shapes, max_grad_norm, separate = setting
    cls, hp, _, _ = RULES[rule]
    p_host, g_host = _optim_inputs(shapes, dtype)
    clip = {} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}
    # The reference clips the same grads at every step: pyopt's clipping leaves them as
    # they were.
    mult = 1.0
    if max_grad_norm is not None:
        mult = reference.clip_coefficient(reference.total_norm([g_host]), max_grad_norm)

    def make():
        if separate:
            params = _separate(xp, p_host, shapes)
            grads = _separate(xp, g_host, shapes)
            written = params
        else:
            buf = pyopt.optim.ParamBuffer(shapes, dtype, device=backend)
            buf.data[:] = xp.asarray(p_host)
            buf.grad[:] = xp.asarray(g_host)
            params, grads, written = buf.params, buf.grads, buf.data
        opt = getattr(pyopt.optim, cls)(params, **hp)

        def step():
            opt.step(grads, **clip)
            return written  # the params' flat buffer, or their list

        return step

    # Kernel-only: the public steps 1 and 2, then the replay of step 2's launch.
    steps = (1, 2, 2) if kernel_only else (1,)

    def check(written):
        data = xp.concatenate([p.reshape(-1) for p in written]) if separate else written
        expected, state = p_host.astype(np.float64), {}  # the reference steps it in place
        for t in steps:
            state["step"] = t - 1  # the step count before step t (the replay repeats step 2)
            expected = reference.OPTIMIZERS[cls](expected, g_host, state, grad_mult=mult, **hp)
        _check(f"{rule} step{' +clip' if clip else ''}", data, expected, 1e-5)

    if kernel_only:
        make = _kernel_only(make, backend, "optim", "update")  # every rule's one launcher
    return _rotating(make, rotate, check)


def _model_parts(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
    """Each model param's part of the flat host array ``flat``, as a view of its shape."""
    parts, start = [], 0
    for shape in shapes.values():
        size = math.prod(shape)
        parts.append(flat[start : start + size].reshape(shape))
        start += size
    return parts


def _separate(xp: Any, flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> list[Any]:
    """A copy of each model param's part of the host array ``flat``, as its own array."""
    return [xp.array(part) for part in _model_parts(flat, shapes)]


def _optim_array(rotate: int, *, backend: str, dtype: np.dtype, setting: OptimSetting) -> Callable:
    xp = _array_module(backend)
    rule, shapes, max_grad_norm, _ = setting
    cls, hp, _, _ = RULES[rule]
    update = reference.OPTIMIZERS[cls]
    p_host, g_host = _optim_inputs(shapes, dtype)

    def make():
        p, g, state = xp.array(p_host), xp.array(g_host), {}

        def step():
            nonlocal p
            if max_grad_norm is not None:
                clip_grad_norm_ref(xp, g, max_grad_norm)
            p = update(p, g, state, xp=xp, dtype=dtype, **hp)
            return p

        return step

    return _rotating(make, rotate)


def _torch_optimizer(torch: Any, rule: str, params: list[Any], mode: str | None = None) -> Any:
    """``torch.optim.<cls>`` over ``params`` in ``mode`` ("fused", "foreach" or "single";
    None: the rule's mode in ``RULES``); "fused" falls back to "foreach" where torch has no
    fused kernel for the params' device and dtype (a one-element trial step says)."""
    cls, hp, rule_mode, _ = RULES[rule]
    mode = mode or rule_mode
    make = getattr(torch.optim, cls)
    if mode == "single":
        return make(params, **hp, foreach=False)
    if mode == "fused":
        trial = torch.nn.Parameter(torch.zeros(1, dtype=params[0].dtype, device=params[0].device))
        trial.grad = torch.zeros_like(trial)
        try:
            make([trial], **hp, fused=True).step()
        except RuntimeError:
            mode = "foreach"
    return make(params, **hp, **{mode: True})


def _torch_params(
    torch: Any,
    shapes: dict[str, tuple[int, ...]],
    grads: np.ndarray,
    backend: str,
    values: np.ndarray | None = None,
) -> list[Any]:
    """One ``Parameter`` per shape, separate tensors as in a torch model, holding its part
    of the flat host ``values`` (uninitialized for None), with ``.grad`` from ``grads``."""
    params = []
    value_parts = [None] * len(shapes) if values is None else _model_parts(values, shapes)
    for shape, value, grad in zip(
        shapes.values(), value_parts, _model_parts(grads, shapes), strict=True
    ):
        if value is None:
            data = _torch_empty(torch, shape, grads.dtype, backend)
        else:
            data = _tensor(torch, value, backend)
        param = torch.nn.Parameter(data)
        param.grad = _tensor(torch, grad, backend)
        params.append(param)
    return params


def _optim_torch(
    rotate: int, *, backend: str, dtype: np.dtype, setting: OptimSetting, mode: str | None = None
) -> Callable:
    torch = _torch(backend)
    rule, shapes, max_grad_norm, _ = setting
    p_host, g_host = _optim_inputs(shapes, dtype)

    def make():
        params = _torch_params(torch, shapes, g_host, backend, p_host)
        opt = _torch_optimizer(torch, rule, params, mode)
        if max_grad_norm is None:
            return opt.step

        def step():
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
            opt.step()

        return step

    return _rotating(make, rotate)


def _torch_optim_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    """Each rule's step over ResNet-50's params as separate ``torch.nn.Parameter`` tensors:
    pyopt.torch.optim against torch.optim in the rule's mode (RULES) and, in the full run,
    in its other mode (``OTHER_TORCH_MODE``)."""
    shapes = RESNET50_PARAM_SHAPES
    out = []
    for rule in OPTIM_QUICK if quick else RULES:
        named = {"pyopt": _torch_optim_pyopt, "torch": _optim_torch}
        if not quick:
            other = OTHER_TORCH_MODE[RULES[rule][2]]
            named[f"torch-{other}"] = functools.partial(_optim_torch, mode=other)
        min_bytes = RULES[rule][3] * dtype.itemsize // 4 * n_params(shapes)
        baselines = tuple(name for name in named if name != "pyopt")
        providers = _bound(named, backend=backend, dtype=dtype, setting=OptimSetting(rule, shapes))
        out.append(
            Case("torch", step_op(rule), "resnet50 nn.Parameter", dtype.name, backend,
                 min_bytes, providers, baselines)
        )  # fmt: skip
    return out


def _torch_optim_pyopt(
    rotate: int, *, backend: str, dtype: np.dtype, setting: OptimSetting
) -> Callable:
    torch = _torch(backend)
    import pyopt.torch.optim

    rule, shapes, _, _ = setting
    cls, hp, _, _ = RULES[rule]
    p_host, g_host = _optim_inputs(shapes, dtype)

    def make():
        params = _torch_params(torch, shapes, g_host, backend, p_host)
        grads = [p.grad for p in params]
        opt = getattr(pyopt.torch.optim, cls)(params, **hp)
        # A training loop's zero_grad points every p.grad at the flat grad buffer, and its
        # backward accumulates into those views: the grads the step reads are flat.
        opt.zero_grad(set_to_none=False)
        for p, grad in zip(params, grads, strict=True):
            p.grad.copy_(grad)

        def step():
            opt.step()
            return params

        return step

    def check(params):
        theirs = _torch_params(torch, shapes, g_host, backend, p_host)
        _torch_optimizer(torch, rule, theirs).step()

        def flat(tensors):
            return torch.cat([t.detach().reshape(-1) for t in tensors]).cpu().numpy()

        _check(f"{rule} step", flat(params), flat(theirs), 1e-5, "torch.optim's")

    return _rotating(make, rotate, check)


@njit(parallel=True)  # not cached: see bench/_timing.py's probe kernels
def _adam_traffic(param, grad, exp_avg, exp_avg_sq):
    """Adam's memory traffic with one add per array: read p, g, m, v; write p, m, v."""
    for i in prange(param.size):
        g = grad[i]
        param[i] += g
        exp_avg[i] += g
        exp_avg_sq[i] += g


def _adam_stream_floor(
    rotate: int, *, backend: str, dtype: np.dtype, setting: OptimSetting
) -> Callable:
    if backend != "cpu":
        raise Unavailable("the stream floor is a Numba CPU loop")
    p_host, g_host = _optim_inputs(setting.shapes, dtype)

    def make():
        arrays = (p_host.copy(), g_host.copy(), np.zeros_like(p_host), np.zeros_like(p_host))
        return functools.partial(_adam_traffic, *arrays)

    return _rotating(make, rotate)


# --- dropout ---
def _dropout_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    shapes = ((FLAT,),) if quick else ((FLAT,), DROPOUT_2D)
    ps = DROPOUT_P[:1] if quick else DROPOUT_P
    ops = {
        "dropout_forward": (
            (_dropout_pyopt, _dropout_array, _dropout_torch),
            {"torch-native": functools.partial(_dropout_torch, native=True)},
        ),
        "dropout_backward": (
            (
                functools.partial(_dropout_pyopt, backward=True),
                _dropout_backward_array,
                _dropout_backward_torch,
            ),
            {},
        ),
    }
    out = []
    for op, (setups, extra) in itertools.islice(ops.items(), 1 if quick else None):
        for shape in shapes:
            for p in ps:
                # Read x (dy), write y (dx): the mask is never stored by pyopt.
                min_bytes = 2 * dtype.itemsize * math.prod(shape)
                label = f"{_label(shape)} p={p}"
                out.append(
                    _case("dropout", op, label, backend, dtype, min_bytes, setups,
                          None if quick else extra, shape=shape, p=p)
                )  # fmt: skip
    return out


def dropout_ref(xp: Any, rng: Any, x: Any, p: float) -> Any:
    """Inverted dropout in NumPy or CuPy: zero where a fresh uniform draw is below ``p``,
    scale the rest by ``1/(1−p)``."""
    keep = rng.random(x.shape, dtype=np.float32) >= p
    return xp.where(keep, x * x.dtype.type(1 / (1 - p)), 0.0)


def _check_dropout(what: str, y: Any, x_host: np.ndarray, p: float) -> np.ndarray:
    """Check that ``y`` is ``x_host`` with about ``p`` of it zeroed and the rest scaled by
    ``1/(1−p)``, as the reference does; return the kept mask."""
    y = _host(y)
    kept = y != 0
    fraction = float(kept.mean())
    if not abs(fraction - (1 - p)) < SIGMAS * math.sqrt(p * (1 - p) / y.size):
        raise AssertionError(f"{what} kept {fraction:.4f} of the elements, not ~{1 - p}")
    _check(f"{what} kept values", y[kept], x_host[kept] * x_host.dtype.type(1 / (1 - p)), 1e-6)
    return kept


def _dropout_pyopt(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, p: float, backward=False
):
    """pyopt's ``dropout`` of x (N(0, 1)), or with ``backward`` its ``dropout_backward`` of
    dy (another N(0, 1)), whose mask must be the forward's at the same offset."""
    from pyopt.functional import dropout, dropout_backward

    xp = _array_module(backend)
    call = dropout_backward if backward else dropout
    host = _normal(shape, int(backward), dtype)
    offsets = itertools.count()

    def make():
        arr = xp.array(host)
        return lambda: call(arr, p, seed=SEED, offset=next(offsets))

    def check(out):
        kept = _check_dropout(call.__name__, out, host, p)
        if backward:
            forward = _host(dropout(xp.ones(shape, dtype), p, seed=SEED, offset=0)) != 0
            if not np.array_equal(kept, forward):
                raise AssertionError("dropout_backward's mask is not its forward's (same offset)")

    return _rotating(make, rotate, check)


def _dropout_array(rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, p: float):
    xp = _array_module(backend)
    x_host = _normal(shape, 0, dtype)
    rng = xp.random.default_rng(SEED)
    return _rotating(lambda: functools.partial(dropout_ref, xp, rng, xp.array(x_host), p), rotate)


def _dropout_torch(
    rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, p: float, native: bool = False
):
    torch = _torch(backend)
    x_host = _normal(shape, 0, dtype)
    drop = torch.native_dropout if native else torch.nn.functional.dropout
    return _rotating(
        lambda: functools.partial(drop, _tensor(torch, x_host, backend), p, True), rotate
    )


def _dropout_backward_array(rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, p: float):
    xp = _array_module(backend)
    dy_host = _normal(shape, 1, dtype)
    rng = xp.random.default_rng(SEED)
    scale = dtype.type(1 / (1 - p))

    def make():
        dy, keep = xp.array(dy_host), rng.random(shape, dtype=np.float32) >= p  # stored mask
        return lambda: xp.where(keep, dy * scale, 0.0)

    return _rotating(make, rotate)


def _dropout_backward_torch(rotate: int, *, backend: str, dtype: np.dtype, shape: tuple, p: float):
    torch = _torch(backend)
    dy_host = _normal(shape, 1, dtype)

    def make():
        dy = _tensor(torch, dy_host, backend)
        _, mask = torch.native_dropout(dy, p, True)  # the mask a forward would have stored
        return functools.partial(torch.ops.aten.native_dropout_backward, dy, mask, 1 / (1 - p))

    return _rotating(make, rotate)


# --- gradient clipping ---
def _clip_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    models = {"flat-16M": {"flat": (FLAT,)}, "resnet50": RESNET50_PARAM_SHAPES}
    if quick:
        del models["flat-16M"]
    # The norm reads the grads and the scaling reads and writes them; clip_grad_value_ is
    # one pass that reads and writes them.
    passes = {"clip_grad_norm_": 3, "clip_grad_value_": 2}
    setups = (_clip_pyopt, _clip_array, _clip_torch)
    return [
        _case("clip", op, label, backend, dtype, n * dtype.itemsize * n_params(shapes), setups,
              shapes=shapes, clip=op)
        for op, n in itertools.islice(passes.items(), 1 if quick else None)
        for label, shapes in models.items()
    ]  # fmt: skip


def clip_grad_norm_ref(xp: Any, grad: Any, max_norm: float) -> Any:
    """``torch.nn.utils.clip_grad_norm_`` on one flat grad array in NumPy or CuPy, in its
    dtype (pyopt._reference's norm and coefficient): scaled in place; returns ‖g‖
    (without a device sync)."""
    norm = reference.total_norm([grad], xp=xp, dtype=grad.dtype)
    grad *= reference.clip_coefficient(norm, max_norm, xp=xp)
    return norm


def _shrinking(clip: Callable[[float], object], n: int) -> Callable[[], object]:
    """``clip(max_norm)`` with a max_norm ``CLIP_SHRINK`` times the previous call's, the
    first just below the norm of ``n`` fresh grads (≈ ``GRAD_SCALE``·√n): every call scales."""
    max_norm = GRAD_SCALE * math.sqrt(n)

    def call():
        nonlocal max_norm
        max_norm *= CLIP_SHRINK
        return clip(max_norm)

    return call


def _clip_pyopt(rotate: int, *, backend: str, dtype: np.dtype, shapes: dict, clip: str) -> Callable:
    """pyopt's ``clip_grad_norm_`` (with a shrinking max norm) or ``clip_grad_value_``
    on the grads of a new ``ParamBuffer``."""
    import pyopt

    xp = _array_module(backend)
    g_host = _optim_inputs(shapes, dtype)[1]
    buffers = []

    def make():
        buf = pyopt.optim.ParamBuffer(shapes, dtype, device=backend)
        buf.grad[:] = xp.asarray(g_host)
        buffers.append(buf)
        if clip == "clip_grad_value_":
            return functools.partial(pyopt.clip_grad_value_, buf.grads, CLIP_VALUE)
        return _shrinking(lambda max_norm: pyopt.clip_grad_norm_(buf.grads, max_norm), g_host.size)

    def check(total):
        grads = _host(buffers[0].grad)
        if clip == "clip_grad_value_":
            _check(f"{clip} grads", grads, np.clip(g_host, -CLIP_VALUE, CLIP_VALUE), 0.0)
            return
        # Norms in float64: NumPy's float32 norm is off by ~1e-4 at 25M elements.
        norms = [float(total), float(reference.total_norm([grads]))]
        clipped = GRAD_SCALE * math.sqrt(g_host.size) * CLIP_SHRINK
        expected = [float(reference.total_norm([g_host])), clipped]
        _check(f"{clip} total and clipped norms", np.array(norms), np.array(expected), 1e-4)

    return _rotating(make, rotate, check)


def _clip_array(rotate: int, *, backend: str, dtype: np.dtype, shapes: dict, clip: str) -> Callable:
    xp = _array_module(backend)
    g_host = _optim_inputs(shapes, dtype)[1]

    def make():
        grad = xp.array(g_host)
        if clip == "clip_grad_value_":
            return functools.partial(xp.clip, grad, -CLIP_VALUE, CLIP_VALUE, out=grad)
        return _shrinking(lambda max_norm: clip_grad_norm_ref(xp, grad, max_norm), grad.size)

    return _rotating(make, rotate)


def _clip_torch(rotate: int, *, backend: str, dtype: np.dtype, shapes: dict, clip: str) -> Callable:
    torch = _torch(backend)
    g_host = _optim_inputs(shapes, dtype)[1]
    utils = torch.nn.utils

    def make():
        params = _torch_params(torch, shapes, g_host, backend)
        if clip == "clip_grad_value_":
            return functools.partial(utils.clip_grad_value_, params, CLIP_VALUE, foreach=True)
        norm_clip = functools.partial(utils.clip_grad_norm_, params, foreach=True)
        return _shrinking(lambda max_norm: norm_clip(max_norm=max_norm), g_host.size)

    return _rotating(make, rotate)


# --- init ---
# op: (mean, std) of its default distribution (normal_: N(0, 1); uniform_: U[0, 1)).
INIT_MOMENTS = {"normal_": (0.0, 1.0), "uniform_": (0.5, math.sqrt(1 / 12))}


def _init_cases(backend: str, quick: bool, dtype: np.dtype) -> list[Case]:
    setups = (_init_pyopt, _init_array, _init_torch)
    return [
        _case("init", op, "flat-16M", backend, dtype, dtype.itemsize * FLAT, setups, fill=op)
        for op in itertools.islice(INIT_MOMENTS, 1 if quick else None)
    ]  # write only


def _init_pyopt(rotate: int, *, backend: str, dtype: np.dtype, fill: str) -> Callable:
    import pyopt

    xp = _array_module(backend)
    want_mean, want_std = INIT_MOMENTS[fill]

    def check(x):
        x = _host(x)
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        # σ/√n: the standard error of the mean, and more than that of the std (σ/√(2n)
        # for the normal, 0.45·σ/√n for the uniform).
        tol = SIGMAS * want_std / math.sqrt(x.size)
        if not (abs(mean - want_mean) < tol and abs(std - want_std) < tol):
            raise AssertionError(
                f"{fill} drew mean {mean:.4f}, std {std:.4f}: not {want_mean:.4f}, {want_std:.4f}"
            )
        if fill == "uniform_" and not (x.min() >= 0.0 and x.max() < 1.0):
            raise AssertionError(f"uniform_ drew outside [0, 1): [{x.min()}, {x.max()}]")

    fill = getattr(pyopt.init, fill)
    return _rotating(lambda: functools.partial(fill, xp.empty(FLAT, dtype)), rotate, check)


def _init_array(rotate: int, *, backend: str, dtype: np.dtype, fill: str) -> Callable:
    xp = _array_module(backend)
    rng = xp.random.default_rng(SEED)
    fill = rng.standard_normal if fill == "normal_" else rng.random

    def make():
        x = xp.empty(FLAT, dtype)
        return functools.partial(fill, x.shape, dtype, x)

    return _rotating(make, rotate)


def _init_torch(rotate: int, *, backend: str, dtype: np.dtype, fill: str) -> Callable:
    torch = _torch(backend)
    fill = getattr(torch.nn.init, fill)
    return _rotating(
        lambda: functools.partial(fill, _torch_empty(torch, (FLAT,), dtype, backend)), rotate
    )
