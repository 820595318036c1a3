"""Compile gate: every registered CUDA kernel compiles to sm_90 PTX with the real compiler.

The registry (``pyopt.kernels.cuda.gate.KERNELS``) lists each kernel with the signatures
its launcher uses (each family's kernel tests check the launches against it). This
session runs under the CUDA simulator, which has no compiler, so one subprocess without
``NUMBA_ENABLE_CUDASIM`` compiles everything (no GPU needed) and reports JSON; each
(kernel, dtype) is then one test here. Canary kernels prove the PTX checks can fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip(
        "numba-cuda is not installed (pip install pyopt-kernels[cuda13])", allow_module_level=True
    )

from pyopt.kernels.cuda import gate

# Runs in the subprocess: the registry, then canaries that must fail (and one that must
# pass) the checks.
_DRIVER = """
import json, sys
import numpy as np
from numba import cuda
from pyopt.kernels.cuda import gate


def float64_literal(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = x[i] * 0.1  # a Python float: computed in float64


def float32_literal(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = x[i] * np.float32(0.1)


def int64_times_float32(x, n):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = x[i] * n  # int64 * float32 promotes to float64


def dynamic_local_index(x):
    tmp = cuda.local.array(8, np.float32)
    for k in range(8):
        tmp[k] = x[k]
    x[0] = tmp[cuda.threadIdx.x % 8]  # a runtime index keeps tmp in local memory


report = gate.run()
report["canaries"] = {
    fn.__name__: gate.compile_case(fn, sig, "float32")
    for fn, sig in [
        (float64_literal, "void(float32[::1])"),
        (float32_literal, "void(float32[::1])"),
        (int64_times_float32, "void(float32[::1], int64)"),
        (dynamic_local_index, "void(float32[::1])"),
    ]
}
json.dump(report, sys.stdout)
"""


@pytest.fixture(scope="session")
def gate_report():
    """One compile of every registered (kernel, signature), in a non-simulator process."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"gate subprocess failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout)


def _case(report, kernel_id, dtype):
    (case,) = [c for c in report["cases"] if (c["kernel"], c["dtype"]) == (kernel_id, dtype)]
    return case


@pytest.mark.parametrize(
    ("kernel_id", "dtype", "signature"), gate.cases(), ids=[f"{k}-{t}" for k, t, _ in gate.cases()]
)
def test_kernel_compiles_to_sm90_ptx(gate_report, kernel_id, dtype, signature):
    case = _case(gate_report, kernel_id, dtype)
    assert case["signature"] == signature
    assert case["error"] is None, case["error"]
    assert case["f64"] == [], f"float64 arithmetic in a float32 kernel: {case['f64'][:5]}"
    assert case["local"] == [], f"local memory (unpromoted register array): {case['local'][:5]}"
    if case["ptxas"] is not None:  # nvJitLink present: ptxas's own resource report
        assert case["ptxas"]["spill_bytes"] == 0 and case["ptxas"]["stack_bytes"] == 0
    assert gate.passed(case)


def test_every_kernel_is_registered(gate_report):
    assert gate_report["unregistered"] == []


@pytest.mark.parametrize("canary", ["float64_literal", "int64_times_float32"])
def test_gate_flags_float64_in_float32_kernels(gate_report, canary):
    result = gate_report["canaries"][canary]
    assert result["error"] is None
    assert result["f64"], f"{canary} computes in float64 but the PTX check saw nothing"
    assert not gate.passed(result)


def test_gate_passes_a_float32_clean_kernel(gate_report):
    clean = gate_report["canaries"]["float32_literal"]
    assert (clean["error"], clean["f64"], clean["local"]) == (None, [], [])
    assert gate.passed(clean)


def test_gate_flags_local_memory(gate_report):
    canary = gate_report["canaries"]["dynamic_local_index"]
    assert canary["local"] and not gate.passed(canary)


def test_check_ptx_ignores_comments_and_float64_kernels():
    ptx = "// mul.f64 in a comment\n\tadd.f32 \t%f1, %f2, %f3;\n\tld.global.f64 \t%fd1, [%rd1];"
    assert gate.check_ptx(ptx, "float32")["f64"] == ["ld.global.f64 \t%fd1, [%rd1];"]
    assert gate.check_ptx(ptx, "float64") == {"f64": [], "local": []}
