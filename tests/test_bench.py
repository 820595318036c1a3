"""pyopt bench: the runner (bench/suite.py), its cases (bench/cases.py) on tiny shapes, and
the progress output it shares with pyopt train (pyopt/_progress.py).

Stand-in cases (tiny NumPy work, or a fake clock) test the runner's arithmetic, files,
table and plots; the real cases run on shrunken shapes to check that every provider sets up
and passes its check, with the baseline columns it should have. No timing is asserted.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

from pyopt._progress import KernelLoad, Progress
from pyopt.bench import cases as case_module
from pyopt.bench import suite
from pyopt.bench.cases import Case, Unavailable

REPO = Path(__file__).resolve().parents[1]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


class FakeClock:
    """A clock that only moves when a fake provider says its call took some time."""

    def __init__(self):
        self.now = 0.0

    def time_call(self, fn):
        t0 = self.now
        fn()
        return self.now - t0


def _fake_case(clock, p50_ms, min_bytes, seen, baselines=("numpy", "torch")):
    """Providers whose calls take p50_ms[name] x (1/3, 2/3, 1, 4/3, 5/3), cycling."""

    def provider(name):
        def setup(rotate):
            seen[name] = rotate
            steps = itertools.cycle(np.array([1, 2, 3, 4, 5]) / 3 * p50_ms[name] * 1e-3)

            def run():
                clock.now += next(steps)

            return run

        return setup

    providers = {name: provider(name) for name in p50_ms}
    return Case("optim", "adam_step", "flat-16M", "float32", "cpu", min_bytes, providers, baselines)


def _numpy_case(op, n, providers):
    """A real (tiny) case: each provider maps to ``make(x, out)`` returning a call."""

    def setup_of(make):
        def setup(rotate):
            xs = [np.full(n, i + 1, np.float32) for i in range(rotate)]
            out = np.empty(n, np.float32)
            calls = itertools.cycle([make(x, out) for x in xs])
            return lambda: next(calls)()

        return setup

    setups = {name: setup_of(make) for name, make in providers.items()}
    return Case("init", op, f"n={n}", "float32", "cpu", 8 * n, setups)


def _unavailable(x, out):
    raise Unavailable("torch is not importable in this test")


def _broken(x, out):
    raise RuntimeError("a bug in a provider")


def _tiny_cases(backend, quick, families, dtype):
    assert backend == "cpu" and dtype == "float32"
    scale = {
        "pyopt": lambda x, out: lambda: np.multiply(x, np.float32(2), out=out),
        "numpy": lambda x, out: lambda: np.copyto(out, x * np.float32(2)),
        "torch": _unavailable,
    }
    return [_numpy_case("scale", n, scale) for n in (1, 1023, 4099)]


@pytest.fixture
def tiny_suite(monkeypatch):
    """suite.main on three tiny NumPy cases and a 1 MiB bandwidth probe."""
    monkeypatch.setattr(case_module, "cases", _tiny_cases, raising=False)
    monkeypatch.setitem(suite.PROBE_BYTES, "cpu", 1 << 20)


def _run(tmp_path, *extra):
    out = tmp_path / "out"
    argv = ["--backend", "cpu", "--out", str(out), "--repeats", "2", "--no-progress"]
    return suite.main([*argv, "--no-compile-times", *extra]), out


def test_rotation_sizes_the_sets_beyond_the_cache():
    assert suite.rotation(1) == suite.MAX_ROTATE
    assert suite.rotation(suite.ROTATE_BYTES) == 1
    assert suite.rotation(28 * 2**24) == 1
    assert suite.rotation(suite.ROTATE_BYTES // 4) == 4
    assert suite.rotation(suite.ROTATE_BYTES // 4 - 1) == 5  # 4 sets would fall short
    assert suite.rotation(0) == suite.MAX_ROTATE


def test_speedup_and_bandwidth_arithmetic_on_a_fake_clock():
    clock, seen = FakeClock(), {}
    p50 = {"pyopt": 1.0, "numpy": 4.0, "torch": 2.0}
    min_bytes = 28 * 2**24
    case = _fake_case(clock, p50, min_bytes, seen)
    heard = []
    times, skipped, failed = suite.measure_case(case, 5, clock.time_call, heard.append)
    assert (skipped, failed) == ({}, {})
    assert heard == ["setup pyopt", "setup numpy", "setup torch", "timing pyopt, numpy, torch"]
    assert seen == {"pyopt": 1, "numpy": 1, "torch": 1}  # 448 MiB a call: no rotation
    assert {k: len(v) for k, v in times.items()} == {"pyopt": 5, "numpy": 5, "torch": 5}

    probe_gbs = 50.0
    rows = suite.case_rows(case, times, probe_gbs, {"device": "fake"})
    by = {r["provider"]: r for r in rows}
    for name, ms in p50.items():
        r = by[name]
        assert r["p50_ms"] == pytest.approx(ms, rel=1e-9)
        # percentiles of (1, 2, 3, 4, 5) / 3: p20 = 1.8 / 3, p80 = 4.2 / 3
        assert r["p20_ms"] == pytest.approx(ms * 1.8 / 3, rel=1e-9)
        assert r["p80_ms"] == pytest.approx(ms * 4.2 / 3, rel=1e-9)
        assert r["gbs"] == pytest.approx(min_bytes / (ms * 1e-3) / 1e9, rel=1e-9)
        assert r["pct_of_bandwidth"] == pytest.approx(r["gbs"] / probe_gbs, rel=1e-9)
        assert r["device"] == "fake" and r["min_bytes"] == min_bytes
    assert by["pyopt"]["speedup_vs_numpy"] == pytest.approx(4.0, rel=1e-9)
    assert by["pyopt"]["speedup_vs_torch"] == pytest.approx(2.0, rel=1e-9)
    assert by["torch"]["speedup_vs_numpy"] == pytest.approx(2.0, rel=1e-9)
    assert by["numpy"]["speedup_vs_numpy"] == pytest.approx(1.0, rel=1e-9)
    assert by["numpy"]["speedup_vs_torch"] == pytest.approx(0.5, rel=1e-9)


def test_unavailable_and_failing_providers_are_recorded_not_timed():
    clock, seen = FakeClock(), {}
    case = _fake_case(clock, {"pyopt": 1.0}, 1024, seen, baselines=("numpy", "torch-fused"))
    case.providers["numpy"] = lambda rotate: _unavailable(None, None)
    case.providers["torch-fused"] = lambda rotate: _broken(None, None)
    times, skipped, failed = suite.measure_case(case, 3, clock.time_call)
    assert list(times) == ["pyopt"]
    assert seen == {"pyopt": suite.MAX_ROTATE}  # 1 KiB a call: the most input sets
    assert skipped == {"numpy": "torch is not importable in this test"}
    assert failed == {"torch-fused": "RuntimeError: a bug in a provider"}
    (row,) = suite.case_rows(case, times, None, {})
    assert row["speedup_vs_numpy"] is None and row["speedup_vs_torch_fused"] is None
    assert row["pct_of_bandwidth"] is None


def test_main_writes_json_csv_and_table(tiny_suite, tmp_path, capsys):
    status, out = _run(tmp_path)
    assert status == 0
    result = json.loads((out / "results.json").read_text())
    for key in ("machine", "bandwidth_probe", "compile", "versions", "git_commit", "timestamp"):
        assert key in result
    assert result["settings"]["backends"] == ["cpu"] and result["settings"]["repeats"] == 2
    probe = result["bandwidth_probe"]["cpu"]
    assert probe["reference"] == "triad" and probe["reference_gbs"] == probe["triad_gbs"] > 0
    assert result["versions"]["numpy"] == np.__version__
    rows = result["rows"]
    assert [(r["shape"], r["provider"]) for r in rows] == [
        (f"n={n}", p) for n in (1, 1023, 4099) for p in ("pyopt", "numpy")
    ]
    assert [s["provider"] for s in result["skipped"]] == ["torch"] * 3
    assert result["failed"] == []
    for r in rows:
        assert r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"] and r["repeats"] == 2
        assert r["gbs"] == pytest.approx(r["min_bytes"] / (r["p50_ms"] * 1e-3) / 1e9)
        assert r["pct_of_bandwidth"] == pytest.approx(r["gbs"] / probe["reference_gbs"])
        assert r["speedup_vs_torch"] is None and r["speedup_vs_numpy"] > 0
        assert r["rotate"] == suite.MAX_ROTATE

    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == suite.CSV_COLUMNS
        table = list(reader)
    assert len(table) == len(rows)
    for line, r in zip(table, rows, strict=True):
        assert float(line["p50_ms"]) == pytest.approx(r["p50_ms"])
        assert float(line["speedup_vs_numpy"]) == pytest.approx(r["speedup_vs_numpy"])
        assert line["speedup_vs_torch"] == ""
        assert line["device"] and line["timestamp"] == result["timestamp"]
        assert "numpy=" + np.__version__ in line["versions"]

    printed = capsys.readouterr().out
    assert "x numpy" in printed and "x torch" in printed
    assert "skipped: torch for scale n=1 (cpu): torch is not importable" in printed
    assert "cpu bandwidth probe: triad" in printed
    assert str(out / "results.csv") in printed


def test_main_reports_a_failing_provider_and_still_writes(monkeypatch, tmp_path):
    def cases(backend, quick, families, dtype):
        bad = {"pyopt": lambda x, out: lambda: np.add(x, 1, out=out), "numpy": _broken}
        return [_numpy_case("add", 5, bad)]

    monkeypatch.setattr(case_module, "cases", cases, raising=False)
    monkeypatch.setitem(suite.PROBE_BYTES, "cpu", 1 << 20)
    status, out = _run(tmp_path)
    assert status == 1
    result = json.loads((out / "results.json").read_text())
    assert [r["provider"] for r in result["rows"]] == ["pyopt"]
    assert result["failed"] == [
        {
            "op": "add",
            "shape": "n=5",
            "backend": "cpu",
            "provider": "numpy",
            "reason": "RuntimeError: a bug in a provider",
        }
    ]


def test_family_and_quick_reach_the_cases(monkeypatch, tmp_path):
    calls = []

    def cases(backend, quick, families, dtype):
        calls.append((backend, quick, families, dtype))
        return []

    monkeypatch.setattr(case_module, "cases", cases, raising=False)
    monkeypatch.setitem(suite.PROBE_BYTES, "cpu", 1 << 20)
    argv = ("--quick", "--family", "optim", "--family", "clip", "--dtype", "float64")
    status, out = _run(tmp_path, *argv)
    assert status == 0 and calls == [("cpu", True, {"optim", "clip"}, "float64")]
    assert json.loads((out / "results.json").read_text())["rows"] == []


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pyopt[bench])")
def test_plot_writes_two_pngs_and_replots_from_the_json(tiny_suite, tmp_path):
    status, out = _run(tmp_path, "--plot")
    assert status == 0
    again = tmp_path / "replot"
    paths = suite.plot(out / "results.json", again)
    assert sorted(p.name for p in paths) == ["bandwidth.png", "speedup.png"]
    for folder in (out, again):
        for name in ("speedup.png", "bandwidth.png"):
            data = (folder / name).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_without_matplotlib_exits_2_before_running(monkeypatch, tmp_path, capsys):
    find_spec = importlib.util.find_spec

    def no_matplotlib(name, *args):
        return None if name == "matplotlib" else find_spec(name, *args)

    def cases(*args):
        raise AssertionError("no case may run when the plot cannot be made")

    monkeypatch.setattr(importlib.util, "find_spec", no_matplotlib)
    monkeypatch.setattr(case_module, "cases", cases, raising=False)
    status, out = _run(tmp_path, "--plot")
    assert status == 2 and not out.exists()
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_print_table_formats_rows_and_missing_speedups():
    clock = FakeClock()
    case = _fake_case(clock, {"pyopt": 0.5, "numpy": 2.0}, 10**6, {})
    times, _, _ = suite.measure_case(case, 5, clock.time_call)
    rows = suite.case_rows(case, times, 4.0, {})
    buf = io.StringIO()
    suite.print_table(rows, buf)
    header, rule, first, second = buf.getvalue().splitlines()
    assert header.split() == [
        "backend", "op", "shape", "provider", "p50", "ms", "GB/s", "%BW", "x", "numpy", "x", "torch",
    ]  # fmt: skip
    assert set(rule) == {"-"}
    # 1e6 B in 0.5 ms: 2 GB/s, 50% of 4 GB/s, 4x NumPy, no torch row: "-"
    assert first.split() == ["cpu", "adam_step", "flat-16M", "pyopt", "0.500", "2.0", "50%", "4.00", "-"]  # fmt: skip
    assert second.split() == ["numpy", "2.000", "0.5", "12%", "1.00", "-"]

    # CUDA cases' array baseline is CuPy: a column of its own.
    case = _fake_case(clock, {"pyopt": 0.5, "cupy": 1.0}, 10**6, {}, baselines=("cupy", "torch"))
    case.backend = "cuda"
    times, _, _ = suite.measure_case(case, 5, clock.time_call)
    buf = io.StringIO()
    suite.print_table(rows + suite.case_rows(case, times, 4.0, {}), buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split()[-6:] == ["x", "numpy", "x", "torch", "x", "cupy"]
    assert lines[2].split()[-3:] == ["4.00", "-", "-"]
    assert lines[4].split()[-3:] == ["-", "-", "2.00"]


def test_compile_report_runs_cold_then_warm_on_one_fresh_cache(monkeypatch, tmp_path):
    # Stands in for the real snippet (tens of seconds of JIT): the cache folder is empty in
    # the first process and holds what the first process left there in the second.
    snippet = (
        "import json, os, pathlib, sys\n"
        "cache = pathlib.Path(os.environ['NUMBA_CACHE_DIR'])\n"
        "cold = not any(cache.iterdir())\n"
        "(cache / 'marker').write_text('x')\n"
        "assert sys.argv[1:] == ['cpu', 'float64', 'adam_step,clip_grad_norm_'], sys.argv\n"
        "print(json.dumps({'import_s': 0.25, 'adam_step_s': 3.0 if cold else 0.5}))\n"
    )
    monkeypatch.setattr(suite, "_COMPILE_SNIPPET", snippet)
    ops = ["adam_step", "clip_grad_norm_", "adam_step"]
    own = tmp_path / "own-cache"
    own.mkdir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(own))  # the cache this process would use
    report = suite.compile_report("cpu", ops, "float64")
    assert report["cold"] == {"import_s": 0.25, "adam_step_s": 3.0, "total_s": 3.0}
    assert report["warm"] == {"import_s": 0.25, "adam_step_s": 0.5, "total_s": 0.5}
    assert report["cache"] == "a new temporary cache" and not any(own.iterdir())
    # own_cache (found empty by the caller): the same two runs, on that cache, which keeps
    # what the cold run left for the cases to load.
    report = suite.compile_report("cpu", ops, "float64", own_cache=True)
    assert (report["cold"]["adam_step_s"], report["warm"]["adam_step_s"]) == (3.0, 0.5)
    assert report["cache"] == "this run's own (empty) cache" and (own / "marker").exists()


def test_pick_backends(monkeypatch):
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 1)
    assert suite.pick_backends("auto") == (["cpu"], None)
    assert suite.pick_backends("cpu") == (["cpu"], None)
    backends, error = suite.pick_backends("cuda")
    assert backends == [] and "simulator" in error


def test_python_m_bench_help():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: pyopt bench")
    for option in ("--quick", "--out", "--backend", "--family", "--repeats", "--plot"):
        assert option in proc.stdout


def test_pyopt_console_script_forwards_to_the_suite(capsys):
    from pyopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "usage: pyopt bench" in capsys.readouterr().out


def test_main_names_the_machine_and_defaults_to_a_folder_named_after_it(
    tiny_suite, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["--backend", "cpu", "--repeats", "1", "--no-progress", "--no-compile-times"]
    assert suite.main(argv) == 0
    (folder,) = (tmp_path / "bench-results").iterdir()
    result = json.loads((folder / "results.json").read_text())
    machine = result["machine"]
    assert folder.name == suite.machine_tag(machine) and folder.name.endswith(
        f"-{machine['cores']}c"
    )
    triad = result["bandwidth_probe"]["cpu"]["triad_gbs"]
    assert f"{machine['cores']} cores" in machine["summary"]
    assert f"triad {triad:.1f} GB/s" in machine["summary"]
    if Path("/sys/devices/system/cpu/cpu0/cache").is_dir():  # Linux: the caches are named
        l3 = machine["cpu"]["caches"]["L3"]
        assert l3["size_kib"] > 0 and l3["shared_by_cpus"] >= 1
        assert f"L3 {l3['size_kib'] / 1024:g} MiB" in machine["summary"]
    assert f"machine: {machine['summary']}" in capsys.readouterr().out


# --- the real cases, on shapes small enough for a test ---
TINY_PARAMS = {"conv.weight": (8, 3, 3, 3), "bn.weight": (8,), "bn.bias": (8,), "fc.weight": (10, 72), "fc.bias": (10,)}  # fmt: skip


@pytest.fixture
def tiny_shapes(monkeypatch):
    """bench/cases.py's shapes shrunk: 64 Ki-element flat buffers, a 5-tensor model."""
    for name, value in {
        "FLAT": 1 << 16,
        "DROPOUT_2D": (64, 1000),
        "RESNET50_PARAM_SHAPES": TINY_PARAMS,
        "RESNET50_BN_SHAPES": {"bn1": (8, 6, 6), "bn2": (3, 5, 7)},
        "BN_MLP_SHAPES": ((40, 24),),
        "BN_QUICK": ((8, 6, 6),),
        "BN_BATCH": 4,
    }.items():
        monkeypatch.setattr(case_module, name, value)


