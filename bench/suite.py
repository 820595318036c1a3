"""``pyopt bench``: every kernel family on every usable backend, against NumPy and torch.

Run as ``pyopt bench`` (installed) or ``python -m bench`` from a checkout::

    pyopt bench [--quick] [--out DIR] [--backend auto|cpu|cuda] [--family NAME ...]
                [--repeats N] [--plot] [--no-progress] [--no-compile-times]

Steps: machine info and a bandwidth probe per backend (CPU: Numba copy/triad kernels on
arrays far larger than the last-level cache; GPU: a device-to-device copy timed with CUDA
events); ``import pyopt`` time and the first call of one op per family in a fresh process
with an empty Numba cache (cold) and in a second one on that cache (warm); then every case
of ``bench/cases.py``: each provider is set up (its JIT compile is never timed) on enough
rotating input sets that consecutive calls do not find their data in cache, and timed in
rounds with the providers interleaved (``_timing.interleaved``; CUDA events on the GPU).
Reported per (case, provider): p20/p50/p80 ms, effective GB/s (the case's minimum bytes
over p50), that as a fraction of the probe, and the speedup over each baseline provider
(baseline p50 / provider p50). Output: a table on stdout, ``<out>/results.json`` (all of
it) and ``<out>/results.csv`` (one row per case and provider); ``--plot`` adds
``speedup.png`` and ``bandwidth.png``, drawn from the JSON by :func:`plot`.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numba
import numpy as np

from . import cases as case_module
from ._timing import (
    bandwidth_probe,
    cold_compile_times,
    cuda_bandwidth_probe,
    cuda_device_info,
    cuda_event_timer,
    interleaved,
    machine_info,
    percentiles_ms,
    wall_time,
)
from .cases import Case, Unavailable

FAMILIES = ("batchnorm", "optim", "dropout", "clip", "init")
ROUND = 5  # timed calls of one provider in a row, after one untimed (interleaved's block)
WARMUP = 1
ROTATE_BYTES = 64 << 20  # a small case's rotating input sets add up to this (> the L3 here)
MAX_ROTATE = 8
PROBE_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}  # per array: far beyond any cache
CSV_COLUMNS = (
    "op",
    "family",
    "provider",
    "backend",
    "shape",
    "dtype",
    "p20_ms",
    "p50_ms",
    "p80_ms",
    "gbs",
    "pct_of_bandwidth",
    "speedup_vs_numpy",
    "speedup_vs_torch",
    "device",
    "git_commit",
    "versions",
    "timestamp",
)
BASES = {
    "gbs": "the case's minimum bytes per call (min_bytes) over the p50 time, in 1e9 B/s",
    "pct_of_bandwidth": (
        "gbs over the backend's probe (a fraction): the CPU triad GB/s (Numba, counting the "
        "bytes the kernel names, not the read-for-ownership of written lines, as STREAM "
        "does), the GPU device-to-device copy GB/s (read + write); in-place updates can "
        "pass 1.0 on the CPU"
    ),
    "speedup_vs_<baseline>": (
        "baseline p50 / provider p50, both measured in the same rounds of the same process"
    ),
    "timing": (
        f"warm-up excluded: setup makes a first call, then rounds of {WARMUP} untimed and "
        f"{ROUND} timed calls per provider, the provider order rotated between rounds; "
        f"inputs rotate over enough sets for >= {ROTATE_BYTES >> 20} MiB (at most "
        f"{MAX_ROTATE}); CUDA: events around each call on the default stream"
    ),
}

# One first call per family, in a fresh process: argv = backend, comma-separated families.
_COMPILE_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import pyopt
out = {"import_s": time.perf_counter() - t0}
import numpy as np
backend, families = sys.argv[1], set(sys.argv[2].split(","))
if backend == "cuda":
    import cupy as xp
    sync = xp.cuda.runtime.deviceSynchronize
else:
    xp, sync = np, lambda: None
x = xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 5, 5), dtype=np.float32))
w, b = xp.ones(3, xp.float32), xp.zeros(3, xp.float32)
saved = {}

def first(name, call):
    t0 = time.perf_counter()
    call()
    sync()
    out[name + "_s"] = time.perf_counter() - t0

if "batchnorm" in families:
    bn = lambda: pyopt.functional.batch_norm(x, w, b, xp.zeros_like(w), xp.ones_like(w))
    first("batch_norm_forward", lambda: saved.update(zip("ymi", bn())))
    bwd = lambda: pyopt.functional.batch_norm_backward(x, x, w, saved["m"], saved["i"])
    first("batch_norm_backward", bwd)
if families & {"optim", "clip"}:
    buf = pyopt.optim.ParamBuffer({"w": (3, 5), "b": (5,)}, np.float32, device=backend)
if "optim" in families:
    adam = pyopt.optim.Adam(buf.params, lr=1e-3)
    first("adam_step", lambda: adam.step(buf.grads))
if "dropout" in families:
    first("dropout_forward", lambda: pyopt.functional.dropout(x, 0.1, seed=1))
if "clip" in families:
    first("clip_grad_norm", lambda: pyopt.clip_grad_norm_(buf.grads, 1.0))
if "init" in families:
    first("normal_", lambda: pyopt.init.normal_(x))
print(json.dumps(out))
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pyopt bench``."""
    parser = argparse.ArgumentParser(
        prog="pyopt bench",
        description=(
            "Time every pyopt kernel family against NumPy and torch on this machine, with "
            "effective bandwidth against a measured memory-bandwidth probe."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer shapes and repeats (minutes on a laptop)"
    )
    parser.add_argument(
        "--out", default="bench-results", metavar="DIR", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the CPU, and the GPU when CUDA is usable",
    )
    parser.add_argument(
        "--family",
        action="append",
        choices=FAMILIES,
        metavar="NAME",
        help=f"only this kernel family (repeatable; one of {', '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="timed calls per provider (default: 30, --quick 5)"
    )
    parser.add_argument(
        "--plot", action="store_true", help="also write speedup.png and bandwidth.png"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-compile-times",
        action="store_true",
        help="skip the cold/warm first-call subprocesses",
    )
    return parser


class Progress:
    """One line on a terminal stream, redrawn with ``\\r``; does nothing without a stream."""

    def __init__(self, total: int, stream: IO[str] | None, width: int = 24):
        self.total, self.stream, self.width = total, stream, width
        self.done = 0
        self._last = 0
        self._started = time.perf_counter()

    def show(self, label: str) -> None:
        if self.stream is None:
            return
        filled = self.width * self.done // max(1, self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self._started
        line = f"[{bar}] {self.done}/{self.total} {elapsed:3.0f} s  {label}"[:119]
        self.stream.write("\r" + line + " " * max(0, self._last - len(line)))
        self.stream.flush()
        self._last = len(line)

    def close(self) -> None:
        if self.stream is not None and self._last:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()
            self._last = 0


def rotation(min_bytes: int) -> int:
    """Input sets a case's providers rotate over: enough for ``ROTATE_BYTES`` in all."""
    return max(1, min(MAX_ROTATE, math.ceil(ROTATE_BYTES / max(1, min_bytes))))


def measure_case(
    case: Case,
    repeats: int,
    time_call: Callable[[Callable[[], object]], float] = wall_time,
    status: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, str]]:
    """Seconds per call of each provider of ``case``, and the skipped and failed ones.

    ``status(text)`` hears what is being done (a progress bar's label).

    Returns ``(times, skipped, failed)``: ``times`` provider -> ``repeats`` seconds;
    ``skipped`` provider -> the ``Unavailable`` reason; ``failed`` provider -> the error a
    setup raised (a bug to report, not a reason to lose the rest of the run).
    """
    rotate = rotation(case.min_bytes)
    runs: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, setup in case.providers.items():
        if status is not None:
            status(f"setup {name}")
        try:
            runs[name] = setup(rotate)
        except Unavailable as exc:
            skipped[name] = str(exc) or "unavailable"
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    if not runs:
        return {}, skipped, failed
    if status is not None:
        status("timing " + ", ".join(runs))
    times = interleaved(runs, repeats, block=ROUND, warmup=WARMUP, time_call=time_call)
    return times, skipped, failed


