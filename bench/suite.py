"""``pyopt bench``: every kernel family on every usable backend, against NumPy and torch.

Run as ``pyopt bench`` (installed) or ``python -m bench`` from a checkout::

    pyopt bench [--quick] [--out DIR] [--backend auto|cpu|cuda] [--family NAME ...]
                [--dtype float32|float64] [--repeats N] [--plot] [--no-progress]
                [--no-compile-times]

Steps: machine info and a bandwidth probe per backend (CPU: Numba copy/triad kernels on
arrays far larger than the last-level cache; GPU: a device-to-device copy timed with CUDA
events); ``import pyopt`` time and the first call of each benchmarked op in a fresh
process with an empty Numba cache (cold) and in a second one on that cache (warm); then
every case of ``bench/cases.py``: each provider is set up (its JIT compile is never timed)
on enough rotating input sets that consecutive calls do not find their data in cache, and
timed in rounds with the providers interleaved (``_timing.interleaved``; CUDA events on
the GPU). Reported per (case, provider): p20/p50/p80 ms, effective GB/s (the case's
minimum bytes over p50), that as a fraction of the probe, and the speedup over each
baseline provider (baseline p50 / provider p50). Output: a table on stdout,
``<out>/results.json`` (all of it, the machine named: CPU model, cores, caches, probe
GB/s; GPU name) and ``<out>/results.csv`` (one row per case and provider); ``--plot``
adds ``speedup.png`` and ``bandwidth.png``, drawn from the JSON by :func:`plot`. Progress
goes to stderr (``pyopt._progress``): a bar on a terminal, plain lines elsewhere, and a
line before the first calls of each kernel family saying whether they compile or load
from Numba's cache.
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

from pyopt._check import add_family_option
from pyopt._progress import KernelLoad, Progress

from . import cases as case_module
from ._timing import (
    bandwidth_probe,
    cuda_bandwidth_probe,
    cuda_device_info,
    cuda_event_timer,
    first_call_times,
    interleaved,
    machine_info,
    machine_tag,
    percentiles_ms,
    wall_time,
)
from .cases import DTYPES, FAMILIES, KERNELS, Case, Unavailable

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
    "providers": case_module.PROVIDERS,
    "timing": (
        f"warm-up excluded: setup makes a first call, then rounds of {WARMUP} untimed and "
        f"{ROUND} timed calls per provider, the provider order rotated between rounds; "
        f"inputs rotate over enough sets for >= {ROTATE_BYTES >> 20} MiB (at most "
        f"{MAX_ROTATE}); CUDA: events around each call on the default stream"
    ),
}

# The first call of each op, in a fresh process: argv = backend, dtype, comma-separated ops.
_COMPILE_SNIPPET = """
import functools, json, sys, time
t0 = time.perf_counter()
import pyopt
out = {"import_s": time.perf_counter() - t0}
import numpy as np
backend, dtype, ops = sys.argv[1], np.dtype(sys.argv[2]), sys.argv[3].split(",")
if backend == "cuda":
    import cupy as xp
    sync = xp.cuda.runtime.deviceSynchronize
else:
    xp, sync = np, lambda: None
x = xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(dtype))
w, b = xp.ones(3, dtype), xp.zeros(3, dtype)
rm, rv = xp.zeros(3, dtype), xp.ones(3, dtype)
buf = pyopt.optim.ParamBuffer({"w": (3, 5), "b": (5,)}, dtype, device=backend)
saved = {}
F = pyopt.functional
calls = {
    "batch_norm_forward": lambda: saved.update(
        zip("ymi", F.batch_norm(x, weight=w, bias=b, running_mean=rm, running_var=rv))
    ),
    "batch_norm_backward": lambda: F.batch_norm_backward(
        x, x, weight=w, mean=saved["m"], invstd=saved["i"]
    ),
    "dropout_forward": lambda: F.dropout(x, 0.1, seed=1),
    "dropout_backward": lambda: F.dropout_backward(x, 0.1, seed=1),
    "clip_grad_norm_": lambda: pyopt.clip_grad_norm_(buf.grads, 1.0),
    "clip_grad_value_": lambda: pyopt.clip_grad_value_(buf.grads, 1.0),
    "normal_": lambda: pyopt.init.normal_(x),
    "uniform_": lambda: pyopt.init.uniform_(x),
}
if any(op.endswith("_step") for op in ops):
    from pyopt.bench.cases import RULES, step_op

    for rule, (cls, hp, _, _) in RULES.items():
        opt = getattr(pyopt.optim, cls)(buf.params, **hp)
        calls[step_op(rule)] = functools.partial(opt.step, buf.grads)