def _providers(case_list):
    return {(c.op, c.shape): list(c.providers) for c in case_list}


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("family", case_module.FAMILIES)
def test_every_provider_of_the_full_run_sets_up_and_passes_its_check(tiny_shapes, family):
    """Every provider of ``family`` sets up (running the pyopt providers' checks against the
    reference) and runs; rows carry the speedup columns of the case's baselines."""
    full = case_module.cases("cpu", False, {family})
    quick = case_module.cases("cpu", True, {family})
    assert quick and set(_providers(quick)) <= set(_providers(full))
    # --quick: the main providers alone; torch's layers and the 16-bit steps have no
    # NumPy reference.
    main = ["pyopt", "torch"] if family in ("torch", "mixed") else ["pyopt", "numpy", "torch"]
    for providers in _providers(quick).values():
        assert providers == main
    for case in full:
        runs, skipped, failed = suite.setup_providers(case, 2)
        assert (skipped, failed) == ({}, {}), (case.op, case.shape)
        for run in runs.values():
            run()
        rows = suite.case_rows(case, {name: [1e-3] for name in runs}, 10.0, {})
        expected = {suite.speedup_key(b) for b in case.baseline_order}
        for row in rows:
            assert {k for k in row if k.startswith("speedup_vs_")} == expected
            # The run's dtype (float32), except the mixed family's: its mode names it.
            dtype = case.dtype if family == "mixed" else "float32"
            assert row["dtype"] == dtype and row["min_bytes"] == case.min_bytes


