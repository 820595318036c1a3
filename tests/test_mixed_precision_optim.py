"""Mixed precision in the optimizers: float16/bfloat16 params, float32 master weights,
bfloat16 state, stochastic rounding, and the 16-bit conversions they are built on.

Conversions (``kernels/rules.py``) are checked bit for bit against ``ml_dtypes`` (the
bfloat16 JAX uses) and NumPy's float16 over every 16-bit pattern and millions of float32
values. Every kernel variant (``kernels/specs.py`` ``STORAGES``) is checked on both
backends against the float32 kernel of the same backend run on the decoded values: the
16-bit results must be exactly the rounding of its float32 results. Through the public
layer, master-weight optimizers must give params bit-identical to rounding the params of
pyopt's own float32 optimizer fed the same upcast gradients, for every configuration of
``pyopt._check.OPTIMIZER_CASES``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helpers import to_backend, to_host
from numba import njit, prange
from numba.core.extending import intrinsic

import pyopt
from pyopt import _multi, optim
from pyopt._check import OPTIMIZER_CASES
from pyopt.kernels import _codegen, config, philox, rules, specs

BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
FORMATS = {"bfloat16": BF16, "float16": F16}

# --- the conversions, compiled for the CPU as the kernels compile them ----------------

_CONVERSIONS = rules.compiled_conversions(
    njit(inline="always"), *_codegen.bitcast_intrinsics(intrinsic)
)
_TO_FLOAT32 = {f: _CONVERSIONS[f"{f}_to_float32"] for f in FORMATS}
_FROM_FLOAT32 = {f: _CONVERSIONS[f"float32_to_{f}"] for f in FORMATS}
_bf16_to_f32, _f16_to_f32 = _TO_FLOAT32["bfloat16"], _TO_FLOAT32["float16"]
_f32_to_bf16, _f32_to_f16 = _FROM_FLOAT32["bfloat16"], _FROM_FLOAT32["float16"]
_f32_to_bf16_stochastic = _CONVERSIONS["float32_to_bfloat16_stochastic"]


@njit(parallel=True)
def _widen(bits, out, bfloat16):
    for i in prange(bits.size):
        out[i] = _bf16_to_f32(bits[i]) if bfloat16 else _f16_to_f32(bits[i])


@njit(parallel=True)
def _narrow(x, out, bfloat16):
    for i in prange(x.size):
        out[i] = _f32_to_bf16(x[i]) if bfloat16 else _f32_to_f16(x[i])


@njit(parallel=True)
def _stochastic_up_counts(x, counts):
    """For each x, over all 65536 low words: how many round to the upper neighbour."""
    for i in prange(x.size):
        low = _f32_to_bf16_stochastic(x[i], np.uint32(0))  # the truncation
        up = 0
        for w in range(65536):
            up += _f32_to_bf16_stochastic(x[i], np.uint32(w)) != low
        counts[i] = up


def _same_bits(actual, expected):
    """Exact equality of bit patterns (NaN payloads included)."""
    a, e = np.asarray(actual), np.asarray(expected)
    word = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return a.dtype == e.dtype and np.array_equal(a.view(word), e.view(word))


def _float32_cases(rng):
    """Random bit patterns, every 16-bit value widened, their float32 neighbours and the
    exact midpoints between 16-bit neighbours (the ties), and the edges."""
    random = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    cases = [random.view(np.float32)]
    for dtype in (BF16, F16):
        widened = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float32)
        widened = widened[np.isfinite(widened)]
        up = np.nextafter(widened, np.float32(np.inf))
        down = np.nextafter(widened, np.float32(-np.inf))
        following = np.nextafter(widened.astype(dtype), np.inf).astype(np.float32)
        ties = ((widened.astype(np.float64) + following) / 2).astype(np.float32)
        cases += [widened, up, down, ties[np.isfinite(ties)]]
    edges = [np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 65504, 65519.996, 65520, 2**-24]
    edges += [2**-25, 3 * 2**-26, 2**-14, 2**-126, 2**-149, 3.4028235e38]
    cases.append(np.array(edges, dtype=np.float32))
    return np.concatenate(cases)


@pytest.mark.parametrize("fmt", FORMATS)
def test_widening_is_exact_for_every_16_bit_pattern(fmt):
    bits = np.arange(65536, dtype=np.uint16)
    expected = bits.view(FORMATS[fmt]).astype(np.float32)
    out = np.empty(65536, np.float32)
    _widen(bits, out, fmt == "bfloat16")
    nan = np.isnan(expected)
    assert _same_bits(out[~nan], expected[~nan])
    assert np.isnan(out[nan]).all() and np.array_equal(np.signbit(out), np.signbit(expected))
    python = np.array([rules.SIXTEEN_BIT[fmt][0](np.uint16(b)) for b in bits[::97]])
    assert _same_bits(python[~nan[::97]], expected[::97][~nan[::97]])  # the reference too


@pytest.mark.parametrize("fmt", FORMATS)
def test_rounding_to_16_bit_is_ties_to_even_as_ml_dtypes_and_numpy(fmt):
    x = _float32_cases(np.random.default_rng(14))
    out = np.empty(x.size, np.uint16)
    _narrow(x, out, fmt == "bfloat16")
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(FORMATS[fmt]).view(np.uint16)
    nan = np.isnan(x)
    mismatch = np.flatnonzero(out[~nan] != expected[~nan])
    assert mismatch.size == 0, (
        f"{mismatch.size} values round differently, e.g. {x[~nan][mismatch[:3]]}"
    )
    back = out[nan].view(FORMATS[fmt]).astype(np.float32)  # a NaN stays a NaN, sign kept
    assert np.isnan(back).all() and np.array_equal(np.signbit(back), np.signbit(x[nan]))
    sample = x[::4099]
    python = np.array([rules.SIXTEEN_BIT[fmt][1](v) for v in sample], dtype=np.uint16)
    assert np.array_equal(python[~np.isnan(sample)], out[::4099][~np.isnan(sample)])


def test_stochastic_rounding_rounds_up_in_proportion_to_the_distance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64).astype(np.float32)
    x[:4] = [1.0, -2.5, np.float32(2.0**-130), 0.0]  # exact values (and a subnormal)
    counts = np.empty(x.size, np.int64)
    _stochastic_up_counts(x, counts)
    dropped = x.view(np.uint32) & 0xFFFF  # the distance to the lower neighbour, in 2^-16 steps
    np.testing.assert_array_equal(counts, dropped)  # exactly proportional over all words
    assert counts[:4].tolist() == [0, 0, int(dropped[2]), 0]
    specials = np.array([np.inf, -np.inf, np.nan], np.float32)
    got = np.array([rules.float32_to_bfloat16_stochastic(v, 0xFFFF) for v in specials])
    assert got[:2].tolist() == [0x7F80, 0xFF80] and np.isnan(got[2:].view(BF16)).all()


# --- every kernel variant against the float32 kernel ---------------------------------

# One flag combination per rule that reads and writes every state it has.
_FLAGS = {
    "adam": {"amsgrad": True},
    "sgd": {"has_buffer": True, "first": False, "nesterov": True},
    "adagrad": {},
    "rmsprop": {"centered": True, "has_buffer": True},
    "adadelta": {},
}
_SCALARS = {
    "adam": (0.5, 0.99, 0.1, 0.1, 0.999, 0.001, 0.05, 1e-3, -0.02),
    "sgd": (0.5, 0.1, 0.9, 0.9, -0.05),
    "adagrad": (0.5, 0.1, 1e-3, -0.05),
    "rmsprop": (0.5, 0.1, 0.99, 0.01, 1e-3, 0.9, -0.02),
    "adadelta": (0.5, 0.1, 0.9, 0.1, 1e-3, -0.5),
}
_VARIANTS = [s for s in specs.STORAGES if s != specs.DEFAULT]
# Each CPU variant costs seconds of compile (CI compiles from scratch): on the CPU every
# variant of Adam, and every rule with a master (a fifth column) and with bfloat16 state
# and stochastic rounding (16-bit state loads and stores, the Philox stream columns).
# The simulator (no compile) runs them all; the PTX gate compiles them all.
_CPU_CASES = {("adam", s) for s in _VARIANTS} | {
    (n, s)
    for n in specs.SPECS
    for s in (
        specs.Storage("bfloat16", master=True),
        specs.Storage("bfloat16", "bfloat16", stochastic=True),
    )
}
KERNEL_CASES = [
    pytest.param(name, storage, id=f"{name}{storage.suffix}")
    for name in specs.SPECS
    for storage in _VARIANTS
]


def _stored(values, fmt):
    """float32 ``values`` as a column stored in ``fmt`` (None: float32)."""
    return values.astype(FORMATS[fmt]).view(np.uint16) if fmt in FORMATS else values.copy()


def _decoded(column, fmt):
    return column.view(FORMATS[fmt]).astype(np.float32) if fmt in FORMATS else column.copy()


def _launch(backend, spec, storage, host_columns, sizes, scalars, flags, extra):
    """``update`` of ``storage`` over tensors of ``sizes`` (one segment each); the columns
    after the run, on the host."""
    if backend == "cpu":
        from pyopt.kernels.cpu import optim as kernels
    else:
        from pyopt.kernels.cuda import optim as kernels
    device = [[to_backend(c, backend) for c in tensor] for tensor in host_columns]
    segments = np.zeros((len(sizes), 1 + len(device[0]) + len(extra)), dtype=np.int64)
    for k, tensor in enumerate(device):
        segments[k, 1 : 1 + len(tensor)] = [_multi.locate(c)[1] for c in tensor]
        segments[k, 1 + len(tensor) :] = [e[k] for e in extra]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    kernels.update(spec, segments, offsets, scalars, flags, storage=storage)
    return [[to_host(c) for c in tensor] for tensor in device]


@pytest.mark.parametrize(("name", "storage"), KERNEL_CASES)
def test_every_variant_stores_the_rounding_of_the_float32_kernel(
    backend, monkeypatch, name, storage
):
    if backend == "cpu" and (name, storage) not in _CPU_CASES:
        pytest.skip("CPU compile time: a selection of the variants runs on the CPU (_CPU_CASES)")
    monkeypatch.setattr(config, "CPU_OPTIM_CHUNK", 97)  # units straddle tensor boundaries
    spec = specs.SPECS[name]
    rng = np.random.default_rng(len(name) + len(storage.suffix))
    sizes = (1, 7, 130) if backend == "cuda" else (1, 7, 1025, 4099)
    formats = storage.formats(spec)
    scalars = np.array([_SCALARS[name]], dtype=np.float32)
    flags = np.array([[_FLAGS[name][f] for f in spec.flags]], dtype=np.uint8).reshape(1, -1)
    # float32 values exactly representable where they are stored in 16 bits.
    start = []
    for n in sizes:
        values = [rng.standard_normal(n).astype(np.float32) for _ in spec.columns]
        for c, state in enumerate(spec.states, start=2):
            values[c] = np.abs(values[c]) * (0.01 if state.name == "grad_avg" else 1.0) + (
                1.0 if state.name == "square_avg" else 0.0
            )
        values = [_decoded(_stored(v, f), f) for v, f in zip(values, formats, strict=False)]
        start.append(values)
    columns = [[_stored(v, f) for v, f in zip(values, formats, strict=False)] for values in start]
    if storage.master:  # the master holds the param's exact value
        columns = [
            [*tensor, values[0].copy()] for tensor, values in zip(columns, start, strict=True)
        ]
    seed, streams = 2026, [3, 11, 5, 8]
    extra = []
    if storage.stochastic:
        extra = [[seed] * len(sizes), [s | (7 << 32) for s in streams[: len(sizes)]], [0, 64, 1, 2]]
    got = _launch(backend, spec, storage, columns, sizes, scalars, flags, extra)
    reference = _launch(
        backend, spec, specs.DEFAULT, [[v.copy() for v in values] for values in start],
        sizes, scalars, flags, [],
    )  # fmt: skip
    for k, (tensor, want) in enumerate(zip(got, reference, strict=True)):
        for c, column in enumerate(spec.columns[2:], start=2):
            assert _same_bits(tensor[c], _stored(want[c], formats[c])), f"tensor {k} {column}"
        if storage.master:
            assert _same_bits(tensor[-1], want[0]), f"tensor {k} master"
        if storage.stochastic:
            offset, begin = extra[1][k], extra[2][k]
            words = [philox.stream_word(begin + i, seed, offset) for i in range(sizes[k])]
            expected = np.array(
                [
                    rules.float32_to_bfloat16_stochastic(v, w)
                    for v, w in zip(want[0], words, strict=True)
                ],
                dtype=np.uint16,
            )
        else:
            expected = _stored(want[0], formats[0])
        assert _same_bits(tensor[0], expected), f"tensor {k} param"
        assert _same_bits(tensor[1], columns[k][1]), f"tensor {k}: the grad was written"


def test_every_variant_has_a_gate_row_and_a_distinct_name():
    from pyopt.kernels.cuda import gate

    names = {specs.kernel_name(spec, s) for spec in specs.SPECS.values() for s in specs.STORAGES}
    assert len(names) == len(specs.SPECS) * len(specs.STORAGES)
    assert {f"optim.{n}" for n in names} <= {k.id for k in gate.KERNELS}
    for name in names:
        assert specs.kernel_name(*specs.variant_of(name)) == name


def test_bytes_per_element_of_the_mixed_modes():
    adam, sgd = specs.ADAM, specs.SGD
    # bf16 params + fp32 master + fp32 state: SGD-momentum 2 + 2 + 4 + 4 + 4 + 4.
    master = specs.Storage("bfloat16", master=True)
    assert master.bytes_per_element(sgd, 4, has_buffer=True) == 20
    assert master.bytes_per_element(adam, 4) == 2 + 2 + 8 + 8 + 8
    assert specs.Storage("bfloat16", "bfloat16").bytes_per_element(adam, 4) == 2 + 4 + 4 + 4
    assert specs.Storage(state="bfloat16").bytes_per_element(adam, 4) == 12 + 8
    assert specs.DEFAULT.bytes_per_element(adam, 4) == adam.bytes_per_element(4) == 28


# --- the optimizers -------------------------------------------------------------------


def _model(dtype, rng, backend="cpu"):
    """16-bit params of awkward sizes beside a float32 one (its own dtype's kernel)."""
    host = [rng.standard_normal(n).astype(dtype) for n in (1, 1023, 1025)]
    host.append(rng.standard_normal(7).astype(np.float32))
    return host


def _grads(params, rng, scale=1.0):
    return [(rng.standard_normal(p.shape) * scale).astype(p.dtype) for p in params]


MASTER_CASES = [
    pytest.param(name, dtype, id=f"{name}-{dtype}")
    for name in OPTIMIZER_CASES
    for dtype in ("bfloat16", "float16")
]


@pytest.mark.parametrize(("name", "fmt"), MASTER_CASES)
def test_master_weights_are_the_float32_optimizer_rounded(name, fmt):
    case = OPTIMIZER_CASES[name]
    rng = np.random.default_rng(7)
    params = _model(FORMATS[fmt], rng)
    shadow = [p.astype(np.float32) for p in params]
    opt = getattr(optim, case.rule)(params, **case.kwargs, master_weights=True)
    ref = getattr(optim, case.rule)(shadow, **case.kwargs)
    for _ in range(4):
        grads = _grads(params, rng, case.grad_scale or 1.0)
        opt.step(grads, grad_scale=case.grad_scale)
        ref.step([g.astype(np.float32) for g in grads], grad_scale=case.grad_scale)
        for p, q in zip(params, shadow, strict=True):
            assert _same_bits(p, q.astype(p.dtype))
    masters = [opt.state_dict()["state"][i]["master_param"] for i in range(3)]
    assert all(_same_bits(m, q) for m, q in zip(masters, shadow, strict=False))
    assert "master_param" not in opt.state_dict()["state"][3]  # the float32 param has none


@pytest.mark.parametrize("name", ["Adam", "SGD-momentum"])
def test_master_weights_on_cuda(cuda_backend, name):
    case = OPTIMIZER_CASES[name]
    rng = np.random.default_rng(8)
    host = [rng.standard_normal(n).astype(np.float16) for n in (1, 130)]
    params = [to_backend(p, cuda_backend) for p in host]
    shadow = [p.astype(np.float32) for p in host]
    opt = getattr(optim, case.rule)(params, **case.kwargs, master_weights=True)
    ref = getattr(optim, case.rule)(shadow, **case.kwargs)
    for _ in range(2):
        grads = _grads(host, rng)
        opt.step([to_backend(g, cuda_backend) for g in grads])
        ref.step([g.astype(np.float32) for g in grads])
    for p, q in zip(params, shadow, strict=True):
        assert _same_bits(to_host(p), q.astype(np.float16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_master_the_params_are_the_rounded_float32_step(fmt):
    """No master (torch's fused Adam on bf16 params): each step computes in float32 from
    the 16-bit params and rounds them once; the float32 state is kept exactly."""
    rng = np.random.default_rng(9)
    params = _model(FORMATS[fmt], rng)
    opt = optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        before = [p.astype(np.float32) for p in params]
        state = opt.state_dict()["state"]
        ref = optim.AdamW(before, lr=1e-2)
        if state:
            ref.load_state_dict(opt.state_dict())
        grads = _grads(params, rng)
        opt.step(grads)
        ref.step([g.astype(np.float32) for g in grads])
        assert all(_same_bits(p, q.astype(p.dtype)) for p, q in zip(params, before, strict=True))
    assert opt.state_dict()["state"][1]["exp_avg"].dtype == np.float32


def test_bfloat16_state_halves_the_state_and_round_trips(tmp_path):
    rng = np.random.default_rng(10)
    params = _model(BF16, rng)
    opt = optim.Adam(params, lr=1e-2, master_weights=True, state_dtype="bfloat16")
    for _ in range(3):
        opt.step(_grads(params, rng))
    state = opt.state_dict()
    assert state["state"][1]["exp_avg"].dtype == BF16
    assert state["state"][3]["exp_avg_sq"].dtype == BF16  # the float32 param's too
    assert state["state"][1]["master_param"].dtype == np.float32
    pyopt.save(tmp_path / "ck.pyopt", state)
    loaded = pyopt.load(tmp_path / "ck.pyopt")
    twin_params = [p.copy() for p in params]
    twin = optim.Adam(twin_params, lr=1e-2, master_weights=True, state_dtype="bfloat16")
    twin.load_state_dict(loaded)
    grads = _grads(params, rng)
    opt.step(grads)
    twin.step(grads)
    assert all(_same_bits(p, q) for p, q in zip(params, twin_params, strict=True))


def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_stalls():
    n, steps, lr = 4096, 200, 1e-4  # each step moves 1e-4, a twentieth of an ulp at 1
    runs = {}
    for mode in ("float32", "nearest", "stochastic"):
        p = np.ones(n, np.float32 if mode == "float32" else BF16)
        opt = optim.SGD([p], lr=lr, stochastic_rounding=mode == "stochastic", seed=1)
        for _ in range(steps):
            opt.step([np.ones(n, p.dtype)])
        runs[mode] = float(p.astype(np.float64).mean())
    moved = 1.0 - runs["float32"]
    assert runs["nearest"] == 1.0  # every update vanishes
    assert abs((1.0 - runs["stochastic"]) - moved) < 0.05 * moved


def test_stochastic_rounding_is_reproducible_by_seed():
    def run(seed):
        rng = np.random.default_rng(0)
        params = _model(BF16, rng)
        opt = optim.Adam(params, lr=1e-3, stochastic_rounding=True, seed=seed)
        for _ in range(3):
            opt.step(_grads(params, rng))
        return params

    first, again, other = run(5), run(5), run(6)
    assert all(_same_bits(a, b) for a, b in zip(first, again, strict=True))
    assert not all(_same_bits(a, b) for a, b in zip(first[1:3], other[1:3], strict=True))


@pytest.mark.parametrize(
    ("kwargs", "params", "error", "match"),
    [
        ({"master_weights": True, "stochastic_rounding": True}, BF16, ValueError, "not both"),
        ({"state_dtype": "float16"}, BF16, TypeError, "state_dtype must be"),
        ({"state_dtype": "bfloat16"}, np.float64, TypeError, "state_dtype"),
        ({"master_weights": 1}, BF16, TypeError, "master_weights must be a bool"),
        ({"seed": -1}, BF16, ValueError, "seed"),
    ],
)
def test_bad_precision_options_are_rejected(kwargs, params, error, match):
    with pytest.raises(error, match=match):
        optim.Adam([np.zeros(3, params)], **kwargs)


def test_functional_master_params_are_validated_before_anything_changes():
    p = np.ones(5, BF16)
    m, v, steps = np.zeros(5, np.float32), np.zeros(5, np.float32), np.zeros(1, np.int64)
    g = np.ones(5, BF16)
    cases = [
        ([np.ones(5, np.float64)], TypeError, "master_params"),
        ([np.ones(4, np.float32)], ValueError, "shape"),
        ([None], ValueError, "give its float32 copy"),
    ]
    for masters, error, match in cases:
        with pytest.raises(error, match=match):
            pyopt.functional.adam_([p], [g], [m], [v], None, steps, master_params=masters)
    with pytest.raises(ValueError, match="must be None"):
        f32 = np.ones(5, np.float32)
        pyopt.functional.adam_(
            [f32], [f32.copy()], [m], [v], None, steps, master_params=[np.ones(5, np.float32)]
        )
    with pytest.raises(TypeError, match="with bfloat16 params it must be float32 or bfloat16"):
        pyopt.functional.adam_([p], [g], [np.zeros(5)], [np.zeros(5)], None, steps)
    assert (p.astype(np.float32) == 1).all() and not m.any() and steps[0] == 0
