"""The CPU optimizer launchers against float64 NumPy and the scalar rules they compile.

Kernel level: the launchers get flat 1-D NumPy arrays and the scalars of
``kernels/rules.py`` directly (no public layer). Every variant of every rule (each flag
that changes which state is read or written, and the weight-decay / Nesterov branches)
runs in float32 and float64 on sizes that straddle vector widths and work units:

* against a vectorized float64 NumPy transcription of torch's single-tensor step, to
  ~1e-15 (float64) / ~1e-6 (float32) relative;
* in float64, bit for bit against the pure-Python rule applied element by element, with
  inf / NaN / huge gradients and units of a few elements (the kernels inline the rule and
  set no fastmath flag, so nothing may differ);
* with unused state arrays as length-0 views into a NaN-filled buffer, which must stay
  NaN (and no crash);
* with one thread and with two, bit for bit.

``grad_sumsq`` is checked against ``np.sum(g.astype(float64) ** 2)``, for its inf/NaN flag
and for identical bits whatever the thread count.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numba
import numpy as np
import pytest

from pyopt.kernels import config, rules
from pyopt.kernels.cpu import optim

DTYPES = [np.float32, np.float64]
# Relative to the scale of the expected array (max(1, max |expected|)), as in helpers.py:
# where a step cancels most of a value, the error is that of its larger inputs. Measured
# worst cases: float32 1.1e-6 (centered RMSprop's momentum buffer: √(v − ḡ²) cancels),
# float64 0 (the transcription below rounds exactly like the kernels).
RTOL = {np.float32: 2e-6, np.float64: 1e-15}
SIZES = [
    0,
    1,
    7,  # shorter than any vector
    1023,  # just under a power of two
    1025,  # just over
    99991,  # prime near 100k: two default units, the second partial
    1048583,  # prime > 2**20: 17 units
]
MANY_THREADS = 2  # what "several threads" means on the 2-core CI machines

# --- The rules: array arguments, scalar arguments, and which arrays a variant uses -----

ARRAYS = {
    "adam": ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "sgd": ("param", "grad", "momentum_buffer"),
    "adagrad": ("param", "grad", "state_sum"),
    "rmsprop": ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
    "adadelta": ("param", "grad", "square_avg", "acc_delta"),
}
LAUNCHERS = {
    "adam": optim.adam_update,
    "sgd": optim.sgd_update,
    "adagrad": optim.adagrad_update,
    "rmsprop": optim.rmsprop_update,
    "adadelta": optim.adadelta_update,
}
RULES = {
    "adam": rules.adam,
    "sgd": rules.sgd,
    "adagrad": rules.adagrad,
    "rmsprop": rules.rmsprop,
    "adadelta": rules.adadelta,
}
WEIGHT_DECAY = 0.1
LR = 0.1


def adam_scalars(amsgrad, l2, adamw=False, maximize=False, step=3):
    beta1, beta2 = 0.9, 0.999
    return {
        "grad_mult": -0.5 if maximize else 0.5,  # a clip coefficient / loss scale
        "param_mult": 1.0 - LR * WEIGHT_DECAY if adamw else 1.0,
        "weight_decay": WEIGHT_DECAY if l2 else 0.0,
        "beta1_weight": 1.0 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1.0 - beta2,
        "bias_correction2_sqrt": math.sqrt(1.0 - beta2**step),
        "eps": 1e-3,
        "neg_step_size": -LR / (1.0 - beta1**step),
        "amsgrad": amsgrad,
    }


def sgd_scalars(momentum, l2, first=False, nesterov=False, dampening=0.0):
    return {
        "grad_mult": 0.5,
        "weight_decay": WEIGHT_DECAY if l2 else 0.0,
        "momentum": momentum,
        "one_minus_dampening": 1.0 - dampening,
        "neg_lr": -LR,
        "first": first,
        "nesterov": nesterov,
    }


def adagrad_scalars(l2, step=3, lr_decay=0.01):
    return {
        "grad_mult": 0.5,
        "weight_decay": WEIGHT_DECAY if l2 else 0.0,
        "eps": 1e-3,
        "neg_clr": -LR / (1.0 + (step - 1) * lr_decay),
    }


def rmsprop_scalars(centered, momentum, l2):
    alpha = 0.99
    return {
        "grad_mult": 0.5,
        "weight_decay": WEIGHT_DECAY if l2 else 0.0,
        "alpha": alpha,
        "one_minus_alpha": 1.0 - alpha,
        "eps": 1e-3,
        "momentum": momentum,
        "neg_lr": -LR,
        "centered": centered,
    }


def adadelta_scalars(l2):
    rho = 0.9
    return {
        "grad_mult": 0.5,
        "weight_decay": WEIGHT_DECAY if l2 else 0.0,
        "rho": rho,
        "one_minus_rho": 1.0 - rho,
        "eps": 1e-3,
        "neg_lr": -1.0,
    }


def used_arrays(rule, s):
    """The arrays a variant reads or writes (the others are passed as length 0)."""
    unused = set()
    if rule == "adam" and not s["amsgrad"]:
        unused.add("max_exp_avg_sq")
    if rule == "sgd" and s["momentum"] == 0.0:
        unused.add("momentum_buffer")
    if rule == "rmsprop":
        if not s["centered"]:
            unused.add("grad_avg")
        if not s["momentum"] > 0.0:
            unused.add("momentum_buffer")
    return [name for name in ARRAYS[rule] if name not in unused]


def _variants():
    """(id, rule, scalars) for every flag combination of every rule."""
    for amsgrad, l2 in itertools.product([False, True], repeat=2):
        yield f"adam-amsgrad{amsgrad:d}-l2{l2:d}", "adam", adam_scalars(amsgrad, l2)
    yield "adamw", "adam", adam_scalars(False, False, adamw=True)
    yield "adamw-amsgrad-maximize", "adam", adam_scalars(True, False, adamw=True, maximize=True)
    for l2 in [False, True]:
        yield f"sgd-l2{l2:d}", "sgd", sgd_scalars(0.0, l2)
    for first, nesterov, l2 in itertools.product([False, True], repeat=3):
        yield (
            f"sgd-momentum-first{first:d}-nesterov{nesterov:d}-l2{l2:d}",
            "sgd",
            sgd_scalars(0.9, l2, first, nesterov),
        )
    yield "sgd-momentum-dampening", "sgd", sgd_scalars(0.9, True, dampening=0.3)
    for l2 in [False, True]:
        yield f"adagrad-l2{l2:d}", "adagrad", adagrad_scalars(l2)
    for centered, momentum, l2 in itertools.product([False, True], [0.0, 0.9], [False, True]):
        yield (
            f"rmsprop-centered{centered:d}-momentum{momentum > 0:d}-l2{l2:d}",
            "rmsprop",
            rmsprop_scalars(centered, momentum, l2),
        )
    for l2 in [False, True]:
        yield f"adadelta-l2{l2:d}", "adadelta", adadelta_scalars(l2)


VARIANTS = list(_variants())
VARIANT_IDS = [v[0] for v in VARIANTS]


# --- Inputs -----------------------------------------------------------------------


def make_arrays(rule, s, n, dtype, seed=0):
    """Used arrays with values that keep every state in its valid range, and unused
    arrays as length-0 views into NaN-filled guards (returned separately)."""
    rng = np.random.default_rng(seed)

    def normal(scale=1.0):
        return (scale * rng.standard_normal(n)).astype(dtype)

    def positive(lo, hi):
        return rng.uniform(lo, hi, n).astype(dtype)

    grad_avg = normal(0.5)
    values = {
        "param": normal(),
        "grad": normal(2.0),
        "exp_avg": normal(0.3),
        "exp_avg_sq": positive(0.01, 2.0),
        "max_exp_avg_sq": positive(0.01, 2.0),
        "momentum_buffer": normal(0.5),
        "state_sum": positive(0.0, 3.0),
        "acc_delta": positive(0.0, 0.5),
        "grad_avg": grad_avg,
        # Centered RMSprop needs v >= ḡ², as the steps that built them guarantee.
        "square_avg": (grad_avg.astype(np.float64) ** 2 + positive(0.1, 1.0)).astype(dtype),
    }
    used = used_arrays(rule, s)
    arrays, guards = {}, {}
    for name in ARRAYS[rule]:
        if name in used:
            arrays[name] = values[name]
        else:
            guards[name] = np.full(n + 16, np.nan, dtype)
            arrays[name] = guards[name][8:8]
    return arrays, guards


def cast_scalars(s, dtype):
    """The scalars as the kernel sees them: floats rounded to ``dtype`` (bools kept)."""
    return {k: v if isinstance(v, bool) else float(dtype(v)) for k, v in s.items()}


def launch(rule, arrays, s):
    LAUNCHERS[rule](*(arrays[a] for a in ARRAYS[rule]), *s.values())


# --- float64 NumPy transcription of torch's single-tensor steps ---------------------


def _lerp(start, end, weight):  # torch.lerp's two forms
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def _grad(p, g, s):
    g = g * s["grad_mult"]
    return g + s["weight_decay"] * p if s["weight_decay"] != 0.0 else g


def expected_step(rule, a, s):
    """New values of the used arrays, from float64 copies ``a`` and scalars ``s``."""
    p, out = a["param"], {}
    if rule == "adam":
        p = p * s["param_mult"]
        g = _grad(p, a["grad"], s)
        out["exp_avg"] = m = _lerp(a["exp_avg"], g, s["beta1_weight"])
        out["exp_avg_sq"] = second = a["exp_avg_sq"] * s["beta2"] + s["one_minus_beta2"] * g * g
        if s["amsgrad"]:
            out["max_exp_avg_sq"] = second = np.maximum(a["max_exp_avg_sq"], second)
        denom = np.sqrt(second) / s["bias_correction2_sqrt"] + s["eps"]
        out["param"] = p + s["neg_step_size"] * m / denom
    elif rule == "sgd":
        g = _grad(p, a["grad"], s)
        if s["momentum"] != 0.0:
            if s["first"]:
                buf = g
            else:
                buf = a["momentum_buffer"] * s["momentum"] + s["one_minus_dampening"] * g
            out["momentum_buffer"] = buf
            g = g + s["momentum"] * buf if s["nesterov"] else buf
        out["param"] = p + s["neg_lr"] * g
    elif rule == "adagrad":
        g = _grad(p, a["grad"], s)
        out["state_sum"] = total = a["state_sum"] + g * g
        out["param"] = p + s["neg_clr"] * g / (np.sqrt(total) + s["eps"])
    elif rule == "rmsprop":
        g = _grad(p, a["grad"], s)
        out["square_avg"] = v = a["square_avg"] * s["alpha"] + s["one_minus_alpha"] * g * g
        if s["centered"]:
            out["grad_avg"] = ga = _lerp(a["grad_avg"], g, s["one_minus_alpha"])
            avg = np.sqrt(v - ga * ga) + s["eps"]
        else:
            avg = np.sqrt(v) + s["eps"]
        if s["momentum"] > 0.0:
            out["momentum_buffer"] = buf = a["momentum_buffer"] * s["momentum"] + g / avg
            out["param"] = p + s["neg_lr"] * buf
        else:
            out["param"] = p + s["neg_lr"] * g / avg
    else:
        g = _grad(p, a["grad"], s)
        out["square_avg"] = v = a["square_avg"] * s["rho"] + s["one_minus_rho"] * g * g
        delta = np.sqrt(a["acc_delta"] + s["eps"]) / np.sqrt(v + s["eps"]) * g
        out["acc_delta"] = a["acc_delta"] * s["rho"] + s["one_minus_rho"] * delta * delta
        out["param"] = p + s["neg_lr"] * delta
    return out


def assert_guards_untouched(guards):
    for name, guard in guards.items():
        assert np.isnan(guard).all(), f"{name}: unused state written"


# --- Tests ------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(("rule", "scalars"), [v[1:] for v in VARIANTS], ids=VARIANT_IDS)
def test_update_matches_float64_numpy(rule, scalars, dtype, n):
    s = cast_scalars(scalars, dtype)
    arrays, guards = make_arrays(rule, s, n, dtype, seed=n)
    before = {k: v.astype(np.float64) for k, v in arrays.items()}
    want = expected_step(rule, before, s)
    launch(rule, arrays, s)
    assert_guards_untouched(guards)
    assert set(want) == set(used_arrays(rule, s)) - {"grad"}
    np.testing.assert_array_equal(arrays["grad"], before["grad"], err_msg="grad modified")
    for name, expected in want.items():
        actual = arrays[name]
        assert actual.dtype == dtype and actual.shape == (n,)
        assert np.isfinite(expected).all()
        scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
        np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL[dtype] * scale, err_msg=name)


SPECIAL_GRADS = [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, 1e300, -1e-300]


@pytest.mark.parametrize(("rule", "scalars"), [v[1:] for v in VARIANTS], ids=VARIANT_IDS)
def test_float64_update_is_the_rule_bit_for_bit(rule, scalars, monkeypatch):
    """float64 kernels equal ``rules.<rule>`` evaluated on np.float64 scalars exactly,
    inf / NaN / subnormal / overflowing gradients included, over units of 5 elements."""
    monkeypatch.setattr(config, "CPU_OPTIM_CHUNK", 5)
    n = 1025
    s = cast_scalars(scalars, np.float64)
    arrays, guards = make_arrays(rule, s, n, np.float64, seed=1)
    arrays["grad"][np.linspace(0, n - 1, len(SPECIAL_GRADS)).astype(int)] = SPECIAL_GRADS
    arrays["param"][3] = np.inf  # with weight decay: inf·λ; AdamW: inf·(1 - lr·λ)
    used = used_arrays(rule, s)
    updated = [a for a in ARRAYS[rule] if a != "grad"]
    want = {name: arrays[name].copy() for name in used}
    with np.errstate(all="ignore"):
        for i in range(n):
            values = [arrays[a][i] if a in used else np.float64(0) for a in ARRAYS[rule]]
            new = RULES[rule](*values, *s.values())
            for name, value in zip(updated, new, strict=True):
                if name in used:
                    want[name][i] = value
        launch(rule, arrays, s)
    assert_guards_untouched(guards)
    for name in used:
        np.testing.assert_array_equal(arrays[name], want[name], err_msg=name, strict=True)


@pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < MANY_THREADS, reason="Numba has a single thread here"
)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("rule", "scalars"),
    [
        ("adam", adam_scalars(True, True)),
        ("sgd", sgd_scalars(0.9, True, nesterov=True)),
        ("adagrad", adagrad_scalars(True)),
        ("rmsprop", rmsprop_scalars(True, 0.9, True)),
        ("adadelta", adadelta_scalars(True)),
    ],
    ids=list(ARRAYS),
)
def test_update_bits_do_not_depend_on_thread_count(rule, scalars, dtype):
    s = cast_scalars(scalars, dtype)
    results = []
    threads = numba.get_num_threads()
    try:
        for t in (1, MANY_THREADS):
            numba.set_num_threads(t)
            arrays, _ = make_arrays(rule, s, SIZES[-1], dtype)
            launch(rule, arrays, s)
            results.append(arrays)
    finally:
        numba.set_num_threads(threads)
    for name in used_arrays(rule, s):
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


# --- grad_sumsq ---------------------------------------------------------------------


def sumsq_rows(grad):
    out = np.full((optim.grad_sumsq_blocks(grad.size), 2), -1.0)
    optim.grad_sumsq(grad, out)
    return out


@pytest.fixture(params=["default", "tiny"])
def sumsq_block(request, monkeypatch):
    """Default blocks, or blocks of 7 elements (many rows, a partial last one)."""
    if request.param == "tiny":
        monkeypatch.setattr(config, "CPU_SUMSQ_BLOCK", 7)
    return int(config.CPU_SUMSQ_BLOCK)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_grad_sumsq_matches_numpy(n, dtype, sumsq_block):
    grad = (3.0 * np.random.default_rng(n).standard_normal(n)).astype(dtype)
    rows = sumsq_rows(grad)
    assert optim.grad_sumsq_blocks(n) == -(-n // sumsq_block)
    assert rows.shape == (-(-n // sumsq_block), 2)
    if n == 0:
        return
    g64 = grad.astype(np.float64)
    want = np.sum(g64**2)
    np.testing.assert_allclose(rows[:, 0].sum(), want, rtol=1e-12)
    # Each row is its own block.
    blocks = np.add.reduceat(g64**2, np.arange(0, n, sumsq_block))
    np.testing.assert_allclose(rows[:, 0], blocks, rtol=1e-12)
    np.testing.assert_array_equal(rows[:, 1], 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_grad_sumsq_flags_non_finite(bad, where, dtype, sumsq_block):
    n = 99991
    grad = np.random.default_rng(0).standard_normal(n).astype(dtype)
    i = {"first": 0, "middle": n // 2, "last": n - 1}[where]
    grad[i] = bad
    rows = sumsq_rows(grad)
    block = i // sumsq_block
    assert np.isnan(rows[block, 1])
    assert np.isnan(rows[block, 0]) if np.isnan(bad) else rows[block, 0] == np.inf
    others = np.delete(rows, block, axis=0)
    np.testing.assert_array_equal(others[:, 1], 0.0)
    assert np.isfinite(others[:, 0]).all()


@pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < MANY_THREADS, reason="Numba has a single thread here"
)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_grad_sumsq_bits_do_not_depend_on_thread_count(dtype):
    grad = np.random.default_rng(2).standard_normal(SIZES[-1]).astype(dtype)
    threads = numba.get_num_threads()
    try:
        rows = []
        for t in (1, MANY_THREADS):
            numba.set_num_threads(t)
            rows.append(sumsq_rows(grad))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(rows[0], rows[1])


def test_resnet50_shapes():
    # By path: the repository root, home of bench/, is on sys.path only under
    # ``python -m pytest``.
    path = Path(__file__).resolve().parent.parent / "bench" / "shapes.py"
    spec = importlib.util.spec_from_file_location("bench_shapes", path)
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    resnet50 = shapes.RESNET50_PARAM_SHAPES
    assert len(resnet50) == 161
    assert sum(math.prod(s) for s in resnet50.values()) == 25_557_032
    names = list(resnet50)
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert names[-2:] == ["fc.weight", "fc.bias"]
    assert resnet50["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert resnet50["fc.weight"] == (1000, 2048)
