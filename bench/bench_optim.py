"""CPU optimizer-step benchmark: pyopt's fused kernels vs torch.optim.

Run from the repository root::

    python -m bench.bench_optim [--quick] [--out PATH]

For each rule (Adam, AdamW, AMSGrad, SGD with momentum, SGD Nesterov, Adagrad, RMSprop
plain and centered with momentum, Adadelta) and each case -- ``flat-16M``: one buffer of
16 Mi float32 params; ``resnet50``: torchvision ResNet-50's 161 parameter tensors
(25,557,032 params, ``bench/shapes.py``) -- it times, in one process with
``torch.set_num_threads`` equal to Numba's thread count, in rounds of 5 calls per provider
(after one untimed call) with the order rotated between rounds:

* ``pyopt``: ``opt.step(buf.grads)`` of ``pyopt.optim`` over a ``ParamBuffer`` (one flat
  store: one kernel call per step however many tensors);
* ``pyopt-clip``: ``opt.step(buf.grads, max_grad_norm=1.0)``: the global grad norm
  (one more read of the grads), then the update with the clip coefficient fused in;
* ``pyopt-kernel``: the CPU launcher alone on the flat arrays;
* ``torch``: ``torch.optim.<Rule>`` over separate tensors (1, or ResNet-50's 161) with
  ``fused=True`` where torch has a fused CPU kernel (Adam, AdamW, SGD, Adagrad), else
  ``foreach=True`` (RMSprop, Adadelta) -- the baseline of ``speedup_vs_torch``;
* ``torch-single``: torch's default on the CPU (the single-tensor loop);
* ``torch-clip``: ``clip_grad_norm_(params, 1.0, foreach=True)`` then the baseline step --
  the baseline of ``pyopt-clip``'s ``speedup_vs_torch_clip``;
* ``stream-floor`` (Adam, flat only): a Numba loop that reads p, g, m, v and writes p, m, v
  with one add each -- Adam's memory traffic with no arithmetic to speak of.

Reported: p20/p50/p80 over the repeats (warm-up excluded); effective GB/s from the bytes
each step must move (``BYTES_PER_PARAM``; +4 B/param for the norm pass of the clip
variants), that as a fraction of the triad bandwidth measured by a Numba parallel probe;
speedup = baseline p50 / provider p50. JIT compile time (first call of each launcher with
an empty Numba cache, in a subprocess) and the first step in this process (a cache load
when the cache is warm) are reported separately. A one-step check against torch's
single-tensor step from the same values records the largest parameter difference.
Results go to ``<out>/optim-cpu-<machine tag>.json`` (``--out`` a folder), or to
``--out`` itself when it ends in ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from ._timing import (
    REPO,
    bandwidth_probe,
    cold_compile_times,
    interleaved,
    machine_info,
    machine_tag,
    percentiles_ms,
    print_probe,
)
from .shapes import RESNET50_PARAM_SHAPES

FLAT_PARAMS = 16 * 2**20
MAX_GRAD_NORM = 1.0
STEP = 10  # the step count behind the scalars of the pyopt-kernel calls

# name: (pyopt / torch class, hyperparameters, torch baseline, float32 bytes per param)
RULES: dict[str, tuple[str, dict, str, int]] = {
    "Adam": ("Adam", {"lr": 1e-3}, "fused", 28),
    "AdamW": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, "fused", 28),
    "AMSGrad": ("Adam", {"lr": 1e-3, "amsgrad": True}, "fused", 36),
    "SGD-momentum": ("SGD", {"lr": 1e-2, "momentum": 0.9}, "fused", 20),
    "SGD-nesterov": ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}, "fused", 20),
    "Adagrad": ("Adagrad", {"lr": 1e-2}, "fused", 20),
    "RMSprop": ("RMSprop", {"lr": 1e-2}, "foreach", 20),
    "RMSprop-centered-momentum": (
        "RMSprop",
        {"lr": 1e-2, "centered": True, "momentum": 0.9},
        "foreach",
        36,
    ),
    "Adadelta": ("Adadelta", {"lr": 1.0}, "foreach", 28),
}
BYTES_BASIS = (
    "minimum bytes per float32 param of one step: read param, grad and every state tensor "
    "the rule uses once, write param and the state back once (Adam/AdamW 28, AMSGrad 36, "
    "SGD momentum 20, Adagrad 20, RMSprop 20, centered+momentum 36, Adadelta 28); the "
    "clip variants add 4 (one read of the grads for the global norm)."
)

_COMPILE_SNIPPET = """
import json, time
import numpy as np
t0 = time.perf_counter()
from pyopt.kernels.cpu import optim as k
out = {"import_s": time.perf_counter() - t0}
a = [np.ones(64, np.float32) for _ in range(5)]
calls = {
    "adam": lambda: k.adam_update(*a, 1, 1, 0, .1, .999, .001, .1, 1e-8, -1e-3, True),
    "sgd": lambda: k.sgd_update(*a[:3], 1, 0, .9, 1, -1e-2, False, True),
    "adagrad": lambda: k.adagrad_update(*a[:3], 1, 0, 1e-10, -1e-2),
    "rmsprop": lambda: k.rmsprop_update(*a, 1, 0, .99, .01, 1e-8, .9, -1e-2, True),
    "adadelta": lambda: k.adadelta_update(*a[:4], 1, 0, .9, .1, 1e-6, -1.0),
    "grad_sumsq": lambda: k.grad_sumsq(a[0], np.empty((1, 2))),
}
for name, call in calls.items():
    t0 = time.perf_counter()
    call()
    out[name + "_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def compile_times() -> dict[str, object]:
    """First float32 call of each launcher in a fresh process with an empty Numba cache."""
    return cold_compile_times(_COMPILE_SNIPPET)


@njit(parallel=True, cache=True)
def _stream_floor(p, g, m, v):  # Adam's traffic: read p, g, m, v; write p, m, v
    for i in prange(p.size):
        x = g[i]
        p[i] += x
        m[i] += x
        v[i] += x


def _kernel_step(rule: str, flat: dict[str, np.ndarray]):
    """The launcher call of one step at ``STEP`` (scalars as the public layer makes them)."""
    from pyopt.kernels.cpu import optim as k

    cls, hp, _, _ = RULES[rule]
    p, g = flat["param"], flat["grad"]
    s = [flat[f"s{i}"] for i in range(3)]
    none = np.zeros(0, p.dtype)
    lr = hp["lr"]
    if cls in ("Adam", "AdamW"):
        b1, b2 = 0.9, 0.999
        amsgrad = hp.get("amsgrad", False)
        param_mult = 1.0 - lr * hp.get("weight_decay", 0.0) if cls == "AdamW" else 1.0
        args = (p, g, s[0], s[1], s[2] if amsgrad else none, 1.0, param_mult, 0.0, 1 - b1)
        args += (b2, 1 - b2, math.sqrt(1 - b2**STEP), 1e-8, -lr / (1 - b1**STEP), amsgrad)
        return lambda: k.adam_update(*args)
    if cls == "SGD":
        args = (p, g, s[0], 1.0, 0.0, hp["momentum"], 1.0, -lr, False, hp.get("nesterov", False))
        return lambda: k.sgd_update(*args)
    if cls == "Adagrad":
        return lambda: k.adagrad_update(p, g, s[0], 1.0, 0.0, 1e-10, -lr)
    if cls == "RMSprop":
        centered, momentum = hp.get("centered", False), hp.get("momentum", 0.0)
        ga, buf = (s[0] if centered else none), (s[1] if momentum > 0 else none)
        args = (p, g, s[2], ga, buf, 1.0, 0.0, 0.99, 0.01, 1e-8, momentum, -lr, centered)
        return lambda: k.rmsprop_update(*args)
    return lambda: k.adadelta_update(p, g, s[0], s[1], 1.0, 0.0, 0.9, 0.1, 1e-6, -lr)


def _torch_optimizer(rule: str, params, mode: str):
    import torch

    cls, hp, _, _ = RULES[rule]
    kw = {"fused": True} if mode == "fused" else {"foreach": mode == "foreach"}
    return getattr(torch.optim, cls)(params, **hp, **kw)


def _torch_params(values: list[np.ndarray], grads: list[np.ndarray]):
    import torch

    params = []
    for v, g in zip(values, grads, strict=True):
        t = torch.nn.Parameter(torch.from_numpy(v.copy()))
        t.grad = torch.from_numpy(g.copy())
        params.append(t)
    return params


def _check_vs_torch(rule: str, shapes: dict, rng) -> float:
    """Largest |pyopt − torch single-tensor| / max|param| after 3 steps from equal values."""
    import pyopt.optim

    cls, hp, _, _ = RULES[rule]
    buf = pyopt.optim.ParamBuffer(shapes, np.float32, device="cpu")
    buf.data[:] = rng.standard_normal(buf.size, dtype=np.float32)
    buf.grad[:] = 1e-2 * rng.standard_normal(buf.size, dtype=np.float32)
    params = _torch_params(list(buf.params.values()), list(buf.grads.values()))
    ours = getattr(pyopt.optim, cls)(buf.params, **hp)
    theirs = _torch_optimizer(rule, params, "single")
    for _ in range(3):
        ours.step(buf.grads)
        theirs.step()
    diff = max(
        float(np.max(np.abs(t.detach().numpy() - v), initial=0.0))
        for t, v in zip(params, buf.params.values(), strict=True)
    )
    return diff / max(1.0, float(np.max(np.abs(buf.data))))


def _case(rule: str, case: str, shapes: dict, repeats: int, warmup: int, rng) -> list[dict]:
    import torch

    import pyopt.optim

    cls, hp, baseline, bytes_per_param = RULES[rule]
    buffers = {}
    optimizers = {}
    for name in ("pyopt", "pyopt-clip"):
        buf = pyopt.optim.ParamBuffer(shapes, np.float32, device="cpu")
        buf.data[:] = rng.standard_normal(buf.size, dtype=np.float32)
        buf.grad[:] = 1e-2 * rng.standard_normal(buf.size, dtype=np.float32)
        buffers[name] = buf
        optimizers[name] = getattr(pyopt.optim, cls)(buf.params, **hp)
    n = buffers["pyopt"].size
    values = list(buffers["pyopt"].params.values())
    grads = list(buffers["pyopt"].grads.values())

    def pyopt_step():
        optimizers["pyopt"].step(buffers["pyopt"].grads)

    def pyopt_clip_step():
        optimizers["pyopt-clip"].step(buffers["pyopt-clip"].grads, max_grad_norm=MAX_GRAD_NORM)

    first = {}
    for name, fn in (("pyopt", pyopt_step), ("pyopt-clip", pyopt_clip_step)):
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0

    flat = {
        "param": buffers["pyopt"].data.copy(),
        "grad": buffers["pyopt"].grad.copy(),
        **{f"s{i}": np.zeros(n, np.float32) for i in range(3)},
    }
    fns = {"pyopt": pyopt_step, "pyopt-clip": pyopt_clip_step, "pyopt-kernel": None}
    fns["pyopt-kernel"] = _kernel_step(rule, flat)
    torch_sets = {}
    for name, mode in (("torch", baseline), ("torch-single", "single"), ("torch-clip", baseline)):
        params = _torch_params(values, grads)
        opt = _torch_optimizer(rule, params, mode)
        torch_sets[name] = (params, opt)
    fns["torch"] = torch_sets["torch"][1].step
    fns["torch-single"] = torch_sets["torch-single"][1].step
    clip_params, clip_opt = torch_sets["torch-clip"]

    def torch_clip_step():
        torch.nn.utils.clip_grad_norm_(clip_params, MAX_GRAD_NORM, foreach=True)
        clip_opt.step()

    fns["torch-clip"] = torch_clip_step
    if rule == "Adam" and case == "flat-16M":
        floor = [flat["param"].copy(), flat["grad"], flat["s0"].copy(), flat["s1"].copy()]
        fns["stream-floor"] = lambda: _stream_floor(*floor)
    for fn in fns.values():  # state allocation, torch's lazy init, compile: not timed
        fn()

    times = interleaved(fns, repeats, warmup=warmup)
    threads = numba.get_num_threads()
    torch_p50 = float(np.median(times["torch"]))
    clip_p50 = float(np.median(times["torch-clip"]))
    rows = []
    for provider, secs in times.items():
        pct = percentiles_ms(secs)
        clip = provider.endswith("-clip")
        nbytes = n * (bytes_per_param + (4 if clip else 0))
        row = {
            "op": "optimizer_step",
            "rule": rule,
            "case": case,
            "provider": provider,
            "backend": "cpu",
            "torch_mode": {"torch": baseline, "torch-clip": baseline, "torch-single": "single"}.get(
                provider
            ),
            "n_params": n,
            "n_tensors": len(shapes),
            "dtype": "float32",
            "threads": threads,
            **{f"{k}_ms": v for k, v in pct.items()},
            "min_bytes": nbytes,
            "gbs": nbytes / (pct["p50"] * 1e-3) / 1e9,
            "speedup_vs_torch": torch_p50 / float(np.median(secs)),
        }
        if clip:
            row["speedup_vs_torch_clip"] = clip_p50 / float(np.median(secs))
        if provider in first:
            row["first_call_s"] = first[provider]
        rows.append(row)
    return rows


def _print_table(rows, bandwidth, compile_info):
    print_probe(bandwidth, compile_info, "first float32 calls")
    header = (
        f"{'rule':<26} {'case':<9} {'provider':<13} {'p50 ms':>8} {'p20-p80 ms':>15} "
        f"{'GB/s':>6} {'%BW':>5} {'x torch':>8} {'x clip':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        clip = r.get("speedup_vs_torch_clip")
        print(
            f"{r['rule']:<26} {r['case']:<9} {r['provider']:<13} {r['p50_ms']:8.2f} "
            f"{r['p20_ms']:7.2f}-{r['p80_ms']:<7.2f} {r['gbs']:6.1f} "
            f"{100 * r['pct_of_bandwidth']:4.0f}% {r['speedup_vs_torch']:8.2f} "
            f"{'' if clip is None else f'{clip:7.2f}'}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument(
        "--out", default=str(REPO / "bench" / "results"), help="JSON folder, or a .json path"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    parser.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES))
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the cold-compile subprocess"
    )
    args = parser.parse_args(argv)

    import torch

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    repeats = args.repeats or (5 if args.quick else 30)
    warmup = 1  # untimed calls before each round of 5 timed ones

    info = machine_info()
    load_before = os.getloadavg()
    compile_info = {} if args.no_compile else compile_times()
    bandwidth = bandwidth_probe(64 << 20 if args.quick else 256 << 20, 5 if args.quick else 15)
    rng = np.random.default_rng(0)
    cases = {"flat-16M": {"flat": (FLAT_PARAMS,)}, "resnet50": RESNET50_PARAM_SHAPES}
    rows, checks = [], {}
    for rule in args.rules:
        checks[rule] = {"param_rel_diff_vs_torch_single_3_steps": _check_vs_torch(
            rule, {"w": (1 << 16,), "b": (1000,)}, rng
        )}  # fmt: skip
        for case, shapes in cases.items():
            rows += _case(rule, case, shapes, repeats, warmup, rng)
            print(f"done: {rule} {case}", flush=True)
    for r in rows:
        r["pct_of_bandwidth"] = r["gbs"] / bandwidth["triad_gbs"]
    _print_table(rows, bandwidth, compile_info)

    result = {
        "benchmark": "optim-cpu",
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "bandwidth_probe": bandwidth,
        "compile": compile_info,
        "settings": {
            "repeats": repeats,
            "rounds_of": 5,
            "warmup_per_round": warmup,
            "dtype": "float32",
            "flat_params": FLAT_PARAMS,
            "max_grad_norm": MAX_GRAD_NORM,
            "hyperparameters": {rule: spec[1] for rule, spec in RULES.items()},
        },
        "bytes_basis": BYTES_BASIS,
        "bandwidth_basis": (
            "pct_of_bandwidth = gbs / the probe's triad GB/s. The probe counts the bytes its "
            "kernels name, not the read-for-ownership of the lines they only write (copy "
            "moves 3 arrays for 2 counted, triad 4 for 3), while every array an update "
            "writes it also reads: the steps can pass 100%. stream-floor (Adam, flat) is a "
            "Numba loop with Adam's exact traffic and almost no arithmetic."
        ),
        "speedup_basis": (
            "torch p50 / provider p50 (same process, interleaved repeats); torch = fused=True "
            "for Adam, AdamW, AMSGrad, SGD, Adagrad and foreach=True for RMSprop, Adadelta; "
            "speedup_vs_torch_clip: torch clip_grad_norm_(foreach=True) + that step"
        ),
        "checks": checks,
        "results": rows,
    }
    out = Path(args.out)
    path = out if out.suffix == ".json" else out / f"optim-cpu-{machine_tag(info)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
