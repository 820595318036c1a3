"""CPU batch-norm benchmark: pyopt vs torch's ``BatchNorm2d`` (training forward, backward).

Run from the repository root::

    python -m bench.bench_batchnorm [--quick] [--dtype float32|float64] [--out DIR]

For each shape and layout (NCHW ``axis=1``; channels-last: an ``(N, H, W, C)`` array with
``axis=-1`` against torch's ``channels_last`` memory format) it times, in one process with
``torch.set_num_threads`` equal to Numba's thread count, in rounds of 5 calls per provider
(after one untimed call) with the order rotated between rounds:

* ``pyopt``: ``pyopt.functional.batch_norm(..., training=True)`` and
  ``batch_norm_backward(..., training=True)`` (validation and output allocation included);
* ``pyopt-kernel``: the CPU launchers alone, into preallocated outputs;
* ``torch``: ``BatchNorm2d`` in train mode with autograd recording (the training forward),
  and ``torch.autograd.grad`` of it for ``(dx, dweight, dbias)``;
* ``torch-nograd``: the same forward under ``torch.no_grad()``.

Reported: p20/p50/p80 over the repeats (warm-up excluded), effective GB/s from the MINIMUM
bytes (forward: read x once + write y once; backward: read x and dy once + write dx
once), that as a fraction of the triad bandwidth measured by a Numba parallel probe, and
speedup = torch p50 / pyopt p50. JIT compile time (first call with an empty Numba cache, in
a subprocess) and the first call in this process (a cache load when the cache is warm) are
reported separately. Results go to ``<out>/batchnorm-cpu-<machine tag>.json``.
"""

from __future__ import annotations

import argparse
import json
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
    percentiles_ms,
    print_probe,
)

SHAPES = [(32, 256, 56, 56), (128, 64, 28, 28)]
LAYOUTS = {"NCHW": 1, "NHWC": -1}
BYTES_BASIS = (
    "minimum bytes: forward reads x once and writes y once (2 * x.nbytes); backward reads "
    "x and dy once and writes dx once (3 * x.nbytes). The kernels are designed to move "
    "forward 3 * x.nbytes (x read twice) and backward 5 * x.nbytes (x, dy read twice)."
)

_COMPILE_SNIPPET = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from pyopt.functional import batch_norm, batch_norm_backward
out = {"import_s": time.perf_counter() - t0}
dt = np.dtype(sys.argv[1])
rng = np.random.default_rng(0)
for layout, shape, axis in (("NCHW", (4, 3, 5, 5), 1), ("NHWC", (4, 5, 5, 3), -1)):
    x = rng.standard_normal(shape).astype(dt)
    c = shape[axis]
    w, b = np.ones(c, dt), np.zeros(c, dt)
    t0 = time.perf_counter()
    y, mean, invstd = batch_norm(x, w, b, np.zeros(c, dt), np.ones(c, dt), axis=axis)
    out[f"forward_{layout}_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_norm_backward(y, x, w, mean, invstd, axis=axis)
    out[f"backward_{layout}_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def compile_times(dtype: str) -> dict[str, object]:
    """First-call times in a fresh process with an empty Numba cache (a cold JIT compile)."""
    return cold_compile_times(_COMPILE_SNIPPET, dtype)


def _case(shape, layout, dtype, repeats, warmup, rng):
    import torch

    from pyopt.functional import batch_norm, batch_norm_backward
    from pyopt.kernels.cpu import batchnorm as kernels

    n, c, h, w = shape
    axis = LAYOUTS[layout]
    arr_shape = (n, c, h, w) if axis == 1 else (n, h, w, c)
    x = rng.standard_normal(arr_shape, dtype=np.float64).astype(dtype)
    x = x * 2.0 + 0.5
    dy = rng.standard_normal(arr_shape, dtype=np.float64).astype(dtype)
    weight = (1.0 + 0.1 * rng.standard_normal(c)).astype(dtype)
    bias = (0.1 * rng.standard_normal(c)).astype(dtype)
    running_mean, running_var = np.zeros(c, dtype), np.ones(c, dtype)

    def fwd():
        return batch_norm(
            x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
            eps=1e-5, axis=axis,
        )  # fmt: skip

    t0 = time.perf_counter()
    y, mean, invstd = fwd()
    first_fwd = time.perf_counter() - t0

    def bwd():
        return batch_norm_backward(dy, x, weight, mean, invstd, training=True, axis=axis)

    t0 = time.perf_counter()
    dx, dweight, dbias = bwd()
    first_bwd = time.perf_counter() - t0

    # The launchers alone, on the (outer, C, inner) views the public layer passes them.
    outer, inner = (n, h * w) if axis == 1 else (n * h * w, 1)
    view = (outer, c, inner)
    x3, dy3 = x.reshape(view), dy.reshape(view)
    y_k, dx_k = np.empty(view, dtype), np.empty(view, dtype)
    mean_k, invstd_k, dw_k, db_k = (np.empty(c, dtype) for _ in range(4))
    rm_k, rv_k = running_mean.copy(), running_var.copy()
    threads = numba.get_num_threads()

    def fwd_kernel():
        kernels.batch_norm_forward(
            x3, weight, bias, rm_k, rv_k, y_k, mean_k, invstd_k, True, True, 0.1, 1e-5
        )

    def bwd_kernel():
        kernels.batch_norm_backward(dy3, x3, weight, mean, invstd, dx_k, dw_k, db_k, True)

    tdtype = getattr(torch, np.dtype(dtype).name)
    bn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1, dtype=tdtype).train()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(weight))
        bn.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x)
    dyt = torch.from_numpy(dy)
    if axis == -1:  # (N, H, W, C) memory seen as an NCHW tensor in channels_last format
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)
        bn = bn.to(memory_format=torch.channels_last)
        assert xt.is_contiguous(memory_format=torch.channels_last)
    xt = xt.detach().requires_grad_(True)

    def fwd_torch():
        return bn(xt)

    def fwd_torch_nograd():
        with torch.no_grad():
            return bn(xt)

    yt = bn(xt)
    params = (xt, bn.weight, bn.bias)

    def bwd_torch():
        return torch.autograd.grad(yt, params, dyt, retain_graph=True)

    # Sanity: the same answers as torch (rounding differences only), relative to the scale.
    def rel_diff(ours, theirs):
        theirs = theirs.detach()
        if theirs.ndim == 4 and axis == -1:
            theirs = theirs.permute(0, 2, 3, 1)
        theirs = theirs.numpy()
        return float(np.max(np.abs(ours - theirs)) / max(1.0, float(np.max(np.abs(theirs)))))

    grads = bwd_torch()
    check = {
        "forward": {"y_rel_diff_vs_torch": rel_diff(y, yt)},
        "backward": {
            "dx_rel_diff_vs_torch": rel_diff(dx, grads[0]),
            "dweight_rel_diff_vs_torch": rel_diff(dweight, grads[1]),
            "dbias_rel_diff_vs_torch": rel_diff(dbias, grads[2]),
        },
    }
    del grads

    fwd_times = interleaved(
        {
            "pyopt": fwd,
            "pyopt-kernel": fwd_kernel,
            "torch": fwd_torch,
            "torch-nograd": fwd_torch_nograd,
        },
        repeats,
        warmup=warmup,
    )
    bwd_times = interleaved(
        {"pyopt": bwd, "pyopt-kernel": bwd_kernel, "torch": bwd_torch}, repeats, warmup=warmup
    )
    first = {"forward": first_fwd, "backward": first_bwd}
    rows = []
    for mode, times, nbytes in (
        ("forward", fwd_times, 2 * x.nbytes),
        ("backward", bwd_times, 3 * x.nbytes),
    ):
        torch_p50 = float(np.median(times["torch"]))
        for provider, secs in times.items():
            pct = percentiles_ms(secs)
            row = {
                "op": "batch_norm",
                "mode": mode,
                "provider": provider,
                "backend": "cpu",
                "layout": layout,
                "shape": list(arr_shape),
                "dtype": np.dtype(dtype).name,
                "threads": threads,
                **{f"{k}_ms": v for k, v in pct.items()},
                "min_bytes": nbytes,
                "gbs": nbytes / (pct["p50"] * 1e-3) / 1e9,
                "speedup_vs_torch": torch_p50 / float(np.median(secs)),
            }
            if mode == "forward":
                row["speedup_vs_torch_nograd"] = float(np.median(times["torch-nograd"])) / float(
                    np.median(secs)
                )
            if provider == "pyopt":
                row["first_call_s"] = first[mode]
                row.update(check[mode])
            rows.append(row)
    return rows


