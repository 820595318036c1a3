"""Benchmark cases: what ``pyopt bench`` times, one ``Case`` per (op, shape, backend)."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bench_optim import RULES
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
FAMILIES = ("batchnorm", "optim", "dropout", "clip", "init")
FLAT = 16 * 2**20  # one 64 MiB float32 buffer: far beyond any last-level cache
BN_BATCH = 32
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
BN_MLP_SHAPES = ((256, 512), (4096, 1024))
# ResNet-50 BN inputs of --quick: the network's commonest (stage 3, 11 of its 53 layers)
# and stage 1's (6 layers, 4x the elements, few channels).
BN_QUICK = ((256, 14, 14), (64, 56, 56))
OPTIM_RULES = ("Adam", "AdamW", "SGD-momentum", "Adagrad", "RMSprop", "Adadelta")
DROPOUT_P = 0.1
GRAD_SCALE = 1e-2  # grads are GRAD_SCALE x N(0, 1)
CLIP_SHRINK = 0.99  # each clip_grad_norm_ call's max_norm over the call before: always scales
SEED = 1234


def cases(backend: str, quick: bool, families: set[str] | None = None) -> list[Case]:
    """The benchmark cases of ``backend`` ("cpu" or "cuda") for ``families`` (None: all).

    Providers per case: ``pyopt`` (NumPy arrays on the CPU, CuPy arrays on CUDA), the
    array-library baseline (``numpy`` on the CPU, ``cupy`` on CUDA: the same vectorized
    code) and ``torch`` (CPU tensors, or CUDA tensors: fused optimizers, cuDNN batch norm).
    ``quick`` keeps a subset of the shapes and Adam alone among the optimizers.

    Raises:
        ValueError: an unknown backend or family.
    """
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu' or 'cuda', got {backend!r}")
    unknown = sorted(set(families or ()) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    builders = {
        "batchnorm": _batchnorm_cases,
        "optim": _optim_cases,
        "dropout": _dropout_cases,
        "clip": _clip_cases,
        "init": _init_cases,
    }
    return [
        case
        for family in FAMILIES
        if families is None or family in families
        for case in builders[family](backend, quick)
    ]


def _case(
    family: str,
    op: str,
    label: str,
    backend: str,
    min_bytes: int,
    setups: tuple[Callable[..., Callable[[], object]], ...],
    **args: object,
) -> Case:
    """A float32 case labelled ``label`` (its shape) with the three providers ``setups`` =
    (pyopt, array library, torch), each called as ``setup(rotate, backend=backend, **args)``."""
    array_lib = "numpy" if backend == "cpu" else "cupy"
    names = ("pyopt", array_lib, "torch")
    providers = {
        name: functools.partial(setup, backend=backend, **args)
        for name, setup in zip(names, setups, strict=True)
    }
    return Case(family, op, label, "float32", backend, min_bytes, providers, (array_lib, "torch"))


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


def _host(arr: Any) -> np.ndarray:
    return arr if isinstance(arr, np.ndarray) else arr.get()


@functools.lru_cache(maxsize=4)
def _normal(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    """``scale`` x N(0, 1) float32 host data, generated once for all providers of a case
    (they copy it into their own sets and never write it)."""
    data = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        data *= np.float32(scale)
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


def _check(what: str, ours: Any, reference: Any, tol: float) -> None:
    """Raise ``AssertionError`` unless ``ours`` is within ``tol`` of ``reference``,
    relative to the larger of 1 and the reference's largest magnitude."""
    ours, reference = _host(ours), _host(reference)
    scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    err = float(np.max(np.abs(ours - reference), initial=0.0)) / scale
    if not err <= tol:
        raise AssertionError(
            f"{what}: pyopt differs from the array reference by {err:.1e} (relative), "
            f"more than {tol:.0e}"
        )