def test_full_run_providers_and_baselines_per_family(tiny_shapes):
    n = case_module.n_params(TINY_PARAMS)
    by = {(c.op, c.shape): c for c in case_module.cases("cpu", False)}

    forward = by["batch_norm_forward", "4x8x6x6 NCHW"]
    assert list(forward.providers) == ["pyopt", "numpy", "torch", "pyopt-kernel", "torch-nograd"]
    assert forward.baseline_order == ("numpy", "torch", "torch-nograd")
    backward = by["batch_norm_backward", "4x6x6x8 NHWC"]
    assert list(backward.providers) == ["pyopt", "numpy", "torch", "pyopt-kernel"]

    adam = by["adam_step", "flat-16M"]
    assert list(adam.providers) == [
        "pyopt", "numpy", "torch", "pyopt-kernel", "torch-single", "stream-floor",
    ]  # fmt: skip
    assert adam.min_bytes == 28 * (1 << 16)
    clipped = by["amsgrad_step", "resnet50 +clip"]  # the clip coefficient's extra read
    assert list(clipped.providers) == ["pyopt", "numpy", "torch"] and clipped.min_bytes == 40 * n
    assert clipped.baseline_order == ("numpy", "torch")
    rules = {op for op, shape in by if op.endswith("_step") and shape == "resnet50"}
    assert rules == {case_module.step_op(r) for r in case_module.RULES}
    assert {"sgd_nesterov_step", "rmsprop_centered_momentum_step"} <= rules

    assert list(by["dropout_forward", "64x1000 p=0.5"].providers)[-1] == "torch-native"
    assert by["dropout_backward", "flat-16M p=0.1"].min_bytes == 8 * (1 << 16)
    assert by["clip_grad_value_", "resnet50"].min_bytes == 8 * n
    assert by["clip_grad_norm_", "flat-16M"].min_bytes == 12 * (1 << 16)
    assert by["uniform_", "flat-16M"].min_bytes == 4 * (1 << 16)

    doubles = {(c.op, c.shape): c for c in case_module.cases("cpu", False, {"optim"}, "float64")}
    assert doubles["adam_step", "flat-16M"].min_bytes == 56 * (1 << 16)
    assert doubles["adam_step", "flat-16M"].dtype == "float64"
    with pytest.raises(ValueError, match="dtype"):
        case_module.cases("cpu", True, None, "float16")