def _print_table(rows, bandwidth, compile_info):
    print_probe(bandwidth, compile_info, "first calls")
    header = (
        f"{'shape':<18} {'layout':<6} {'mode':<8} {'provider':<13} {'p50 ms':>8} "
        f"{'p20-p80 ms':>15} {'GB/s':>6} {'%BW':>5} {'x torch':>8} {'x nograd':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        nograd = r.get("speedup_vs_torch_nograd")
        print(
            f"{'x'.join(map(str, r['shape'])):<18} {r['layout']:<6} {r['mode']:<8} "
            f"{r['provider']:<13} {r['p50_ms']:8.2f} "
            f"{r['p20_ms']:7.2f}-{r['p80_ms']:<7.2f} {r['gbs']:6.1f} "
            f"{100 * r['pct_of_bandwidth']:4.0f}% {r['speedup_vs_torch']:8.2f} "
            f"{'' if nograd is None else f'{nograd:9.2f}'}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="JSON folder")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the cold-compile subprocess"
    )
    args = parser.parse_args(argv)

    import torch

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    repeats = args.repeats or (5 if args.quick else 30)
    warmup = 1  # untimed calls before each round of 5 timed ones
    dtype = np.dtype(args.dtype)

    info = machine_info()
    compile_info = {} if args.no_compile else compile_times(dtype.name)
    bandwidth = bandwidth_probe(64 << 20 if args.quick else 256 << 20, 5 if args.quick else 15)
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        for layout in LAYOUTS:
            rows += _case(shape, layout, dtype, repeats, warmup, rng)
    for r in rows:
        r["pct_of_bandwidth"] = r["gbs"] / bandwidth["triad_gbs"]
    _print_table(rows, bandwidth, compile_info)

    result = {
        "benchmark": "batchnorm-cpu",
        "machine": info,
        "bandwidth_probe": bandwidth,
        "compile": compile_info,
        "settings": {
            "repeats": repeats,
            "rounds_of": 5,
            "warmup_per_round": warmup,
            "dtype": dtype.name,
        },
        "bytes_basis": BYTES_BASIS,
        "speedup_basis": "torch p50 / provider p50 (same process, interleaved repeats)",
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"batchnorm-cpu-{machine_tag(info)}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
