"""Shared benchmark helpers: interleaved timing, percentiles, bandwidth probe, machine info."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

REPO = Path(__file__).resolve().parent.parent


def wall_time(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes on the host clock."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    block: int = 5,
    warmup: int = 1,
    time_call: Callable[[Callable[[], object]], float] = wall_time,
) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeats`` timed calls each, in rounds.

    Each round runs every function for ``warmup`` untimed calls and then ``block`` timed
    ones, rotating the order between rounds, so that a slow phase of a shared (noisy)
    machine hits all of them alike. Calls of one function are kept together because
    thread pools of different runtimes (torch's OpenMP, Numba's) spin for a while after a
    parallel region and would slow whichever call came right after another runtime's.
    ``time_call(fn)`` times one call (``cuda_event_timer()`` on a GPU, where the host
    clock would see only the launch).
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-repeats // block)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            for _ in range(warmup):
                fns[name]()
            for _ in range(min(block, repeats - len(times[name]))):
                times[name].append(time_call(fns[name]))
    return times


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """``{"p20", "p50", "p80"}`` of a list of seconds, in milliseconds."""
    p20, p50, p80 = np.percentile(np.asarray(seconds) * 1e3, [20, 50, 80])
    return {"p20": float(p20), "p50": float(p50), "p80": float(p80)}


# Not cached: from a checkout this module is both ``bench._timing`` (``python -m bench``)
# and ``pyopt.bench._timing`` (``pyopt bench``), and Numba's cache, keyed by file, would
# hand one the other's entry, which names the other module and fails to load.
@njit(parallel=True)
def _scale_copy(a, b):  # b = 3 * a: one read and one write stream
    for i in prange(a.size):
        b[i] = 3.0 * a[i]


@njit(parallel=True)
def _triad(a, b, c):  # c = a + 3 * b: two read streams and one write stream
    for i in prange(a.size):
        c[i] = a[i] + 3.0 * b[i]


def bandwidth_probe(nbytes: int = 256 << 20, repeats: int = 15) -> dict[str, float]:
    """Memory bandwidth of Numba parallel copy and triad kernels (median GB/s).

    Counted bytes are the ones the kernels name (copy: 2 arrays, triad: 3 arrays); the
    read-for-ownership of the written lines is not counted, as in STREAM.
    """
    n = nbytes // 4
    a = np.ones(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    times = interleaved(
        {"copy": lambda: _scale_copy(a, b), "triad": lambda: _triad(a, b, c)}, repeats
    )
    return {
        "copy_gbs": 2 * a.nbytes / np.median(times["copy"]) / 1e9,
        "triad_gbs": 3 * a.nbytes / np.median(times["triad"]) / 1e9,
        "array_mib": a.nbytes / 2**20,
        "threads": numba.get_num_threads(),
    }


def _cpu_caches() -> dict[str, dict[str, int]]:
    """CPU 0's caches from sysfs: ``{"L1d": {"size_kib": 48, "shared_by_cpus": 1}, ...}``
    (empty where sysfs does not say, e.g. not Linux)."""
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", size)
        if not match:
            continue
        kib = int(match.group(1)) * {"": 1 / 1024, "K": 1, "M": 1024, "G": 1 << 20}[match.group(2)]
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        cpus = 0
        for part in shared.split(","):  # a CPU list such as "0-3,8-11"
            lo, _, hi = part.partition("-")
            cpus += int(hi or lo) - int(lo) + 1
        caches[f"L{level}{suffix}"] = {"size_kib": int(kib), "shared_by_cpus": cpus}
    return caches


def _cpu_model() -> dict[str, object]:
    fields: dict[str, object] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model_name": platform.processor() or platform.machine(), "caches": {}}
    for key, name in (
        ("model name", "model_name"),
        ("cpu family", "family"),
        ("model", "model"),
        ("stepping", "stepping"),
        ("cache size", "cache_size"),
    ):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            fields[name] = match.group(1).strip()
    fields["caches"] = _cpu_caches()
    return fields


def git_commit() -> str | None:
    """The checkout's commit, or None (no git, nothing committed yet, or an installed copy)."""
    if not (REPO / ".git").exists():  # installed as pyopt.bench: any repository around is not ours
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict[str, object]:
    """CPU (model, caches), core counts, library versions, git commit and a UTC timestamp
    (torch optional)."""
    try:
        import torch
    except ImportError:
        torch = None

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__ if torch else None,
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_tag(info: dict[str, object]) -> str:
    """A folder name for a machine's results: the CPU and its cores, and the GPU where
    ``info`` has one, e.g. ``amd-epyc-2c`` or ``amd-epyc-9654-96c-nvidia-h200``."""

    def slug(name: str) -> str:
        name = re.sub(r"\(R\)|\(TM\)|CPU|Processor|\d+-Core", " ", name, flags=re.IGNORECASE)
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]

    cpu = slug(str(info["cpu"].get("model_name", "cpu"))) or "cpu"  # type: ignore[union-attr]
    tag = f"{cpu}-{info['cores']}c"
    if "cuda" in info:
        tag += "-" + (slug(str(info["cuda"]["name"])) or "gpu")  # type: ignore[index]
    return tag


