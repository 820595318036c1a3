"""The optimizer kernels of both backends against the scalar rules they compile.

Kernel level: ``update(spec, segments, offsets, scalars, flags)`` over a segment table of
separately allocated tensors (no public layer). The cases come from the specs of
``kernels/specs.py``: every rule, every combination of its flags, float32 and float64,
with two scalar rows in one call (different step counts) and several tensors of awkward
sizes, the CPU's work units shrunk so that they straddle tensor boundaries. The expected
values are the pure-Python rule applied element by element in the tensor's dtype: bit for
bit in float64 (the kernels inline the rule and set no fastmath flag), to rounding in
float32. A state a segment's flags leave unused is passed with address 0 and must not be
touched; one passed anyway for another segment must come back bit-identical.
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np
import pytest

from pyopt import _multi
from pyopt.kernels import config, specs

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-6, np.float64: 0.0}
SIZES = {"cpu": (1, 7, 1025, 99991), "cuda": (1, 7, 130, 333)}
SCALARS = {  # a realistic value of each scalar name of the specs
    "grad_mult": 0.5, "param_mult": 0.99, "weight_decay": 0.1, "beta1_weight": 0.1,
    "beta2": 0.999, "one_minus_beta2": 0.001, "bias_correction2_sqrt": math.sqrt(1 - 0.999**3),
    "eps": 1e-3, "neg_step_size": -0.1 / (1 - 0.9**3), "momentum": 0.9,
    "one_minus_dampening": 0.9, "neg_lr": -0.1, "neg_clr": -0.09, "alpha": 0.99,
    "one_minus_alpha": 0.01, "rho": 0.9, "one_minus_rho": 0.1,
}  # fmt: skip


def _flag_cases(spec):
    """Every combination of the spec's flags (SGD's buffer flags only where they mean
    something: a first step needs a buffer)."""
    for values in itertools.product((True, False), repeat=len(spec.flags)):
        flags = dict(zip(spec.flags, values, strict=True))
        if flags.get("first") and not flags.get("has_buffer"):
            continue
        yield flags


CASES = [
    pytest.param(spec, flags, id=f"{name}-" + "-".join(k for k, v in flags.items() if v))
    for name, spec in specs.SPECS.items()
    for flags in _flag_cases(spec)
]


def _rows(spec, flags, dtype):
    """Two scalar rows (the second a different "step") and their flags."""
    first = [SCALARS[name] for name in spec.scalars]
    second = [
        0.5 * s if name.startswith("neg") else s
        for name, s in zip(spec.scalars, first, strict=True)
    ]
    if not flags.get("has_buffer", True) and "momentum" in spec.scalars:
        for row in (first, second):
            row[spec.scalars.index("momentum")] = 0.0  # no buffer: momentum 0, as the host sends
    scalars = np.array([first, second], dtype=dtype)
    row_flags = np.array([[flags[f] for f in spec.flags]] * 2, dtype=np.uint8).reshape(2, -1)
    return scalars, row_flags


def _expected(spec, flags, columns, scalars):
    """The rule applied element by element in the dtype, with the kernels' access rules."""
    dtype = columns[0].dtype.type
    out = [c.copy() for c in columns]
    rule_flags = [flags[f] for f in spec.rule_flags]
    for i in range(columns[0].size):
        states = [
            out[c][i] if spec.uses(state, "read", flags) else dtype(0)
            for c, state in enumerate(spec.states, start=2)
        ]
        new = spec.rule(out[0][i], out[1][i], *states, *(dtype(s) for s in scalars), *rule_flags)
        out[0][i] = new[0]
        for c, state in enumerate(spec.states, start=2):
            if spec.uses(state, "write", flags):
                out[c][i] = new[c - 1]
    return out


def _device(backend):
    """The backend's launcher module, host-to-device and back."""
    if backend == "cpu":
        from pyopt.kernels.cpu import optim

        return optim, np.copy, np.asarray
    from numba import cuda

    from pyopt.kernels.cuda import optim

    return optim, cuda.to_device, lambda a: a.copy_to_host()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "flags"), CASES)