# --- batch norm ---
def _batchnorm_cases(backend: str, quick: bool) -> list[Case]:
    chw = BN_QUICK if quick else tuple(dict.fromkeys(RESNET50_BN_SHAPES.values()))
    inputs: list[tuple[tuple[int, ...], int, str]] = []
    for c, h, w in chw:
        for shape, axis, layout in (((c, h, w), 1, "NCHW"), ((h, w, c), -1, "NHWC")):
            full = (BN_BATCH, *shape)
            inputs.append((full, axis, f"{'x'.join(map(str, full))} {layout}"))
    for shape in BN_MLP_SHAPES[-1:] if quick else BN_MLP_SHAPES:
        inputs.append((shape, 1, "x".join(map(str, shape))))
    out = []
    for shape, axis, label in inputs:
        nbytes = 4 * math.prod(shape)
        # Forward reads x twice (statistics, normalization) and writes y; backward reads
        # x and dy twice (the two sums, then dx) and writes dx.
        out.append(
            _case(
                "batchnorm",
                "batch_norm_forward",
                label,
                backend,
                3 * nbytes,
                (_bn_forward_pyopt, _bn_forward_array, _bn_forward_torch),
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
                5 * nbytes,
                (_bn_backward_pyopt, _bn_backward_array, _bn_backward_torch),
                shape=shape,
                axis=axis,
            )
        )
    return out