def first_call_times(snippet: str, *argv: str, cache_dir: str | None) -> dict[str, object]:
    """Run ``python -c snippet *argv`` in a fresh process on Numba cache ``cache_dir``.

    The snippet prints a JSON object of seconds as its last line of output (``import_s``
    for its imports, ``<kernel>_s`` for the first call of each kernel); ``total_s`` (all
    but ``import_s``) is added. On failure: ``{"error": <end of stderr>}``. ``cache_dir``
    None: the cache this process uses (the same source files, so the same cache entries).
    A first run on an empty cache times the compile; a second on the same cache, the load.
    """
    with tempfile.TemporaryDirectory() as scratch:
        # A checkout runs from its root (pyopt importable uninstalled); an installed copy
        # from an empty folder, so that nothing beside it shadows a top-level module.
        cwd = REPO if (REPO / "pyopt").is_dir() else scratch
        env = (
            dict(os.environ) if cache_dir is None else {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        )
        proc = subprocess.run(
            [sys.executable, "-c", snippet, *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["total_s"] = sum(v for k, v in result.items() if k != "import_s")
    return result


def cuda_event_timer() -> Callable[[Callable[[], object]], float]:
    """A ``time_call`` for ``interleaved``: seconds between CUDA events around one call.

    The events are recorded on the default stream, where the providers enqueue their work,
    and the end event is waited for, so one call's time is the GPU's, launches included.
    """
    from numba import cuda

    start, end = cuda.event(), cuda.event()

    def time_call(fn: Callable[[], object]) -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cuda.event_elapsed_time(start, end) * 1e-3

    return time_call


def cuda_bandwidth_probe(nbytes: int = 1 << 30, repeats: int = 20) -> dict[str, float]:
    """Device memory bandwidth of a device-to-device copy (median GB/s, CUDA events).

    Counted bytes: the source read and the destination written (2 * ``nbytes``).
    """
    from numba import cuda

    n = nbytes // 4
    src = cuda.device_array(n, np.float32)
    dst = cuda.device_array(n, np.float32)
    times = interleaved(
        {"copy": lambda: dst.copy_to_device(src)}, repeats, time_call=cuda_event_timer()
    )
    return {
        "copy_gbs": 2 * src.nbytes / np.median(times["copy"]) / 1e9,
        "array_mib": src.nbytes / 2**20,
    }


def cuda_device_info() -> dict[str, object]:
    """Name, compute capability and memory of the current CUDA device."""
    from numba import cuda

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    _free, total = cuda.current_context().get_memory_info()
    return {
        "name": name,
        "compute_capability": ".".join(map(str, dev.compute_capability)),
        "multiprocessors": dev.MULTIPROCESSOR_COUNT,
        "memory_gib": total / 2**30,
    }