def test_torch_family_times_every_rule_against_both_torch_modes(tiny_shapes):
    n = case_module.n_params(TINY_PARAMS)
    full = {c.op: c for c in case_module.cases("cpu", False, {"torch"})}
    assert list(full) == [case_module.step_op(r) for r in case_module.RULES]
    for rule, (_, _, mode, per_param) in case_module.RULES.items():
        case = full[case_module.step_op(rule)]
        other = "torch-foreach" if mode == "fused" else "torch-single"
        assert (case.family, case.shape) == ("torch", "resnet50 nn.Parameter")
        assert list(case.providers) == ["pyopt", "torch", other]
        assert case.baseline_order == ("torch", other)
        assert case.min_bytes == per_param * n
    (quick,) = case_module.cases("cpu", True, {"torch"})
    assert quick.op == "adam_step" and quick.baseline_order == ("torch",)
    assert case_module.KERNELS["torch"] == ("optim",)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_family_checks_pyopts_step_against_torchs(tiny_shapes, monkeypatch):
    """The pyopt provider's first step is compared with torch.optim's: a torch optimizer
    with twice the lr makes its setup fail, naming the rule."""
    (case,) = case_module.cases("cpu", True, {"torch"})
    runs, skipped, failed = suite.setup_providers(case, 1)
    assert (skipped, failed) == ({}, {})
    params = runs["pyopt"]()  # the flat views: each p.grad a view of one grad buffer
    assert len({p.grad.untyped_storage().data_ptr() for p in params}) == 1
    make = case_module._torch_optimizer

    def doubled_lr(*args, **kwargs):
        opt = make(*args, **kwargs)
        for group in opt.param_groups:
            group["lr"] *= 2
        return opt

    monkeypatch.setattr(case_module, "_torch_optimizer", doubled_lr)
    with pytest.raises(AssertionError, match=r"Adam step: pyopt differs from torch\.optim's"):
        case.providers["pyopt"](1)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_family_on_cuda_is_unavailable_without_a_gpu(tiny_shapes):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch can use CUDA here: the CUDA cases run")
    for case in case_module.cases("cuda", False, {"torch"}):
        runs, skipped, failed = suite.setup_providers(case, 1)
        assert runs == {} and failed == {} and set(skipped) == set(case.providers)
        assert all("cannot use CUDA" in reason for reason in skipped.values())


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_float64_cases_run_in_float64(tiny_shapes):
    for case in case_module.cases("cpu", True, {"batchnorm", "optim"}, "float64")[:3]:
        runs, skipped, failed = suite.setup_providers(case, 1)
        assert (skipped, failed) == ({}, {}) and set(runs) == {"pyopt", "numpy", "torch"}