for op in ops:
    t0 = time.perf_counter()
    calls[op]()
    sync()
    out[op + "_s"] = time.perf_counter() - t0
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
        "--out",
        metavar="DIR",
        help="output folder (default: bench-results/<machine>, e.g. bench-results/amd-epyc-2c)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the CPU, and the GPU when CUDA is usable",
    )
    add_family_option(parser, FAMILIES)
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="element type of every case"
    )
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="timed calls per provider (default: 30, --quick 5)"
    )
    for switch, text in (
        ("--plot", "also write speedup.png and bandwidth.png"),
        (
            "--no-progress",
            "no progress bar or progress lines on stderr (only the results on stdout)",
        ),
        ("--no-compile-times", "skip the cold/warm first-call subprocesses"),
    ):
        parser.add_argument(switch, action="store_true", help=text)
    return parser


def rotation(min_bytes: int) -> int:
    """Input sets a case's providers rotate over: enough for ``ROTATE_BYTES`` in all."""
    return max(1, min(MAX_ROTATE, math.ceil(ROTATE_BYTES / max(1, min_bytes))))


def setup_providers(
    case: Case, rotate: int, status: Callable[[str], None] | None = None
) -> tuple[dict[str, Callable[[], object]], dict[str, str], dict[str, str]]:
    """Set up every provider of ``case`` on ``rotate`` input sets.

    ``status(text)`` hears which provider is being set up (a progress bar's text).

    Returns ``(runs, skipped, failed)``: ``runs`` provider -> its ``run()``; ``skipped``
    provider -> the ``Unavailable`` reason; ``failed`` provider -> the error its setup
    raised (a bug to report, not a reason to lose the rest of the run).
    """
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
    return runs, skipped, failed