def _bn_inputs(shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, ...]:
    """Host ``x``, ``dy`` (N(0, 1)), ``weight`` and ``bias`` of a batch-norm case."""
    channels = shape[axis]
    rng = np.random.default_rng(SEED)
    weight = (1.0 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    return _normal(shape, 0), _normal(shape, 1), weight, bias


def _bn_axes(ndim: int, axis: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The reduced axes, and the shape that broadcasts a per-channel vector along ``axis``."""
    axis %= ndim
    channel = [1] * ndim
    channel[axis] = -1
    return tuple(i for i in range(ndim) if i != axis), tuple(channel)


def batch_norm_forward_ref(
    xp: Any, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, axis: int
) -> tuple[Any, Any, Any]:
    """Training batch norm in NumPy or CuPy: ``(y, mean, invstd)`` from the batch
    statistics; the running ones (if not None) updated in place with the unbiased var."""
    axes, channel = _bn_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    invstd = 1 / xp.sqrt(var + BN_EPS)
    if running_mean is not None:
        running_mean *= 1 - BN_MOMENTUM
        running_mean += BN_MOMENTUM * mean
        running_var *= 1 - BN_MOMENTUM
        running_var += BN_MOMENTUM * n / (n - 1) * var
    scale = weight * invstd
    y = x * scale.reshape(channel) + (bias - mean * scale).reshape(channel)
    return y, mean, invstd


def batch_norm_backward_ref(
    xp: Any, dy: Any, x: Any, weight: Any, mean: Any, invstd: Any, axis: int
) -> tuple[Any, Any, Any]:
    """Training batch-norm gradients in NumPy or CuPy: ``(dx, dweight, dbias)``."""
    axes, channel = _bn_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    xhat = (x - mean.reshape(channel)) * invstd.reshape(channel)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    dx = (weight * invstd).reshape(channel) * (
        dy - (dbias / n).reshape(channel) - xhat * (dweight / n).reshape(channel)
    )
    return dx, dweight, dbias


def _bn_forward_pyopt(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    from pyopt.functional import batch_norm

    xp = _array_module(backend)
    inputs = _bn_inputs(shape, axis)
    c = shape[axis]

    def make():
        x, weight, bias = (xp.array(inputs[i]) for i in (0, 2, 3))
        rm, rv = xp.zeros(c, np.float32), xp.ones(c, np.float32)
        return functools.partial(
            batch_norm, x, weight, bias, rm, rv, momentum=BN_MOMENTUM, eps=BN_EPS, axis=axis
        )

    def check(result):
        x, weight, bias = (xp.array(inputs[i]) for i in (0, 2, 3))
        y = batch_norm_forward_ref(xp, x, weight, bias, None, None, axis)[0]
        _check("batch_norm_forward y", result[0], y, 1e-4)

    return _rotating(make, rotate, check)


def _bn_forward_array(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    xp = _array_module(backend)
    inputs = _bn_inputs(shape, axis)
    c = shape[axis]

    def make():
        x, weight, bias = (xp.array(inputs[i]) for i in (0, 2, 3))
        rm, rv = xp.zeros(c, np.float32), xp.ones(c, np.float32)
        return functools.partial(batch_norm_forward_ref, xp, x, weight, bias, rm, rv, axis)

    return _rotating(make, rotate)


def _bn_forward_torch(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    torch = _torch(backend)
    inputs = _bn_inputs(shape, axis)

    def make():
        x, weight, bias = (_tensor(torch, inputs[i], backend) for i in (0, 2, 3))
        rm, rv = torch.zeros_like(weight), torch.ones_like(weight)
        # (N, H, W, C) memory seen as an NCHW tensor in torch's channels_last format.
        return functools.partial(
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

    return _rotating(make, rotate)


def _bn_backward_pyopt(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    from pyopt.functional import batch_norm, batch_norm_backward

    xp = _array_module(backend)
    inputs = _bn_inputs(shape, axis)

    def make():
        x, dy, weight, bias = (xp.array(a) for a in inputs)
        _, mean, invstd = batch_norm(x, weight, bias, eps=BN_EPS, axis=axis)
        return functools.partial(batch_norm_backward, dy, x, weight, mean, invstd, axis=axis)

    def check(result):
        x, dy, weight, bias = (xp.array(a) for a in inputs)
        _, mean, invstd = batch_norm_forward_ref(xp, x, weight, bias, None, None, axis)
        dx = batch_norm_backward_ref(xp, dy, x, weight, mean, invstd, axis)[0]
        _check("batch_norm_backward dx", result[0], dx, 1e-4)

    return _rotating(make, rotate, check)


def _bn_backward_array(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    xp = _array_module(backend)
    inputs = _bn_inputs(shape, axis)

    def make():
        x, dy, weight, bias = (xp.array(a) for a in inputs)
        _, mean, invstd = batch_norm_forward_ref(xp, x, weight, bias, None, None, axis)
        return functools.partial(batch_norm_backward_ref, xp, dy, x, weight, mean, invstd, axis)

    return _rotating(make, rotate)


def _bn_backward_torch(rotate: int, *, backend: str, shape: tuple, axis: int) -> Callable:
    torch = _torch(backend)
    inputs = _bn_inputs(shape, axis)

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
def _optim_cases(backend: str, quick: bool) -> list[Case]:
    models = {"flat-16M": {"flat": (FLAT,)}, "resnet50": RESNET50_PARAM_SHAPES}
    if backend == "cuda":
        models["gpt2-small"] = GPT2_SMALL_PARAM_SHAPES
    out = []
    for rule in OPTIM_RULES[:1] if quick else OPTIM_RULES:
        bytes_per_param = RULES[rule][3]
        op = rule.lower().replace("-", "_") + "_step"
        for label, shapes in models.items():
            min_bytes = bytes_per_param * n_params(shapes)
            setups = (_optim_pyopt, _optim_array, _optim_torch)
            out.append(
                _case("optim", op, label, backend, min_bytes, setups, rule=rule, shapes=shapes)
            )
    return out


def _optim_inputs(shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Flat host params (N(0, 1)) and grads (``GRAD_SCALE`` x N(0, 1)) of a model."""
    n = n_params(shapes)
    return _normal((n,), 2), _normal((n,), 3, GRAD_SCALE)


def adam_step_ref(
    xp: Any, p: Any, g: Any, state: list[Any], step: int, hp: dict, decoupled: bool = False
) -> None:
    """One ``torch.optim.Adam`` step (``AdamW``'s with ``decoupled``) in NumPy or CuPy:
    ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)``."""
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    beta1, beta2 = hp.get("betas", (0.9, 0.999))
    m, v = state
    if decoupled:
        p *= 1 - lr * wd
    elif wd:
        g = g + wd * p
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    denom = xp.sqrt(v) / math.sqrt(1 - beta2**step) + hp.get("eps", 1e-8)
    p -= lr / (1 - beta1**step) * m / denom


def sgd_step_ref(xp: Any, p: Any, g: Any, state: list[Any], step: int, hp: dict) -> None:
    """One ``torch.optim.SGD`` step with momentum (no dampening) in NumPy or CuPy:
    ``b ← μ·b + g``, ``p ← p − lr·b``."""
    (buf,) = state
    buf *= hp["momentum"]
    buf += g
    p -= hp["lr"] * buf


def adagrad_step_ref(xp: Any, p: Any, g: Any, state: list[Any], step: int, hp: dict) -> None:
    """One ``torch.optim.Adagrad`` step in NumPy or CuPy: ``s ← s + g²``,
    ``p ← p − lr · g / (√s + eps)``."""
    (total,) = state
    total += g * g
    p -= hp["lr"] * g / (xp.sqrt(total) + hp.get("eps", 1e-10))


def rmsprop_step_ref(xp: Any, p: Any, g: Any, state: list[Any], step: int, hp: dict) -> None:
    """One ``torch.optim.RMSprop`` step (plain) in NumPy or CuPy:
    ``s ← α·s + (1−α)·g²``, ``p ← p − lr · g / (√s + eps)``."""
    (square_avg,) = state
    alpha = hp.get("alpha", 0.99)
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    p -= hp["lr"] * g / (xp.sqrt(square_avg) + hp.get("eps", 1e-8))


def adadelta_step_ref(xp: Any, p: Any, g: Any, state: list[Any], step: int, hp: dict) -> None:
    """One ``torch.optim.Adadelta`` step in NumPy or CuPy: ``s ← ρ·s + (1−ρ)·g²``,
    ``d = √(a + eps)/√(s + eps) · g``, ``a ← ρ·a + (1−ρ)·d²``, ``p ← p − lr·d``."""
    square_avg, acc_delta = state
    rho, eps = hp.get("rho", 0.9), hp.get("eps", 1e-6)
    square_avg *= rho
    square_avg += (1 - rho) * g * g
    delta = xp.sqrt(acc_delta + eps) / xp.sqrt(square_avg + eps) * g
    acc_delta *= rho
    acc_delta += (1 - rho) * delta * delta
    p -= hp["lr"] * delta


# torch.optim class -> (reference step, number of state arrays)
REFERENCE_STEPS: dict[str, tuple[Callable[..., None], int]] = {
    "Adam": (adam_step_ref, 2),
    "AdamW": (functools.partial(adam_step_ref, decoupled=True), 2),
    "SGD": (sgd_step_ref, 1),
    "Adagrad": (adagrad_step_ref, 1),
    "RMSprop": (rmsprop_step_ref, 1),
    "Adadelta": (adadelta_step_ref, 2),
}


def _reference_optimizer(xp: Any, rule: str, p: Any, g: Any) -> Callable[[], Any]:
    """``step()``: one reference step of ``rule`` on the flat arrays ``p``, ``g``
    (state zero-initialized, as torch's), returning ``p``."""
    cls, hp, _, _ = RULES[rule]
    update, n_state = REFERENCE_STEPS[cls]
    state = [xp.zeros_like(p) for _ in range(n_state)]
    steps = itertools.count(1)

    def step():
        update(xp, p, g, state, next(steps), hp)
        return p

    return step


def _optim_pyopt(rotate: int, *, backend: str, rule: str, shapes: dict) -> Callable:
    import pyopt.optim

    xp = _array_module(backend)
    cls, hp, _, _ = RULES[rule]
    p_host, g_host = _optim_inputs(shapes)

    def make():
        buf = pyopt.optim.ParamBuffer(shapes, np.float32, device=backend)
        buf.data[:] = xp.asarray(p_host)
        buf.grad[:] = xp.asarray(g_host)
        opt = getattr(pyopt.optim, cls)(buf.params, **hp)

        def step():
            opt.step(buf.grads)
            return buf.data

        return step

    def check(data):
        p = _reference_optimizer(xp, rule, xp.array(p_host), xp.array(g_host))()
        _check(f"{rule} step", data, p, 1e-5)

    return _rotating(make, rotate, check)


def _optim_array(rotate: int, *, backend: str, rule: str, shapes: dict) -> Callable:
    xp = _array_module(backend)
    p_host, g_host = _optim_inputs(shapes)
    return _rotating(
        lambda: _reference_optimizer(xp, rule, xp.array(p_host), xp.array(g_host)), rotate
    )


def _torch_optimizer(torch: Any, rule: str, params: list[Any]) -> Any:
    """``torch.optim.<cls>`` over ``params`` in ``bench_optim.RULES``' mode ("fused" or
    "foreach"); "fused" falls back to "foreach" where torch has no fused kernel for the
    params' device (a one-element trial step says)."""
    cls, hp, mode, _ = RULES[rule]
    make = getattr(torch.optim, cls)
    if mode == "fused":
        trial = torch.nn.Parameter(torch.zeros(1, device=params[0].device))
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
    params, start = [], 0
    for shape in shapes.values():
        part = slice(start, start + math.prod(shape))
        start = part.stop
        if values is None:
            data = torch.empty(shape, device=_torch_device(backend))
        else:
            data = _tensor(torch, values[part].reshape(shape), backend)
        param = torch.nn.Parameter(data)
        param.grad = _tensor(torch, grads[part].reshape(shape), backend)
        params.append(param)
    return params


def _optim_torch(rotate: int, *, backend: str, rule: str, shapes: dict) -> Callable:
    torch = _torch(backend)
    p_host, g_host = _optim_inputs(shapes)

    def make():
        params = _torch_params(torch, shapes, g_host, backend, p_host)
        return _torch_optimizer(torch, rule, params).step

    return _rotating(make, rotate)


# --- dropout ---
def _dropout_cases(backend: str, quick: bool) -> list[Case]:
    shapes = ((FLAT,),) if quick else ((FLAT,), (4096, 1024))
    setups = (_dropout_pyopt, _dropout_array, _dropout_torch)
    return [
        _case(
            "dropout",
            "dropout_forward",
            "flat-16M" if shape == (FLAT,) else "x".join(map(str, shape)),
            backend,
            8 * math.prod(shape),  # read x, write y
            setups,
            shape=shape,
        )
        for shape in shapes
    ]


def dropout_ref(xp: Any, rng: Any, x: Any, p: float) -> Any:
    """Inverted dropout in NumPy or CuPy: zero where a fresh uniform draw is below ``p``,
    scale the rest by ``1/(1−p)``."""
    keep = rng.random(x.shape, dtype=np.float32) >= p
    return xp.where(keep, x * np.float32(1 / (1 - p)), 0.0)


def _dropout_pyopt(rotate: int, *, backend: str, shape: tuple) -> Callable:
    from pyopt.functional import dropout

    xp = _array_module(backend)
    x_host = _normal(shape, 0)
    offsets = itertools.count()

    def make():
        x = xp.array(x_host)
        return lambda: dropout(x, DROPOUT_P, seed=SEED, offset=next(offsets))

    def check(y):
        y = _host(y)
        kept = y != 0
        fraction = float(kept.mean())
        if not abs(fraction - (1 - DROPOUT_P)) < 5e-3:
            raise AssertionError(f"dropout kept {fraction:.4f} of the elements, not ~0.9")
        _check("dropout kept values", y[kept], x_host[kept] * np.float32(1 / (1 - DROPOUT_P)), 1e-6)

    return _rotating(make, rotate, check)


def _dropout_array(rotate: int, *, backend: str, shape: tuple) -> Callable:
    xp = _array_module(backend)
    x_host = _normal(shape, 0)
    rng = xp.random.default_rng(SEED)
    return _rotating(
        lambda: functools.partial(dropout_ref, xp, rng, xp.array(x_host), DROPOUT_P), rotate
    )


def _dropout_torch(rotate: int, *, backend: str, shape: tuple) -> Callable:
    torch = _torch(backend)
    x_host = _normal(shape, 0)
    return _rotating(
        lambda: functools.partial(
            torch.nn.functional.dropout, _tensor(torch, x_host, backend), DROPOUT_P, True
        ),
        rotate,
    )


# --- gradient clipping ---
def _clip_cases(backend: str, quick: bool) -> list[Case]:
    n = n_params(RESNET50_PARAM_SHAPES)
    setups = (_clip_pyopt, _clip_array, _clip_torch)
    # The norm reads the grads; the scaling reads and writes them.
    return [_case("clip", "clip_grad_norm", "resnet50", backend, 12 * n, setups)]


def clip_grad_norm_ref(xp: Any, grad: Any, max_norm: float) -> Any:
    """``torch.nn.utils.clip_grad_norm_`` on one flat grad array in NumPy or CuPy:
    scale by ``min(max_norm / (‖g‖ + 1e-6), 1)``; returns ‖g‖ (without a device sync)."""
    norm = xp.linalg.norm(grad)
    grad *= xp.minimum(max_norm / (norm + 1e-6), 1.0)
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


def _norm64(x: np.ndarray) -> float:
    """The L2 norm of ``x`` summed in float64 (NumPy's float32 norm is off by ~1e-4 at 25M)."""
    return math.sqrt(np.sum(np.square(x, dtype=np.float64)))


def _clip_pyopt(rotate: int, *, backend: str) -> Callable:
    import pyopt

    xp = _array_module(backend)
    g_host = _optim_inputs(RESNET50_PARAM_SHAPES)[1]
    n = g_host.size
    buffers = []

    def make():
        buf = pyopt.optim.ParamBuffer(RESNET50_PARAM_SHAPES, np.float32, device=backend)
        buf.grad[:] = xp.asarray(g_host)
        buffers.append(buf)
        return _shrinking(lambda max_norm: pyopt.clip_grad_norm_(buf.grads, max_norm), n)

    def check(total):
        norms = [float(total), _norm64(_host(buffers[0].grad))]
        expected = [_norm64(g_host), GRAD_SCALE * math.sqrt(n) * CLIP_SHRINK]
        _check("clip_grad_norm total and clipped norms", np.array(norms), np.array(expected), 1e-4)

    return _rotating(make, rotate, check)


def _clip_array(rotate: int, *, backend: str) -> Callable:
    xp = _array_module(backend)
    g_host = _optim_inputs(RESNET50_PARAM_SHAPES)[1]

    def make():
        grad = xp.array(g_host)
        return _shrinking(lambda max_norm: clip_grad_norm_ref(xp, grad, max_norm), g_host.size)

    return _rotating(make, rotate)


def _clip_torch(rotate: int, *, backend: str) -> Callable:
    torch = _torch(backend)
    g_host = _optim_inputs(RESNET50_PARAM_SHAPES)[1]

    def make():
        params = _torch_params(torch, RESNET50_PARAM_SHAPES, g_host, backend)
        return _shrinking(
            lambda max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True),
            g_host.size,
        )

    return _rotating(make, rotate)


# --- init ---
def _init_cases(backend: str, quick: bool) -> list[Case]:
    setups = (_normal_pyopt, _normal_array, _normal_torch)
    return [_case("init", "normal_", "flat-16M", backend, 4 * FLAT, setups)]  # write only


def _normal_pyopt(rotate: int, *, backend: str) -> Callable:
    import pyopt

    xp = _array_module(backend)

    def check(x):
        x = _host(x)
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        if not (abs(mean) < 2e-3 and abs(std - 1) < 2e-3):
            raise AssertionError(f"normal_ drew mean {mean:.4f}, std {std:.4f}: not N(0, 1)")

    return _rotating(
        lambda: functools.partial(pyopt.init.normal_, xp.empty(FLAT, np.float32)), rotate, check
    )


def _normal_array(rotate: int, *, backend: str) -> Callable:
    xp = _array_module(backend)
    rng = xp.random.default_rng(SEED)

    def make():
        x = xp.empty(FLAT, np.float32)
        return functools.partial(rng.standard_normal, x.shape, np.float32, x)

    return _rotating(make, rotate)


def _normal_torch(rotate: int, *, backend: str) -> Callable:
    torch = _torch(backend)
    return _rotating(
        lambda: functools.partial(
            torch.nn.init.normal_, torch.empty(FLAT, device=_torch_device(backend))
        ),
        rotate,
    )