def test_kernel_only_provider_replays_the_launches_of_the_public_call(tiny_shapes, monkeypatch):
    """pyopt-kernel's run is the launcher alone: the public layer is not called again, and
    each run updates the same buffer once more."""
    from pyopt import _optim_functional

    case = case_module.cases("cpu", False, {"optim"})[0]
    assert case.op == "adam_step"
    run = case.providers["pyopt-kernel"](1)

    def public_layer(*args, **kwargs):
        raise AssertionError("the kernel-only provider called the public layer")

    monkeypatch.setattr(_optim_functional, "run", public_layer)
    before = run().copy()
    after = run()
    assert not np.array_equal(before, after)


# --- progress (pyopt/_progress.py), shared with pyopt train ---
def test_progress_bar_redraws_one_line_and_clears_it():
    stream = io.StringIO()
    with Progress(stream, 4, bar=True, width=8) as bar:
        bar.phase("probe")
        bar.advance(2)
        bar.start("adam_step flat-16M (cpu)")
        bar.status("timing pyopt, torch")
        with bar.hidden():
            stream.write("<a result line>")
        bar.note("compiling the kernels")
    text = stream.getvalue()
    assert re.match(r"\r\[\.{8}\] 0/4 +\d+ s  probe", text)
    assert re.search(r"\r\[####\.{4}\] 2/4 +\d+ s  adam_step flat-16M \(cpu\): timing pyopt", text)
    assert re.search(r"\r +\r<a result line>", text)  # the bar cleared before it
    assert "\r" + " " * 20 in text and text.endswith("\r")  # and after the last draw
    assert text.count("\n") == 1 and "\rcompiling the kernels\n" in text


