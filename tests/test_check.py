"""``pyopt check`` (pyopt/_check.py): the CPU run passes with the exact JSON schema, the
CUDA run under the simulator (or on a GPU), a broken or raising kernel makes failed rows
and a non-zero exit, an unusable CUDA is one line and exit 2, an interrupt keeps the rows
that ran and goes on; the torch family passes, fails where pyopt.torch's glue is broken,
and is one skipped line (not a failure) without torch.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import CUDASIM

from pyopt import _check
from pyopt.kernels.cpu import clip as cpu_clip
from pyopt.kernels.cpu import optim as cpu_optim

ROW_KEYS = {"family", "case", "max_error", "limit", "status"}
TORCH = importlib.util.find_spec("torch") is not None


def _run(tmp_path, *argv):
    """``main(argv + --json)``: the exit status and the JSON document."""
    path = tmp_path / "check.json"
    status = _check.main([*argv, "--json", str(path)])
    return status, json.loads(path.read_text())


def _assert_schema(document):
    assert set(document) == {"device", "versions", "checks", "skipped"}
    for key in ("numpy", "numba", "python", "pyopt"):
        assert document["versions"][key]
    for entry in document["skipped"]:
        assert set(entry) == {"family", "reason"} and entry["family"] in _check.FAMILIES
        assert isinstance(entry["reason"], str) and entry["reason"]
    for row in document["checks"]:
        assert set(row) == ROW_KEYS
        assert row["family"] in _check.FAMILIES and row["status"] in ("pass", "fail")
        assert isinstance(row["limit"], float) and row["limit"] >= 0
        if row["max_error"] is not None:
            assert isinstance(row["max_error"], float)


def test_cpu_quick_passes_with_the_exact_schema(tmp_path, capsys):
    status, document = _run(tmp_path, "--device", "cpu", "--quick")
    out = capsys.readouterr().out
    assert status == 0, out
    _assert_schema(document)
    assert document["device"]["backend"] == "cpu" and document["device"]["cores"] >= 1
    # on the CPU only the torch family has a need (torch itself)
    skipped = [s["family"] for s in document["skipped"]]
    assert skipped == ([] if TORCH else ["torch"])
    rows = document["checks"]
    assert len(rows) == len(_check.checks("cpu", _check.SIZES["quick"]))
    assert {r["family"] for r in rows} == set(_check.FAMILIES) - set(skipped)
    assert all(r["status"] == "pass" and r["max_error"] <= r["limit"] for r in rows)
    # float32 rows pass with room to spare, not by a hair
    rel = [r for r in rows if r["case"].endswith("float32") and r["limit"] == 2e-5]
    assert max(r["max_error"] for r in rel) < 0.1 * 2e-5
    assert f"{len(rows)} passed, 0 failed" in out
    assert "family" in out and "max error" in out and "limit" in out


@pytest.mark.skipif(not TORCH, reason="the torch family needs torch")
def test_torch_family_repeats_every_case_through_pyopt_torch(tmp_path, capsys):
    """Every batch-norm configuration (both passes, both layouts), every optimizer case
    and layout, every dropout measure: one torch row each, all passing on the CPU."""
    status, document = _run(tmp_path, "--device", "cpu", "--quick", "--family", "torch")
    assert status == 0, capsys.readouterr().out
    _assert_schema(document)
    assert document["skipped"] == []
    rows = document["checks"]
    assert rows and {r["family"] for r in rows} == {"torch"}
    assert all(r["status"] == "pass" for r in rows)
    cases = [r["case"] for r in rows]
    sizes = _check.SIZES["quick"]
    others = [c.case for c in _check.checks("cpu", sizes, ["batchnorm", "optim"])]
    bn = [c for c in others if c.startswith(("forward ", "backward "))]
    assert sum(c.startswith("functional.batch_norm ") for c in cases) == len(bn)
    assert sum("channels-last" in c for c in cases) == sum("axis=-1" in c for c in bn)
    assert sum(c.startswith("optim.") for c in cases) == len(others) - len(bn)
    assert sum("grad_scale" in c for c in cases) == sum("grad_scale" in c for c in others)
    dropout = [c for c in cases if c.startswith("nn.Dropout ")]
    assert len(dropout) == len(_check._DROPOUT_MEASURES) * len(sizes.dropout) * len(sizes.dtypes)
    assert len(cases) == len(others) + len(dropout)


def test_a_broken_kernel_fails_its_rows_and_the_run(tmp_path, monkeypatch):
    """Adam's launcher adds 1e-4 to one param element after each step: every Adam and
    AdamW row fails, every other rule still passes, the exit status is 1."""
    original = cpu_optim.update

    def broken(spec, segments, offsets, scalars, *args, **kwargs):
        original(spec, segments, offsets, scalars, *args, **kwargs)
        if spec.name == "adam":  # the last segment's last param element
            address = int(segments[-1, 1]) + (int(offsets[-1] - offsets[-2]) - 1) * scalars.itemsize
            element = np.ctypeslib.as_array(
                ctypes.cast(address, ctypes.POINTER(np.ctypeslib.as_ctypes_type(scalars.dtype))),
                shape=(1,),
            )
            element[0] += 1e-4

    monkeypatch.setattr(cpu_optim, "update", broken)
    status, document = _run(tmp_path, "--device", "cpu", "--quick", "--family", "optim")
    assert status == 1
    rows = document["checks"]
    failed = {r["case"] for r in rows if r["status"] == "fail"}
    adam = {r["case"] for r in rows if r["case"].startswith("Adam")}
    sizes = _check.SIZES["quick"]
    rules = sum(case.rule.startswith("Adam") for case in _check.OPTIMIZER_CASES.values())
    assert failed == adam and len(adam) == rules * len(sizes.optimizer) * len(sizes.dtypes)
    assert all(r["max_error"] > r["limit"] for r in rows if r["case"] in failed)


def test_a_kernel_that_raises_is_a_failed_row_not_a_crash(tmp_path, monkeypatch, capsys):
    def raises(*args, **kwargs):
        raise RuntimeError("launch failed (test)")

    monkeypatch.setattr(cpu_clip, "clamp_", raises)
    status, document = _run(tmp_path, "--device", "cpu", "--quick", "--family", "clip")
    assert status == 1
    rows = document["checks"]
    value = [r for r in rows if r["case"].startswith("clip_grad_value_")]
    assert value and all(r["status"] == "fail" and r["max_error"] is None for r in value)
    assert all(r["status"] == "pass" for r in rows if r not in value)
    assert capsys.readouterr().out.count("raised RuntimeError: launch failed (test)") == len(value)


@pytest.mark.skipif(not TORCH, reason="the torch family needs torch")
@pytest.mark.parametrize(
    ("breakage", "prefixes", "marker"),
    [
        # In-place results lost: the running statistics and every optimizer step.
        ("as_array copies", ("optim.", "functional.batch_norm forward train"), ""),
        # The output of a channels-last input comes back contiguous.
        ("layout lost", ("functional.batch_norm forward",), "channels-last"),
    ],
)
def test_broken_torch_glue_fails_its_rows(tmp_path, monkeypatch, breakage, prefixes, marker):
    """Exactly the rows that depend on the broken piece fail (and the run exits 1)."""
    from pyopt.torch import functional, optim

    if breakage == "as_array copies":
        # A classic glue bug: a copy of the tensor's memory instead of a view of it. Each
        # module holds its own name for as_array (from ... import as_array).
        for module in (functional, optim):
            monkeypatch.setattr(module, "as_array", lambda t: t.detach().numpy().copy())
    else:
        logical = functional._in_logical_order
        monkeypatch.setattr(
            functional, "_in_logical_order", lambda t, order: logical(t, order).contiguous()
        )
    status, document = _run(tmp_path, "--device", "cpu", "--quick", "--family", "torch")
    assert status == 1
    rows = document["checks"]
    failed = [r["case"] for r in rows if r["status"] == "fail"]
    assert failed == [
        r["case"] for r in rows if r["case"].startswith(prefixes) and marker in r["case"]
    ]
    # an inf (the layout check) is null in the JSON
    assert all(
        r["max_error"] is None or r["max_error"] > r["limit"] for r in rows if r["case"] in failed
    )


def test_without_torch_the_family_is_one_skipped_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    status, document = _run(
        tmp_path, "--device", "cpu", "--quick", "--family", "torch", "--family", "clip"
    )
    out = capsys.readouterr().out
    assert status == 0, out
    _assert_schema(document)
    assert [s["family"] for s in document["skipped"]] == ["torch"]
    assert "torch is not importable (ModuleNotFoundError" in document["skipped"][0]["reason"]
    rows = document["checks"]
    assert rows and {r["family"] for r in rows} == {"clip"}
    assert all(r["status"] == "pass" for r in rows)
    skip_lines = [line for line in out.splitlines() if line.startswith("torch ")]
    assert len(skip_lines) == 1
    assert "skipped: torch is not importable" in skip_lines[0] and skip_lines[0].endswith("skip")
    assert f"{len(rows)} passed, 0 failed, torch skipped in " in out
    # the torch family alone: no rows, exit 0
    status, document = _run(tmp_path, "--device", "cpu", "--family", "torch")
    assert status == 0 and document["checks"] == [] and len(document["skipped"]) == 1


def test_an_interrupt_keeps_what_ran_and_goes_on(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_clip, "clamp_", interrupted)
    path = tmp_path / "check.json"
    with pytest.raises(KeyboardInterrupt):
        _check.main(["--device", "cpu", "--quick", "--family", "clip", "--json", str(path)])
    # the first gradient list's clip_grad_norm_ rows ran; its clip_grad_value_ row did not
    cases = [r["case"] for r in json.loads(path.read_text())["checks"]]
    assert len(cases) == len(_check.CLIP_NORM_TYPES)
    assert all(c.startswith("clip_grad_norm_") for c in cases)
    not_run = len(_check.checks("cpu", _check.SIZES["quick"], ["clip"])) - len(cases)
    assert (
        f"{len(cases)} passed, 0 failed, {not_run} not run (interrupted)" in capsys.readouterr().out
    )


def test_unusable_cuda_is_one_clear_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from pyopt import _backend

    monkeypatch.setattr(_backend, "cuda_unavailable_reason", lambda: "no GPU here (test)")
    monkeypatch.delenv("PYOPT_DEVICE", raising=False)
    path = tmp_path / "check.json"
    assert _check.main(["--device", "cuda", "--json", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not path.exists()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "CUDA is unusable: no GPU here (test)" in lines[0]
    # auto falls back to the CPU
    status, document = _run(tmp_path, "--device", "auto", "--quick", "--family", "clip")
    assert status == 0 and document["device"]["backend"] == "cpu"


def test_module_entry_point_without_a_gpu():
    """``python -m pyopt._check --device cuda`` with no GPU visible (and no simulator)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYOPT_DEVICE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pyopt._check", "--device", "cuda"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is unusable" in lines[0], proc.stderr