def speedup_key(baseline: str) -> str:
    """Result-row key of the speedup over provider ``baseline``."""
    return "speedup_vs_" + baseline.replace("-", "_")


def case_rows(
    case: Case, times: dict[str, list[float]], probe_gbs: float | None, context: dict[str, Any]
) -> list[dict[str, Any]]:
    """One result row per timed provider of ``case`` (``context``: device, versions, ...)."""
    pct = {name: percentiles_ms(secs) for name, secs in times.items()}
    rows = []
    for name, p in pct.items():
        gbs = case.min_bytes / (p["p50"] * 1e-3) / 1e9
        row = {
            "op": case.op,
            "family": case.family,
            "provider": name,
            "backend": case.backend,
            "shape": case.shape,
            "dtype": case.dtype,
            "p20_ms": p["p20"],
            "p50_ms": p["p50"],
            "p80_ms": p["p80"],
            "min_bytes": case.min_bytes,
            "gbs": gbs,
            "pct_of_bandwidth": gbs / probe_gbs if probe_gbs else None,
            "repeats": len(times[name]),
            "rotate": rotation(case.min_bytes),
        }
        for baseline in case.baseline_order:
            base = pct.get(baseline)
            row[speedup_key(baseline)] = base["p50"] / p["p50"] if base else None
        rows.append({**row, **context})
    return rows