def test_progress_lines_off_a_terminal_with_a_heartbeat(monkeypatch):
    import pyopt._progress as progress_module

    monkeypatch.setattr(progress_module, "TICK_S", 0.02)
    stream = io.StringIO()  # not a terminal: lines
    with Progress(stream, 12, heartbeat_s=0.1) as lines:
        assert not lines.bar
        lines.phase("cpu bandwidth probe")
        lines.start("normal_ flat-16M (cpu): pyopt, numpy, torch")
        lines.status("setup numpy")  # not a line of its own
        deadline = time.perf_counter() + 5
        while "still" not in stream.getvalue() and time.perf_counter() < deadline:
            time.sleep(0.02)
        lines.advance()
        lines.start("uniform_ flat-16M (cpu): pyopt, numpy, torch")
        lines.note("compiling pyopt's CPU kernels")
    got = stream.getvalue().splitlines()
    assert got[:2] == ["cpu bandwidth probe", "[ 1/12] normal_ flat-16M (cpu): pyopt, numpy, torch"]
    assert re.fullmatch(
        r"  \.\.\. still normal_ flat-16M \(cpu\): pyopt, numpy, torch: setup numpy \(\d+ s elapsed\)",
        got[2],
    )
    assert got[-2:] == ["[ 2/12] uniform_ flat-16M (cpu): pyopt, numpy, torch", "compiling pyopt's CPU kernels"]  # fmt: skip
    assert "\r" not in stream.getvalue()