@pytest.mark.sim
def test_cuda_run_passes(cuda_backend, tmp_path, capsys):
    """The whole CUDA path: Numba device arrays in, every family, dropout's mask equal to
    the CPU's. Under the simulator: its tiny sizes with tiny launches; on a GPU: --quick."""
    status, document = _run(tmp_path, "--device", cuda_backend, "--quick")
    out = capsys.readouterr().out
    assert status == 0, out
    _assert_schema(document)
    device = document["device"]
    assert device["backend"] == "cuda" and device["simulator"] == CUDASIM
    sizes = _check.SIZES["simulator" if CUDASIM else "quick"]
    rows = document["checks"]
    assert len(rows) == len(_check.checks("cuda", sizes))
    # torch's CUDA tensors are out of the simulator's reach; on a GPU torch may lack CUDA
    skipped = {s["family"] for s in document["skipped"]}
    assert skipped <= {"torch"} and (skipped or not CUDASIM)
    assert {r["family"] for r in rows} == set(_check.FAMILIES) - skipped
    same_mask = [r for r in rows if r["case"].startswith("forward == CPU")]
    assert len(same_mask) == len(sizes.dropout) * len(sizes.dtypes)
    assert all(r["status"] == "pass" for r in rows)


def test_error_measure():
    """Relative to the output's scale (at least 1); NaN and inf never pass."""
    e = np.array([4.0, -2.0])
    assert _check._max_error([(e + np.array([4e-6, 0.0]), e)]) == pytest.approx(1e-6)
    assert _check._max_error([(np.array([1e-6]), np.zeros(1))]) == pytest.approx(1e-6)
    assert np.isnan(_check._max_error([(np.array([np.nan, 1.0]), e)]))
    assert _check._max_error([(np.array([np.inf, 1.0]), e)]) == np.inf
    assert _check._max_error([(np.ones(3), np.ones(2))]) == np.inf
    assert _check.Result("clip", "c", np.nan, 0.0).status == "fail"
    assert _check.Result("clip", "c", np.nan, 0.0).row()["max_error"] is None
