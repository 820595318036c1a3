"""CPU training-toolkit benchmark: pyopt's dropout, gradient clipping and init vs torch.

Run from the repository root::

    python -m bench.bench_toolkit [--quick] [--out PATH] [--repeats N]

Every case is float32 and timed in one process with ``torch.set_num_threads`` equal to
Numba's thread count, in rounds of 5 calls per provider (after one untimed call) with the
order rotated between rounds (``bench/_timing.py``):

* ``dropout`` (p = 0.1 and 0.5; ``flat-16M``: 16 Mi elements, ``256x4096``: 1 Mi):
  ``pyopt.functional.dropout(x, p, seed=, offset=k)`` with a new offset each call, against
  ``torch.nn.functional.dropout(x, p, training=True)`` (``torch``, the baseline) and
  ``torch.native_dropout`` (``torch-native``: the kernel that also returns the bool mask
  autograd keeps for the backward);
* ``dropout_backward`` (same cases): ``pyopt.functional.dropout_backward(dy, p, seed=,
  offset=)``, which regenerates the forward's mask, against
  ``aten.native_dropout_backward(dy, mask, scale)`` on the stored mask;
* ``clip_grad_norm_`` and ``clip_grad_value_`` (``flat-16M``: one tensor; ``resnet50``:
  ResNet-50's 161 parameter shapes, ``bench/shapes.py``): ``pyopt.clip_grad_norm_`` /
  ``clip_grad_value_`` over a ``ParamBuffer``'s grads (one flat store) against
  ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` with ``foreach=True`` over
  separate tensors. The grads are not restored between calls: each call's ``max_norm`` is
  ``SHRINK`` times the previous one, so every call scales (by about ``SHRINK``) and the
  grads stay far from denormals over the run;
* ``uniform_`` and ``normal_`` on 16 Mi elements: ``pyopt.init`` against
  ``torch.nn.init`` (default bounds, mean and std).

Reported: p20/p50/p80 over the repeats (warm-up excluded); effective GB/s from the minimum
bytes of each op (``BYTES_BASIS``), that as a fraction of the triad bandwidth measured by a
Numba parallel probe; speedup = torch p50 / provider p50. The JIT compile time of the
random and clip kernels (first float32 call with an empty Numba cache, in a subprocess)
is reported separately, and a few checks against torch or the expected statistics go in
the JSON. ``--quick`` (a smoke run) takes 5 repeats instead of 30, on the same sizes: a
smaller flat case would sit in the last-level cache.

Dropout and its backward return new arrays, and their time includes the allocation: a
fresh 64 MiB NumPy array is backed by transparent huge pages where the kernel honours
``madvise`` (NumPy asks for them), torch's CPU allocator takes 4 KiB pages, whose first
touch costs it tens of ms per 64 MiB output on such a machine (the mode is recorded as
``settings.transparent_hugepage``).

Results go to ``<out>/toolkit-cpu-<machine tag>.json`` (``--out`` a folder), or to
``--out`` itself when it ends in ``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import time
from pathlib import Path

import numba
import numpy as np

from ._timing import (
    REPO,
    bandwidth_probe,
    cold_compile_times,
    interleaved,
    machine_info,
    machine_tag,
    print_probe,
    timing_fields,
)
from .shapes import RESNET50_PARAM_SHAPES

FLAT = 16 * 2**20
DROPOUT_P = (0.1, 0.5)
SEED = 1234
SHRINK = 0.99  # max_norm of a clip_grad_norm_ call over that of the call before
CLIP_VALUE = 1e-2  # the grads are 1e-2 x N(0, 1): a third of them lie outside
BYTES_PER_ELEM = {
    "dropout": 8,
    "dropout_backward": 8,
    "clip_grad_norm_": 12,
    "clip_grad_value_": 8,
    "uniform_": 4,
    "normal_": 4,
}
BYTES_BASIS = (
    "minimum float32 bytes per element: dropout reads x and writes y (8); dropout_backward "
    "reads dy and writes dx (8) -- pyopt regenerates the mask, torch's "
    "native_dropout_backward also reads the stored 1 B/elem bool mask (9 B/elem moved, "
    "counted as 8 like pyopt's); clip_grad_norm_ reads the grads for the norm and reads "
    "and writes them to scale (12); clip_grad_value_ reads and writes them (8); uniform_ "
    "and normal_ write the tensor (4)."
)

_COMPILE_SNIPPET = """
import json, time
import numpy as np
t0 = time.perf_counter()
from pyopt.kernels.cpu import clip, random
out = {"import_s": time.perf_counter() - t0}
x, y = np.ones(64, np.float32), np.empty(64, np.float32)
partials = np.empty(clip.norm_partials_blocks(x.size))
calls = {
    "dropout": lambda: random.dropout(x, y, 1 << 31, 2.0, 1, 0),
    "uniform": lambda: random.uniform_(y, 0.0, 1.0, 1, 0),
    "normal": lambda: random.normal_(y, 0.0, 1.0, 1, 0),
    "norm_partials": lambda: clip.norm_partials(x, partials, 2.0),
    "scale": lambda: clip.scale_(x, 0.5),
    "clamp": lambda: clip.clamp_(x, -1.0, 1.0),
}
for name, call in calls.items():
    t0 = time.perf_counter()
    call()
    out[name + "_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def _transparent_hugepage() -> str | None:
    """The kernel's THP mode (``always`` / ``madvise`` / ``never``), None where unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def _first_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rows(op, case, times, n, probe_gbs, extra, first) -> list[dict]:
    """One result row per provider of ``times`` (``torch`` the speedup baseline)."""
    rows = []
    for provider, secs in times.items():
        row = {
            "op": op,
            "case": case,
            "provider": provider,
            "backend": "cpu",
            **extra,
            "n_elements": n,
            "dtype": "float32",
            "threads": numba.get_num_threads(),
            **timing_fields(secs, BYTES_PER_ELEM[op] * n, times["torch"], probe_gbs),
        }
        if provider in first:
            row["first_call_s"] = first[provider]
        rows.append(row)
    return rows


def _dropout(case, shape, p, repeats, warmup, probe_gbs, rng) -> tuple[list[dict], dict]:
    import torch

    from pyopt.functional import dropout, dropout_backward

    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    scale = 1.0 / (1.0 - p)
    offsets = itertools.count(1)
    fwd = {
        "pyopt": lambda: dropout(x, p, seed=SEED, offset=next(offsets)),
        "torch": lambda: torch.nn.functional.dropout(xt, p, training=True),
        "torch-native": lambda: torch.native_dropout(xt, p, True),
    }
    _, mask = torch.native_dropout(xt, p, True)
    bwd = {
        "pyopt": lambda: dropout_backward(dy, p, seed=SEED, offset=0),
        "torch": lambda: torch.ops.aten.native_dropout_backward(dyt, mask, scale),
    }
    first = {"dropout": _first_call(fwd["pyopt"]), "dropout_backward": _first_call(bwd["pyopt"])}

    # The mask from ones (x and dy hold a few exact zeros of their own).
    kept = dropout(np.ones(shape, np.float32), p, seed=SEED, offset=0) != 0
    f = np.float32(scale)
    check = {
        "kept_fraction": float(kept.mean()),
        "expected_kept_fraction": 1.0 - p,
        "forward_equals_x_mask_scale": bool(
            (dropout(x, p, seed=SEED, offset=0) == np.where(kept, x * f, 0)).all()
        ),
        "backward_equals_dy_mask_scale": bool(
            (dropout_backward(dy, p, seed=SEED, offset=0) == np.where(kept, dy * f, 0)).all()
        ),
    }
    rows = []
    for op, fns in (("dropout", fwd), ("dropout_backward", bwd)):
        times = interleaved(fns, repeats, warmup=warmup)
        extra = {"shape": list(shape), "p": p}
        rows += _rows(op, case, times, x.size, probe_gbs, extra, {"pyopt": first[op]})
    for row in rows:
        if row["provider"] == "torch-native":
            row["torch_mode"] = "native_dropout (returns the bool mask)"
        elif row["provider"] == "torch":
            row["torch_mode"] = (
                "F.dropout" if row["op"] == "dropout" else "native_dropout_backward (stored mask)"
            )
    return rows, check


def _shrinking(clip, max_norm: float):
    """A call of ``clip(m)`` with ``m`` ``SHRINK`` times that of the call before (the first
    ``SHRINK·max_norm``); ``.last`` is the latest ``m``."""

    def call():
        call.last *= SHRINK
        clip(call.last)

    call.last = max_norm
    return call


def _clip(case, shapes, repeats, warmup, probe_gbs, rng) -> tuple[list[dict], dict]:
    import torch

    import pyopt
    import pyopt.optim

    bufs = {}
    for op in ("clip_grad_norm_", "clip_grad_value_"):
        buf = pyopt.optim.ParamBuffer(shapes, np.float32, device="cpu")
        buf.grad[:] = 1e-2 * rng.standard_normal(buf.size, dtype=np.float32)
        bufs[op] = buf
    n = bufs["clip_grad_norm_"].size
    norm0 = float(np.sqrt(np.sum(np.square(bufs["clip_grad_norm_"].grad, dtype=np.float64))))

    def torch_params(buf):
        params = []
        for g in buf.grads.values():
            t = torch.nn.Parameter(torch.empty(g.shape))
            t.grad = torch.from_numpy(g.copy())
            params.append(t)
        return params

    tparams = {op: torch_params(buf) for op, buf in bufs.items()}
    grads = bufs["clip_grad_norm_"].grads
    # One call each from the same grads, before any timing: totals and results compared.
    ours = float(pyopt.clip_grad_norm_(grads, SHRINK * norm0))
    theirs = float(torch.nn.utils.clip_grad_norm_(tparams["clip_grad_norm_"], SHRINK * norm0))
    pyopt.clip_grad_value_(bufs["clip_grad_value_"].grads, CLIP_VALUE)
    torch.nn.utils.clip_grad_value_(tparams["clip_grad_value_"], CLIP_VALUE)

    def rel_diff(op):
        ours = bufs[op].grad
        theirs = np.concatenate([t.grad.numpy().ravel() for t in tparams[op]])
        return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))

    # pyopt sums in float64, torch in float32: both against a float64 reference.
    check = {
        "total_norm_rel_err_pyopt": abs(ours - norm0) / norm0,
        "total_norm_rel_err_torch": abs(theirs - norm0) / norm0,
        "clipped_grads_rel_diff_vs_torch": rel_diff("clip_grad_norm_"),
        "clip_value_grads_equal_torch": rel_diff("clip_grad_value_") == 0.0,
    }

    start = SHRINK * norm0
    norm_fns = {
        "pyopt": _shrinking(lambda m: pyopt.clip_grad_norm_(grads, m), start),
        "torch": _shrinking(
            lambda m: torch.nn.utils.clip_grad_norm_(tparams["clip_grad_norm_"], m, foreach=True),
            start,
        ),
    }
    value_grads = bufs["clip_grad_value_"].grads
    value_fns = {
        "pyopt": lambda: pyopt.clip_grad_value_(value_grads, CLIP_VALUE),
        "torch": lambda: torch.nn.utils.clip_grad_value_(
            tparams["clip_grad_value_"], CLIP_VALUE, foreach=True
        ),
    }
    extra = {"n_tensors": len(shapes), "torch_mode": "foreach"}
    rows = []
    for op, fns in (("clip_grad_norm_", norm_fns), ("clip_grad_value_", value_fns)):
        times = interleaved(fns, repeats, warmup=warmup)
        rows += _rows(op, case, times, n, probe_gbs, extra, {})

    # Each call left the norm at its max_norm (to the 1e-6 of the coefficient): it scaled.
    final = {
        "pyopt": np.sqrt(np.sum(np.square(bufs["clip_grad_norm_"].grad, dtype=np.float64))),
        "torch": math.sqrt(
            sum(float(torch.sum(t.grad.double() ** 2)) for t in tparams["clip_grad_norm_"])
        ),
    }
    for provider, norm in final.items():
        check[f"{provider}_final_norm_over_last_max_norm"] = float(norm / norm_fns[provider].last)
    check["final_norm_over_initial"] = float(final["pyopt"] / norm0)
    return rows, check


def _init(n, repeats, warmup, probe_gbs) -> tuple[list[dict], dict]:
    import torch

    import pyopt

    rows, check = [], {}
    for op, expected in (("uniform_", (0.5, math.sqrt(1 / 12))), ("normal_", (0.0, 1.0))):
        x = np.empty(n, np.float32)
        xt = torch.empty(n)
        fns = {
            "pyopt": lambda op=op, x=x: getattr(pyopt.init, op)(x),
            "torch": lambda op=op, xt=xt: getattr(torch.nn.init, op)(xt),
        }
        first = {"pyopt": _first_call(fns["pyopt"])}
        check[op] = {
            "mean": float(x.mean(dtype=np.float64)),
            "std": float(x.std(dtype=np.float64)),
            "expected_mean_std": list(expected),
        }
        times = interleaved(fns, repeats, warmup=warmup)
        rows += _rows(op, "flat-16M", times, n, probe_gbs, {"shape": [n]}, first)
    return rows, check


def _print_table(rows, bandwidth, compile_info):
    print_probe(bandwidth, compile_info, "first float32 calls")
    header = (
        f"{'op':<17} {'case':<9} {'p':>4} {'provider':<13} {'p50 ms':>8} {'p20-p80 ms':>15} "
        f"{'GB/s':>6} {'%BW':>5} {'x torch':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        p = f"{r['p']:.1f}" if "p" in r else ""
        print(
            f"{r['op']:<17} {r['case']:<9} {p:>4} {r['provider']:<13} {r['p50_ms']:8.2f} "
            f"{r['p20_ms']:7.2f}-{r['p80_ms']:<7.2f} {r['gbs']:6.1f} "
            f"{100 * r['pct_of_bandwidth']:4.0f}% {r['speedup_vs_torch']:8.2f}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument(
        "--out", default=str(REPO / "bench" / "results"), help="JSON folder, or a .json path"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the cold-compile subprocess"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(numba.get_num_threads())
    repeats = args.repeats or (5 if args.quick else 30)
    warmup = 1  # untimed calls before each round of 5 timed ones

    info = machine_info()
    load_before = os.getloadavg()
    compile_info = {} if args.no_compile else cold_compile_times(_COMPILE_SNIPPET)
    bandwidth = bandwidth_probe(64 << 20 if args.quick else 256 << 20, 5 if args.quick else 15)
    probe_gbs = bandwidth["triad_gbs"]
    rng = np.random.default_rng(0)
    rows, checks = [], {}
    for case, shape in (("flat-16M", (FLAT,)), ("256x4096", (256, 4096))):
        for p in DROPOUT_P:
            case_rows, checks[f"dropout {case} p={p}"] = _dropout(
                case, shape, p, repeats, warmup, probe_gbs, rng
            )
            rows += case_rows
            print(f"done: dropout {case} p={p}", flush=True)
    for case, shapes in (("flat-16M", {"flat": (FLAT,)}), ("resnet50", RESNET50_PARAM_SHAPES)):
        case_rows, checks[f"clip {case}"] = _clip(case, shapes, repeats, warmup, probe_gbs, rng)
        rows += case_rows
        print(f"done: clip {case}", flush=True)
    case_rows, checks["init flat-16M"] = _init(FLAT, repeats, warmup, probe_gbs)
    rows += case_rows
    _print_table(rows, bandwidth, compile_info)

    result = {
        "benchmark": "toolkit-cpu",
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "bandwidth_probe": bandwidth,
        "compile": compile_info,
        "settings": {
            "repeats": repeats,
            "rounds_of": 5,
            "warmup_per_round": warmup,
            "dtype": "float32",
            "flat_elements": FLAT,
            "dropout_p": list(DROPOUT_P),
            "dropout_seed": SEED,
            "clip_norm_shrink_per_call": SHRINK,
            "clip_value": CLIP_VALUE,
            "grads": "1e-2 x N(0, 1)",
            "transparent_hugepage": _transparent_hugepage(),
        },
        "bytes_basis": BYTES_BASIS,
        "bandwidth_basis": (
            "pct_of_bandwidth = gbs / the probe's triad GB/s. The probe counts the bytes its "
            "kernels name, not the read-for-ownership of the lines they only write; "
            "dropout and the init fills write arrays they do not read, so they move more "
            "than they count and stay below the in-place clip ops' ceiling."
        ),
        "speedup_basis": (
            "torch p50 / provider p50 (same process, interleaved repeats); torch = "
            "F.dropout(training=True), native_dropout_backward on native_dropout's mask, "
            "clip_grad_norm_ / clip_grad_value_ with foreach=True, torch.nn.init"
        ),
        "checks": checks,
        "results": rows,
    }
    out = Path(args.out)
    path = out if out.suffix == ".json" else out / f"toolkit-cpu-{machine_tag(info)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