def test_progress_without_a_stream_writes_nothing_and_starts_no_thread():
    progress = Progress(None, 3)
    assert progress._thread is None
    progress.start("a")
    progress.note("b")
    progress.close()


_KERNEL_LOAD = """
import json, sys
import numpy as np
import pyopt
from pyopt._progress import KernelLoad
load = KernelLoad("cpu", ["clip"])
state, before = load.cache_state(), load.before()
pyopt.clip_grad_value_([np.ones(10, np.float32)], 0.5)
print(json.dumps([state, before, load.counts(), load.after("the call")]))
"""


def test_kernel_load_says_compiling_on_an_empty_cache_then_loading(tmp_path):
    """A fresh Numba cache: 'compiling', and a kernel compiled; the next process on it:
    'loading', and that kernel loaded (Numba's own cache counters)."""

    def first_call():
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-c", _KERNEL_LOAD], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    state, before, (compiled, loaded), after = first_call()
    assert state == "cold" and before.startswith("compiling pyopt's CPU kernels for gradient")
    assert "first use on this machine; cached for later runs" in before
    assert (compiled, loaded) == (1, 0)
    assert re.fullmatch(
        r".*: 1 compiled, 0 loaded from the Numba cache \(the call took \d+\.\d s\)", after
    )
    state, before, (compiled, loaded), after = first_call()
    assert state == "mixed"  # the norm and scale kernels were never called
    assert before.startswith("compiling or loading pyopt's CPU kernels")
    assert before.endswith("(some are in the Numba cache)")
    assert (compiled, loaded) == (0, 1)
    with pytest.raises(ValueError, match="unknown kernel families"):
        KernelLoad("cpu", ["bogus"])
    assert KernelLoad("cuda", ["optim"]).before().startswith("compiling pyopt's CUDA kernels")


def test_pyopt_bench_piped_prints_progress_lines_while_it_runs(tmp_path):
    """stderr a pipe: plain lines, the first before the run ends, naming the case and what
    the kernels' first calls will do; stdout keeps the results."""
    cmd = [sys.executable, "-m", "pyopt", "bench", "--family", "init", "--quick",
           "--no-compile-times", "--repeats", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    running_at_case = None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("[1/1] "):
            running_at_case = proc.poll() is None
    stdout = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, "\n".join(lines)
    assert running_at_case, lines  # the line came while the case still had to run
    assert lines[:2] == ["machine info", "cpu bandwidth probe"]
    assert lines[2] == "[1/1] normal_ flat-16M (cpu): pyopt, numpy, torch"
    assert re.match(
        r"(compiling|loading|compiling or loading).*kernels for dropout and init", lines[3]
    )
    assert "\r" not in "".join(lines) and "[1/1]" not in stdout
    assert "normal_" in stdout and "wrote " in stdout
