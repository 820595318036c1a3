"""The CUDA optimizer launchers (``kernels/cuda/optim.py``) against their rules in float64.

Kernel level: the launchers get Numba device arrays directly (no public layer). Every
case runs the launcher and applies the same rule of ``kernels/rules.py`` elementwise in
float64 NumPy to the same inputs (scalars cast to the dtype first, as the launcher does):
the device must agree to rounding (FMA contraction on a real GPU: not bit-exact).

Runs on a real GPU or on the Numba CUDA simulator; the ``cuda_backend`` fixture applies
``SMALL_LAUNCH`` there (64-thread blocks, at most 4 blocks: a 256-thread grid stride), so
the sizes below cover a partial block (1, 7), several blocks (65), several grid-stride
steps per thread (300) and several trips round the kernels' outer loop (1100; 2500 for
the sum of squares, which loads 8 elements per thread per trip).

Unused state arrays are zero-length views into a sentinel-filled buffer: under the
simulator any index into them raises, and on a GPU a stray write would land in the
buffer, which must come back unchanged. A state the kernel must only write (SGD's
momentum buffer on its first step) starts as NaN, and under the simulator it is an array
whose element reads raise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import (
    CUDASIM,
    assert_close,
    assert_launches_match_gate,
    cuda_skip_reason,
    record_launches,
)

_reason = cuda_skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

from numba import cuda  # noqa: E402

from pyopt.kernels import config, rules  # noqa: E402
from pyopt.kernels.cuda import gate, optim  # noqa: E402
from pyopt.kernels.cuda._launch import resident_blocks  # noqa: E402

pytestmark = pytest.mark.sim

DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 7, 65, 300, 1100]
# Tolerance relative to the largest expected magnitude of each array (values are O(1)).
RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}
SENTINEL = 7.0


@dataclass(frozen=True)
class Case:
    """One launcher call: ``launcher(param, grad, *states, *scalars, *flags)``; the rule
    takes the same arguments and returns ``(param, *states)``."""

    id: str
    launcher: str
    rule: object
    states: tuple[str, ...]
    scalars: dict
    flags: dict
    unused: frozenset = frozenset()  # states passed with length 0
    write_only: frozenset = frozenset()  # states the kernel must not read (filled with NaN)


def _adam_cases():
    beta2 = 0.999
    for amsgrad, (variant, beta1, grad_mult, param_mult, weight_decay) in itertools.product(
        (False, True),
        [
            ("adam_l2", 0.9, 0.5, 1.0, 1e-2),  # lerp weight 0.1: the |w| < 0.5 branch
            ("adamw_maximize", 0.4, -1.0 / 1024, 1.0 - 1e-2 * 0.1, 0.0),  # weight 0.6
        ],
    ):
        yield Case(
            f"adam-{variant}-amsgrad={amsgrad}",
            "adam_update",
            rules.adam,
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            {
                "grad_mult": grad_mult,
                "param_mult": param_mult,
                "weight_decay": weight_decay,
                "beta1_weight": 1.0 - beta1,
                "beta2": beta2,
                "one_minus_beta2": 1.0 - beta2,
                "bias_correction2_sqrt": math.sqrt(1.0 - beta2**3),
                "eps": 1e-8,
                "neg_step_size": -1e-2 / (1.0 - beta1**3),
            },
            {"amsgrad": amsgrad},
            unused=frozenset() if amsgrad else frozenset({"max_exp_avg_sq"}),
        )


def _sgd_cases():
    for momentum, first, nesterov in itertools.product((0.0, 0.9), (False, True), (False, True)):
        yield Case(
            f"sgd-momentum={momentum}-first={first}-nesterov={nesterov}",
            "sgd_update",
            rules.sgd,
            ("momentum_buffer",),
            {
                "grad_mult": -0.25 if nesterov else 1.0,
                "weight_decay": 0.0 if first else 1e-2,
                "momentum": momentum,
                "one_minus_dampening": 0.9,
                "neg_lr": -0.1,
            },
            {"first": first, "nesterov": nesterov},
            unused=frozenset() if momentum else frozenset({"momentum_buffer"}),
            write_only=frozenset({"momentum_buffer"}) if momentum and first else frozenset(),
        )


def _rmsprop_cases():
    for centered, momentum in itertools.product((False, True), (0.0, 0.9)):
        alpha = 0.4 if momentum else 0.99  # lerp weight 0.6 / 0.01: both branches
        unused = set()
        if not centered:
            unused.add("grad_avg")
        if not momentum:
            unused.add("momentum_buffer")
        yield Case(
            f"rmsprop-centered={centered}-momentum={momentum}",
            "rmsprop_update",
            rules.rmsprop,
            ("square_avg", "grad_avg", "momentum_buffer"),
            {
                "grad_mult": 2.0,
                "weight_decay": 1e-2 if centered else 0.0,
                "alpha": alpha,
                "one_minus_alpha": 1.0 - alpha,
                "eps": 1e-8,
                "momentum": momentum,
                "neg_lr": -1e-2,
            },
            {"centered": centered},
            unused=frozenset(unused),
        )


def _adagrad_cases():
    for weight_decay in (0.0, 1e-2):
        yield Case(
            f"adagrad-weight_decay={weight_decay}",
            "adagrad_update",
            rules.adagrad,
            ("state_sum",),
            {"grad_mult": -1.0, "weight_decay": weight_decay, "eps": 1e-10, "neg_clr": -0.05},
            {},
        )


def _adadelta_cases():
    for weight_decay in (0.0, 1e-2):
        yield Case(
            f"adadelta-weight_decay={weight_decay}",
            "adadelta_update",
            rules.adadelta,
            ("square_avg", "acc_delta"),
            {
                "grad_mult": 0.5,
                "weight_decay": weight_decay,
                "rho": 0.9,
                "one_minus_rho": 1.0 - 0.9,
                "eps": 1e-6,
                "neg_lr": -1.0,
            },
            {},
        )


CASES = [
    *_adam_cases(),
    *_sgd_cases(),
    *_rmsprop_cases(),
    *_adagrad_cases(),
    *_adadelta_cases(),
]
CASE_IDS = [c.id for c in CASES]


# Initial values per array: O(1), second moments positive, grad_avg small enough that a
# centered RMSprop's v − ḡ² stays positive.
def _init(name, n, rng):
    if name == "param":
        return rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)
    if name in ("grad", "momentum_buffer"):
        return rng.standard_normal(n)
    if name == "exp_avg":
        return 0.5 * rng.standard_normal(n)
    if name == "grad_avg":
        return rng.uniform(-0.1, 0.1, n)
    return rng.uniform(0.1, 1.0, n)  # exp_avg_sq, max_exp_avg_sq, state_sum, ...


def _write_only(values):
    """A device copy of ``values`` whose element reads fail under the simulator."""
    if not CUDASIM:
        return cuda.to_device(values)
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class WriteOnly(FakeCUDAArray):
        def __getitem__(self, idx):
            raise AssertionError(f"a write-only array was read at {idx}")

    return WriteOnly(values.copy())


@dataclass
class Run:
    host: dict  # name -> NumPy input (None for unused states)
    device: dict  # name -> device array as launched
    bases: dict  # unused state name -> (sentinel device buffer, its host copy)


def _setup(case, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    host, device, bases = {}, {}, {}
    for name in ("param", "grad", *case.states):
        if name in case.unused:
            base = np.full(n + 4, SENTINEL, dtype)
            dev_base = cuda.to_device(base)
            host[name] = None
            device[name] = dev_base[:0]
            bases[name] = (dev_base, base)
            continue
        values = _init(name, n, rng).astype(dtype)
        host[name] = values
        if name in case.write_only:
            values[:] = np.nan  # read by mistake on a GPU, it would poison the result
            device[name] = _write_only(values)
        else:
            device[name] = cuda.to_device(values)
    return Run(host, device, bases)


def _launch(case, run, stream=None):
    launcher = getattr(optim, case.launcher)
    arrays = [run.device[name] for name in ("param", "grad", *case.states)]
    launcher(*arrays, *case.scalars.values(), *case.flags.values(), stream=stream)
    if stream is not None:
        stream.synchronize()


def _expected(case, host, dtype, n):
    """The rule applied elementwise in float64 to the inputs and the dtype-cast scalars."""
    cast = np.dtype(dtype).type
    scalars = [np.float64(cast(v)) for v in case.scalars.values()]
    outputs = ("param", *case.states)
    columns = [
        np.zeros(n) if host[name] is None else host[name].astype(np.float64)
        for name in ("param", "grad", *case.states)
    ]
    out = {name: np.empty(n) for name in outputs}
    for k in range(n):
        new = case.rule(*(c[k] for c in columns), *scalars, *case.flags.values())
        for name, value in zip(outputs, new, strict=True):
            out[name][k] = value
    return {name: out[name] for name in outputs if name not in case.unused}


def _check(case, run, dtype, n):
    expected = _expected(case, run.host, dtype, n)
    for name, want in expected.items():
        got = run.device[name].copy_to_host()
        assert got.dtype == dtype, name
        assert_close(got, want, dtype, scale_tol=RTOL[np.dtype(dtype)], what=name)
    np.testing.assert_array_equal(run.device["grad"].copy_to_host(), run.host["grad"])
    for name, (dev_base, base) in run.bases.items():
        np.testing.assert_array_equal(dev_base.copy_to_host(), base, err_msg=f"{name} touched")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_update_matches_rule(cuda_backend, case, dtype, n):
    run = _setup(case, n, dtype, seed=n)
    _launch(case, run)
    _check(case, run, dtype, n)


@pytest.mark.parametrize(
    "case",
    [next(c for c in CASES if c.launcher == name) for name in sorted({c.launcher for c in CASES})],
    ids=lambda c: c.launcher,
)
def test_update_on_explicit_stream(cuda_backend, case):
    n = 300
    run = _setup(case, n, np.float32, seed=1)
    _launch(case, run, stream=cuda.stream())
    _check(case, run, np.float32, n)


def test_empty_arrays_launch_nothing(cuda_backend, monkeypatch):
    class NoLaunch:
        def __getitem__(self, launch):
            raise AssertionError(f"a kernel was launched for n == 0: {launch}")

    for spec in gate.KERNELS:
        if spec.module == "optim":
            monkeypatch.setattr(optim, spec.name, NoLaunch())
    for case in CASES:
        _launch(case, _setup(case, 0, np.float32))
    assert optim.grad_sumsq_blocks(0) == 0
    optim.grad_sumsq(cuda.device_array(0, np.float32), cuda.device_array((0, 2), np.float64))


# --- grad_sumsq -------------------------------------------------------------------


def _block_of(n):
    """The block each element belongs to: block b owns k with (k mod G·T) // T == b."""
    threads = config.CUDA_THREADS
    return (np.arange(n) % (optim.grad_sumsq_blocks(n) * threads)) // threads