def compile_report(backend: str, families: Iterable[str]) -> dict[str, Any]:
    """``import pyopt`` and first-call seconds per family, cold (empty Numba cache) then warm.

    Two fresh processes on one new cache folder: the first compiles, the second loads.
    """
    argv = (backend, ",".join(sorted(families)))
    with tempfile.TemporaryDirectory() as cache:
        cold = cold_compile_times(_COMPILE_SNIPPET, *argv, cache_dir=cache)
        warm = cold_compile_times(_COMPILE_SNIPPET, *argv, cache_dir=cache)
    return {"cold": cold, "warm": warm}


def probe(backend: str, quick: bool) -> dict[str, Any]:
    """The backend's bandwidth probe, with ``reference_gbs``: what % of bandwidth is of."""
    if backend == "cuda":
        result = cuda_bandwidth_probe(PROBE_BYTES["cuda"], 10 if quick else 30)
        return {**result, "reference": "copy", "reference_gbs": result["copy_gbs"]}
    result = bandwidth_probe(PROBE_BYTES["cpu"], 5 if quick else 15)
    return {**result, "reference": "triad", "reference_gbs": result["triad_gbs"]}


def versions(backends: Sequence[str]) -> dict[str, str | None]:
    """Versions of the libraries behind the numbers (None: not installed)."""
    import pyopt

    found: dict[str, str | None] = {
        "pyopt": pyopt.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    for name in ("torch",) + (("numba_cuda", "cupy") if "cuda" in backends else ()):
        if importlib.util.find_spec(name) is None:
            found[name] = None
            continue
        try:
            found[name] = str(__import__(name).__version__)
        except Exception as exc:  # a CUDA library present but broken: say so, go on
            found[name] = f"unusable ({type(exc).__name__})"
    return found


def pick_backends(choice: str) -> tuple[list[str], str | None]:
    """Backends to run for ``--backend choice``, or an error message."""
    from pyopt._backend import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if numba.config.ENABLE_CUDASIM:
        reason = "the Numba CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): nothing to time"
    if choice == "cuda" and reason:
        return [], f"--backend cuda: {reason}"
    if choice == "cpu" or (choice == "auto" and reason):
        return ["cpu"], None
    return (["cuda"] if choice == "cuda" else ["cpu", "cuda"]), None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[dict[str, Any]], file: IO[str]) -> None:
    """The results as a table: one line per (case, provider), a speedup column per baseline
    (``x numpy``, ``x torch``; ``x cupy`` where CUDA cases ran)."""
    keys = ["speedup_vs_numpy", "speedup_vs_torch"]
    found = dict.fromkeys(k for r in rows for k in r if k.startswith("speedup_vs_"))
    keys += [k for k in found if k not in keys]
    header = (
        f"{'backend':<7} {'op':<22} {'shape':<20} {'provider':<12} {'p50 ms':>9} "
        f"{'GB/s':>7} {'%BW':>5}" + "".join(f" {'x ' + k[11:]:>8}" for k in keys)
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last = None
    for r in rows:
        case = (r["backend"], r["op"], r["shape"])
        same = case == last
        last = case
        pct = r["pct_of_bandwidth"]
        print(
            f"{'' if same else r['backend']:<7} {'' if same else r['op']:<22} "
            f"{'' if same else r['shape']:<20} {r['provider']:<12} {r['p50_ms']:9.3f} "
            f"{r['gbs']:7.1f} {_fmt(None if pct is None else 100 * pct, '4.0f'):>4}%"
            + "".join(f" {_fmt(r.get(k), '8.2f'):>8}" for k in keys),
            file=file,
        )


def print_summary(result: dict[str, Any], file: IO[str]) -> None:
    """Probes, compile times, skipped and failed providers: what the table does not say."""
    for backend, p in result["bandwidth_probe"].items():
        extra = f", copy {p['copy_gbs']:.1f}" if backend == "cpu" else ""
        print(
            f"{backend} bandwidth probe: {p['reference']} {p['reference_gbs']:.1f} GB/s{extra} "
            f"({p['array_mib']:.0f} MiB arrays)",
            file=file,
        )
    for backend, report in result["compile"].items():
        parts = []
        for kind in ("cold", "warm"):
            r = report[kind]
            if "error" in r:
                parts.append(f"{kind}: failed ({r['error'].splitlines()[-1]})")
            else:
                parts.append(
                    f"{kind}: import pyopt {r['import_s']:.2f} s + first calls {r['total_s']:.2f} s"
                )
        print(f"{backend} compile, {'; '.join(parts)}", file=file)
    for kind in ("skipped", "failed"):
        for s in result[kind]:
            print(
                f"{kind}: {s['provider']} for {s['op']} {s['shape']} ({s['backend']}): "
                f"{s['reason']}",
                file=file,
            )


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``<out>/results.json`` (everything) and ``<out>/results.csv`` (the rows, long format)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "results.json", out / "results.csv"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    columns = list(CSV_COLUMNS)
    for row in result["rows"]:
        columns += [k for k in row if k.startswith("speedup_vs_") and k not in columns]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    return json_path, csv_path


def _case_label(row: dict[str, Any], with_backend: bool) -> str:
    label = f"{row['op']} {row['shape']}"
    return f"{label} [{row['backend']}]" if with_backend else label


def _grouped_barh(ax, labels, series: dict[str, list[float | None]], origin: float) -> None:
    """Bars from ``origin``, one group per label (top to bottom), one bar per series,
    each with its value written at its end."""
    height = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * height
        kept = [(i + offset, v) for i, v in enumerate(values) if v is not None and v > 0]
        if not kept:
            continue
        ys, vs = [y for y, _ in kept], [v for _, v in kept]
        ax.barh(ys, [v - origin for v in vs], left=origin, height=height, label=name)
        for y, v in kept:
            ax.text(v, y, f" {v:.3g} ", va="center", ha="left" if v >= origin else "right",
                    fontsize=6)  # fmt: skip
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    if any(v is not None for values in series.values() for v in values):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot(results_json_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``speedup.png`` and ``bandwidth.png`` into ``out_dir`` from a results.json.

    ``speedup.png``: per op and shape, pyopt's speedup over each baseline (log scale);
    ``bandwidth.png``: per op and shape, every provider's % of the probe bandwidth.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    result = json.loads(Path(results_json_path).read_text())
    rows = result["rows"]
    with_backend = len({r["backend"] for r in rows}) > 1
    cases: dict[str, dict[str, dict]] = {}
    for r in rows:
        cases.setdefault(_case_label(r, with_backend), {})[r["provider"]] = r
    labels = list(cases)
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    baselines = list(dict.fromkeys(k for r in rows for k in r if k.startswith("speedup_vs_")))
    speedups = {
        k.removeprefix("speedup_vs_"): [cases[c].get("pyopt", {}).get(k) for c in labels]
        for k in baselines
    }
    percents = {
        p: [
            None if cases[c].get(p, {}).get("pct_of_bandwidth") is None
            else 100 * cases[c][p]["pct_of_bandwidth"]
            for c in labels
        ]
        for p in providers
    }  # fmt: skip
    devices = dict.fromkeys(str(r["device"]) for r in rows)
    commit = (result.get("git_commit") or "")[:10]
    subtitle = " | ".join([*devices, *(x for x in (commit, result.get("timestamp")) if x)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def figure(n_series: int):
        height = 1.4 + len(labels) * (0.12 + 0.16 * max(1, n_series))
        return plt.subplots(figsize=(10, height))

    fig, ax = figure(len(speedups))
    _grouped_barh(ax, labels, speedups, origin=1.0)
    ax.set_xscale("log")
    values = [v for vs in speedups.values() for v in vs if v is not None and v > 0]
    ax.set_xlim(min([0.5, *values]) / 1.5, max([2.0, *values]) * 1.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("pyopt speedup over the baseline (baseline p50 / pyopt p50)")
    ax.set_title(f"pyopt bench: speedup\n{subtitle}", fontsize=9)
    charts = [(fig, "speedup.png")]

    fig, ax = figure(len(percents))
    _grouped_barh(ax, labels, percents, origin=0.0)
    ax.axvline(100.0, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("% of the measured memory bandwidth (minimum bytes / p50, over the probe)")
    ax.set_title(f"pyopt bench: bandwidth\n{subtitle}", fontsize=9)
    charts.append((fig, "bandwidth.png"))

    paths = []
    for fig, name in charts:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths


def _set_torch_threads() -> None:
    # Both runtimes on the same cores: a comparison of kernels, not of thread counts.
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(numba.get_num_threads())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark suite; returns the exit status (1 when a provider failed)."""
    args = build_parser().parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "pyopt bench: --plot needs matplotlib, which is not installed "
            "(pip install matplotlib, or the 'bench' extra of pyopt-kernels)",
            file=sys.stderr,
        )
        return 2
    if args.repeats is not None and args.repeats < 1:
        print("pyopt bench: --repeats must be at least 1", file=sys.stderr)
        return 2
    backends, error = pick_backends(args.backend)
    if error:
        print(f"pyopt bench: {error}", file=sys.stderr)
        return 2
    families = set(args.family) if args.family else None
    repeats = args.repeats or (5 if args.quick else 30)
    stream = None if args.no_progress or not sys.stderr.isatty() else sys.stderr
    started = time.perf_counter()

    _set_torch_threads()
    info = machine_info()
    if "cuda" in backends:
        info["cuda"] = cuda_device_info()
    lib_versions = versions(backends)
    context = {
        "git_commit": info["git_commit"],
        "versions": " ".join(f"{k}={v}" for k, v in lib_versions.items() if v is not None),
        "timestamp": info["timestamp"],
    }
    devices = {"cpu": info["cpu"].get("model_name", "cpu")}
    if "cuda" in backends:
        devices["cuda"] = info["cuda"]["name"]

    cases = [c for b in backends for c in case_module.cases(b, args.quick, families)]
    bar = Progress(len(cases), stream)
    probes = {}
    for backend in backends:
        bar.show(f"{backend} bandwidth probe")
        probes[backend] = probe(backend, args.quick)
    compile_info = {}
    if not args.no_compile_times:
        for backend in backends:
            bar.show(f"{backend} compile times (cold, then warm; two fresh processes)")
            compile_info[backend] = compile_report(backend, families or FAMILIES)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for case in cases:
        where = f"{case.op} {case.shape} ({case.backend})"
        time_call = cuda_event_timer() if case.backend == "cuda" else wall_time
        try:
            times, case_skipped, case_failed = measure_case(
                case, repeats, time_call, lambda what, where=where: bar.show(f"{where}: {what}")
            )
        except Exception as exc:  # a run() that raises: the case is lost, not the suite
            times, case_skipped = {}, {}
            case_failed = {"(timing)": f"{type(exc).__name__}: {exc}"}
        ident = {"op": case.op, "shape": case.shape, "backend": case.backend}
        skipped += [{**ident, "provider": p, "reason": r} for p, r in case_skipped.items()]
        failed += [{**ident, "provider": p, "reason": r} for p, r in case_failed.items()]
        probe_gbs = probes[case.backend]["reference_gbs"]
        rows += case_rows(case, times, probe_gbs, {"device": devices[case.backend], **context})
        bar.done += 1
        bar.show(where)
    bar.close()

    result = {
        "benchmark": "pyopt bench",
        "settings": {
            "quick": args.quick,
            "backends": backends,
            "families": sorted(families or FAMILIES),
            "repeats": repeats,
            "rounds_of": ROUND,
            "warmup_per_round": WARMUP,
            "rotate_bytes": ROTATE_BYTES,
            "max_rotate": MAX_ROTATE,
        },
        "machine": info,
        "versions": lib_versions,
        "git_commit": info["git_commit"],
        "timestamp": info["timestamp"],
        "bandwidth_probe": probes,
        "compile": compile_info,
        "bases": BASES,
        "rows": rows,
        "skipped": skipped,
        "failed": failed,
        "wall_s": time.perf_counter() - started,
    }
    json_path, csv_path = write_results(result, Path(args.out))
    print_table(rows, sys.stdout)
    print(file=sys.stdout)
    print_summary(result, sys.stdout)
    written = [json_path, csv_path]
    if args.plot:
        written += plot(json_path, args.out)
    print(f"wrote {', '.join(map(str, written))} in {result['wall_s']:.0f} s", file=sys.stdout)
    return 1 if failed else 0