def time_providers(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    time_call: Callable[[Callable[[], object]], float] = wall_time,
    status: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``runs``: ``repeats`` each, interleaved in rounds."""
    if not runs:
        return {}
    if status is not None:
        status("timing " + ", ".join(runs))
    return interleaved(runs, repeats, block=ROUND, warmup=WARMUP, time_call=time_call)


def measure_case(
    case: Case,
    repeats: int,
    time_call: Callable[[Callable[[], object]], float] = wall_time,
    status: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, str]]:
    """Seconds per call of each provider of ``case``, and the skipped and failed ones:
    :func:`setup_providers` on ``rotation(case.min_bytes)`` sets, then
    :func:`time_providers`. Returns ``(times, skipped, failed)``."""
    runs, skipped, failed = setup_providers(case, rotation(case.min_bytes), status)
    return time_providers(runs, repeats, time_call, status), skipped, failed


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


def compile_report(
    backend: str, ops: Iterable[str], dtype: str = "float32", own_cache: bool = False
) -> dict[str, Any]:
    """``import pyopt`` and first-call seconds of ``ops`` (case op names) on tiny ``dtype``
    arrays, cold (an empty Numba cache) then warm (that cache).

    Two fresh processes on one cache: the first compiles, the second loads. The cache is
    a new temporary folder, or with ``own_cache`` the one this process uses, which the
    caller has found empty of the kernels (a first run on this machine): the cases then
    load what the cold process compiled instead of compiling it all again.
    """
    argv = (backend, dtype, ",".join(dict.fromkeys(ops)))
    with tempfile.TemporaryDirectory() as scratch:
        cache = None if own_cache else scratch
        cold = first_call_times(_COMPILE_SNIPPET, *argv, cache_dir=cache)
        warm = first_call_times(_COMPILE_SNIPPET, *argv, cache_dir=cache)
    where = "this run's own (empty) cache" if own_cache else "a new temporary cache"
    return {"cold": cold, "warm": warm, "cache": where}


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
    (``x numpy``, ``x torch``; ``x cupy`` where CUDA cases ran, ``x torch-nograd`` where
    a case has that baseline)."""
    keys = ["speedup_vs_numpy", "speedup_vs_torch"]
    found = dict.fromkeys(k for r in rows for k in r if k.startswith("speedup_vs_"))
    keys += [k for k in found if k not in keys]
    names = {k: "x " + k.removeprefix("speedup_vs_").replace("_", "-") for k in keys}
    speedup_width = {k: max(8, len(name)) for k, name in names.items()}
    op_w, shape_w, provider_w = (
        max([width, *(len(r[key]) for r in rows)])
        for key, width in (("op", 22), ("shape", 20), ("provider", 12))
    )
    header = (
        f"{'backend':<7} {'op':<{op_w}} {'shape':<{shape_w}} {'provider':<{provider_w}} "
        f"{'p50 ms':>9} {'GB/s':>7} {'%BW':>5}"
        + "".join(f" {names[k]:>{speedup_width[k]}}" for k in keys)
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
            f"{'' if same else r['backend']:<7} {'' if same else r['op']:<{op_w}} "
            f"{'' if same else r['shape']:<{shape_w}} {r['provider']:<{provider_w}} "
            f"{r['p50_ms']:9.3f} {r['gbs']:7.1f} "
            f"{_fmt(None if pct is None else 100 * pct, '4.0f'):>4}%"
            + "".join(f" {_fmt(r.get(k), '8.2f'):>{speedup_width[k]}}" for k in keys),
            file=file,
        )


def machine_summary(info: dict[str, Any], probes: dict[str, dict[str, Any]]) -> str:
    """The machine in one line: CPU model, cores, L3, the probe's GB/s (and the GPU's)."""
    cpu = info["cpu"]
    parts = [f"{cpu.get('model_name', 'cpu')}, {info['cores']} cores"]
    if info.get("usable_cores") not in (None, info["cores"]):
        parts[0] += f" ({info['usable_cores']} usable)"
    l3 = cpu.get("caches", {}).get("L3")
    if l3:
        parts.append(f"L3 {l3['size_kib'] / 1024:g} MiB")
    if "cpu" in probes:
        parts.append(f"triad {probes['cpu']['triad_gbs']:.1f} GB/s")
    line = ", ".join(parts)
    if "cuda" in info:
        gpu = info["cuda"]
        line += f"; {gpu['name']} ({gpu['memory_gib']:.0f} GiB)"
        if "cuda" in probes:
            line += f", copy {probes['cuda']['copy_gbs']:.0f} GB/s"
    return line


def print_summary(result: dict[str, Any], file: IO[str]) -> None:
    """Machine, probes, compile times, skipped and failed providers: what the table does
    not say."""
    print(f"machine: {result['machine']['summary']}", file=file)
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


def _run_cases(
    cases: Sequence[Case],
    repeats: int,
    probes: dict[str, dict[str, Any]],
    context: dict[str, Any],
    devices: dict[str, str],
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[dict[str, str]]]:
    """Measure every case: ``(rows, skipped, failed)``. Before the first case of each
    family in this process a line says whether its kernels will compile or load from
    Numba's cache; after any case that compiled or loaded some, a line says how many."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    announced: set[tuple[str, str]] = set()
    for case in cases:
        where = f"{case.op} {case.shape} ({case.backend})"
        progress.start(f"{where}: {', '.join(case.providers)}")
        load = KernelLoad(case.backend, KERNELS[case.family])
        if (case.backend, case.family) not in announced:
            announced.add((case.backend, case.family))
            progress.note(load.before())
        time_call = cuda_event_timer() if case.backend == "cuda" else wall_time
        try:
            runs, case_skipped, case_failed = setup_providers(
                case, rotation(case.min_bytes), progress.status
            )
            if any(load.counts()):
                progress.note(load.after("this case's setup"))
            times = time_providers(runs, repeats, time_call, progress.status)
        except Exception as exc:  # a run() that raises: the case is lost, not the suite
            times, case_skipped = {}, {}
            case_failed = {"(timing)": f"{type(exc).__name__}: {exc}"}
        ident = {"op": case.op, "shape": case.shape, "backend": case.backend}
        skipped += [{**ident, "provider": p, "reason": r} for p, r in case_skipped.items()]
        failed += [{**ident, "provider": p, "reason": r} for p, r in case_failed.items()]
        probe_gbs = probes[case.backend]["reference_gbs"]
        rows += case_rows(case, times, probe_gbs, {"device": devices[case.backend], **context})
        progress.advance()
    return rows, skipped, failed


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
    started = time.perf_counter()

    cases = [c for b in backends for c in case_module.cases(b, args.quick, families, args.dtype)]
    with Progress(None if args.no_progress else sys.stderr, len(cases)) as progress:
        progress.phase("machine info")
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

        probes = {}
        for backend in backends:
            progress.phase(f"{backend} bandwidth probe")
            probes[backend] = probe(backend, args.quick)
        info["summary"] = machine_summary(info, probes)
        compile_info = {}
        if not args.no_compile_times:
            for backend in backends:
                ran = [c for c in cases if c.backend == backend]
                kernels = [k for c in ran for k in KERNELS[c.family]]
                # CUDA kernels are not cached: every process compiles them.
                own = backend == "cpu" and KernelLoad("cpu", kernels).cache_state() == "cold"
                cache = "this run's own" if own else "a temporary"
                progress.phase(
                    f"{backend} compile times: import pyopt and the first call of each op in "
                    f"a fresh process on an empty Numba cache ({cache}: cold), then on that "
                    "cache (warm)"
                )
                ops = [c.op for c in ran]
                compile_info[backend] = compile_report(backend, ops, args.dtype, own)
        rows, skipped, failed = _run_cases(cases, repeats, probes, context, devices, progress)

    result = {
        "benchmark": "pyopt bench",
        "settings": {
            "quick": args.quick,
            "backends": backends,
            "families": sorted(families or FAMILIES),
            "dtype": args.dtype,
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
    out = Path(args.out or Path("bench-results") / machine_tag(info))
    json_path, csv_path = write_results(result, out)
    print_table(rows, sys.stdout)
    print(file=sys.stdout)
    print_summary(result, sys.stdout)
    written = [json_path, csv_path]
    if args.plot:
        written += plot(json_path, out)
    print(f"wrote {', '.join(map(str, written))} in {result['wall_s']:.0f} s", file=sys.stdout)
    return 1 if failed else 0