def _grad_sumsq(grad, extra_rows=3, stream=None):
    """Launch on ``grad`` with ``extra_rows`` sentinel rows past the partials; all rows."""
    blocks = optim.grad_sumsq_blocks(grad.size)
    out = cuda.to_device(np.full((blocks + extra_rows, 2), -SENTINEL))
    optim.grad_sumsq(cuda.to_device(grad), out, stream=stream)
    if stream is not None:
        stream.synchronize()
    rows = out.copy_to_host()
    np.testing.assert_array_equal(rows[blocks:], -SENTINEL, err_msg="rows past the blocks")
    return rows[:blocks]


def _expected_rows(grad):
    g = grad.astype(np.float64)
    owner = _block_of(grad.size)
    blocks = optim.grad_sumsq_blocks(grad.size)
    sumsq = np.array([np.sum(g[owner == b] ** 2) for b in range(blocks)])
    with np.errstate(invalid="ignore"):  # inf - inf
        flags = np.array([np.sum(g[owner == b] - g[owner == b]) for b in range(blocks)])
    return sumsq, flags


@pytest.mark.parametrize("n", [*SIZES, 2500])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_grad_sumsq_partials(cuda_backend, dtype, n):
    grad = (3.0 * np.random.default_rng(n).standard_normal(n)).astype(dtype)
    blocks = optim.grad_sumsq_blocks(n)
    if n:
        assert 1 <= blocks <= min(-(-n // config.CUDA_THREADS), resident_blocks())
    rows = _grad_sumsq(grad)
    assert rows.shape == (blocks, 2)
    sumsq, _ = _expected_rows(grad)
    np.testing.assert_allclose(rows[:, 0], sumsq, rtol=1e-13)
    np.testing.assert_array_equal(rows[:, 1], 0.0)
    total = np.sum(grad.astype(np.float64) ** 2)
    np.testing.assert_allclose(rows[:, 0].sum(), total, rtol=1e-13)


# The simulator computes inf - inf with NumPy scalars, which warn.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_grad_sumsq_flags_non_finite(cuda_backend, dtype, value, position):
    n = 130  # 3 blocks under SMALL_LAUNCH: first, middle and last in different ones
    grad = np.random.default_rng(3).standard_normal(n).astype(dtype)
    k = {"first": 0, "middle": n // 2, "last": n - 1}[position]
    grad[k] = value
    rows = _grad_sumsq(grad)
    sumsq, flags = _expected_rows(grad)
    bad = _block_of(n)[k]
    assert np.isnan(rows[bad, 1])
    if np.isnan(value):
        assert np.isnan(rows[bad, 0])
    else:
        assert rows[bad, 0] == np.inf
    good = np.arange(len(rows)) != bad
    np.testing.assert_array_equal(rows[good, 1], 0.0)
    np.testing.assert_allclose(rows[good, 0], sumsq[good], rtol=1e-13)
    np.testing.assert_array_equal(np.isnan(rows[:, 1]), np.isnan(flags))


def test_grad_sumsq_is_deterministic_on_a_stream(cuda_backend):
    grad = np.random.default_rng(5).standard_normal(300).astype(np.float32)
    stream = cuda.stream()
    first = _grad_sumsq(grad, stream=stream)
    np.testing.assert_array_equal(_grad_sumsq(grad, stream=stream), first)
    np.testing.assert_allclose(first[:, 0].sum(), np.sum(grad.astype(np.float64) ** 2), 1e-13)


# --- compile-gate registry --------------------------------------------------------


def test_launch_signatures_are_registered(cuda_backend, monkeypatch):
    """Every launch's argument types match the compile gate's row for its kernel.

    The gate compiles exactly the registered signatures, so a launcher passing other
    types (a Python float, an int flag) would run code the gate never checked.
    """
    seen = record_launches(monkeypatch, "optim")
    for dtype in DTYPES:
        for case in CASES:
            _launch(case, _setup(case, 7, dtype))
        _grad_sumsq(np.ones(7, dtype))
    assert_launches_match_gate(seen, "optim")
    assert len(seen) == 6 * 2  # six kernels, float32 and float64