def test_update_matches_the_rule(backend, monkeypatch, spec, flags, dtype):
    monkeypatch.setattr(config, "CPU_OPTIM_CHUNK", 97)  # units straddle tensor boundaries
    module, to_device, to_host = _device(backend)
    rng = np.random.default_rng(len(CASES))
    sizes = SIZES[backend]
    host = [
        [rng.standard_normal(n).astype(dtype) for _ in spec.columns] for n in sizes
    ]  # per tensor: param, grad, states
    for tensor in host:  # states as the rules keep them: sums of squares >= 0, ḡ² <= v
        for c, state in enumerate(spec.states, start=2):
            tensor[c] = np.abs(tensor[c]) * (0.01 if state.name == "grad_avg" else 1.0)
            tensor[c] += 1.0 if state.name == "square_avg" else 0.0
    scalars, row_flags = _rows(spec, flags, dtype)
    device = [[to_device(a) for a in tensor] for tensor in host]
    segments = np.zeros((len(sizes), 1 + len(spec.columns)), dtype=np.int64)
    for k, tensor in enumerate(device):
        segments[k, 0] = k % 2
        for c, state in enumerate((None, None, *spec.states)):
            used = (
                state is None or spec.uses(state, "read", flags) or spec.uses(state, "write", flags)
            )
            segments[k, 1 + c] = _multi.locate(tensor[c])[1] if used else 0
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    module.update(spec, segments, offsets, scalars, row_flags)
    for k, tensor in enumerate(host):
        expected = _expected(spec, flags, tensor, scalars[k % 2])
        for c, (name, got) in enumerate(zip(spec.columns, device[k], strict=True)):
            got = to_host(got)
            scale = max(1.0, float(np.max(np.abs(expected[c]))))
            err = float(np.max(np.abs(got.astype(np.float64) - expected[c]))) / scale
            assert err <= RTOL[dtype], f"tensor {k} ({sizes[k]}) {name}: {err:.1e}"


@pytest.mark.parametrize(("spec", "flags"), CASES)
def test_cpu_update_is_the_same_with_one_thread_and_two(spec, flags):
    from pyopt.kernels.cpu import optim

    rng = np.random.default_rng(1)
    n = 3 * int(config.CPU_OPTIM_CHUNK) + 5
    base = [np.abs(rng.standard_normal(n)) for _ in spec.columns]
    scalars, row_flags = _rows(spec, flags, np.float64)
    results = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        arrays = [a.copy() for a in base]
        segments = np.array([[0, *(a.ctypes.data for a in arrays)]], dtype=np.int64)
        numba.set_num_threads(threads)
        try:
            optim.update(spec, segments, np.array([0, n], np.int64), scalars, row_flags)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        results.append(arrays)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_generated_kernels_are_registered_in_the_gate():
    from pyopt.kernels.cuda import gate

    ids = {k.id for k in gate.KERNELS}
    assert {f"optim._{name}_kernel" for name in specs.SPECS} <= ids


def test_bytes_per_element_match_the_documented_traffic():
    assert specs.ADAM.bytes_per_element(4) == 28
    assert specs.ADAM.bytes_per_element(4, amsgrad=True) == 36
    assert specs.SGD.bytes_per_element(4) == 12
    assert specs.SGD.bytes_per_element(4, has_buffer=True, first=True) == 16
    assert specs.SGD.bytes_per_element(4, has_buffer=True) == 20
    assert specs.ADAGRAD.bytes_per_element(4) == 20
    assert specs.RMSPROP.bytes_per_element(4) == 20
    assert specs.RMSPROP.bytes_per_element(4, centered=True, has_buffer=True) == 36
    assert specs.ADADELTA.bytes_per_element(8) == 56


def test_access_flags_are_the_flags_that_decide_state_traffic():
    assert specs.ADAM.access_flags == ("amsgrad",)
    assert specs.SGD.access_flags == ("has_buffer", "first")
    assert specs.RMSPROP.access_flags == ("centered", "has_buffer")
    assert specs.ADAGRAD.access_flags == ()
