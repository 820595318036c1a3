"""pyopt bench's runner (bench/suite.py): timing arithmetic, output files, table, plots, CLI.

Stand-in cases (tiny NumPy work, or a fake clock) replace bench/cases.py's real ones: these
tests check the runner, not the kernels, and assert no timings of the real machine.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

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


def _tiny_cases(backend, quick, families):
    assert backend == "cpu"
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
    def cases(backend, quick, families):
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

    def cases(backend, quick, families):
        calls.append((backend, quick, families))
        return []

    monkeypatch.setattr(case_module, "cases", cases, raising=False)
    monkeypatch.setitem(suite.PROBE_BYTES, "cpu", 1 << 20)
    status, out = _run(tmp_path, "--quick", "--family", "optim", "--family", "clip")
    assert status == 0 and calls == [("cpu", True, {"optim", "clip"})]
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


def test_progress_redraws_one_line_and_clears_it():
    stream = io.StringIO()
    bar = suite.Progress(4, stream, width=8)
    bar.show("probe")
    bar.done = 2
    bar.show("adam_step flat-16M (cpu) torch")
    bar.close()
    text = stream.getvalue()
    assert re.match(r"\r\[\.{8}\] 0/4 +\d+ s  probe", text)
    assert re.search(r"\r\[####\.{4}\] 2/4 +\d+ s  adam_step flat-16M \(cpu\) torch", text)
    assert text.endswith("\r") and "\n" not in text
    suite.Progress(4, None).show("nothing to draw on")  # no stream: a no-op


def test_compile_report_runs_cold_then_warm_on_one_fresh_cache(monkeypatch):
    # Stands in for the real snippet (tens of seconds of JIT): the cache folder is empty in
    # the first process and holds what the first process left there in the second.
    snippet = (
        "import json, os, pathlib, sys\n"
        "cache = pathlib.Path(os.environ['NUMBA_CACHE_DIR'])\n"
        "cold = not any(cache.iterdir())\n"
        "(cache / 'marker').write_text('x')\n"
        "assert sys.argv[1:] == ['cpu', 'clip,optim']\n"
        "print(json.dumps({'import_s': 0.25, 'adam_step_s': 3.0 if cold else 0.5}))\n"
    )
    monkeypatch.setattr(suite, "_COMPILE_SNIPPET", snippet)
    report = suite.compile_report("cpu", {"optim", "clip"})
    assert report["cold"] == {"import_s": 0.25, "adam_step_s": 3.0, "total_s": 3.0}
    assert report["warm"] == {"import_s": 0.25, "adam_step_s": 0.5, "total_s": 0.5}


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
