"""Parity with torch.optim: 500 steps of every rule and flag, on both backends.

One table of ``(name, constructor kwargs, step options)`` in the style of Optax's tests:
adding an optimizer setting adds a row. Both sides start from the same params and see the
same gradients ``g = noise_t + 0.5·p`` (each computed from its own params, so errors feed
back as in training); torch runs its single-tensor implementation, with
``clip_grad_norm_`` and loss-scale division done the way torch users do them. After 500
steps the params and every state tensor agree to a max relative error of 1e-5 in float32
and 1e-12 in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import CUDASIM, to_host

from pyopt import optim
from pyopt._backend import copy_into

torch = pytest.importorskip("torch", reason="torch is the reference for optimizer parity")

STEPS = 500
PRINT_ERRORS = os.environ.get("PYOPT_PRINT_PARITY") == "1"  # with -s: the measured errors
TOL = {np.float32: 1e-5, np.float64: 1e-12}
CPU_SHAPES = [(1,), (7,), (3, 11), (1023,), (1025,)]
# The simulator runs a Python thread per CUDA thread: small tensors keep 500 steps cheap
# (kernel scheduling over many blocks is covered by tests/test_cuda_optim_kernels.py).
CUDA_SHAPES = [(3, 5), (7,), (1,)]

TABLE = [
    ("SGD", {"lr": 0.05}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-2}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, {}),
    ("SGD", {"lr": 0.01, "momentum": 0.5, "maximize": True}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}, {"max_grad_norm": 1.0, "grad_scale": 1024.0}),
    ("Adam", {}, {}),
    ("Adam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}, {}),
    ("Adam", {"lr": 1e-2, "betas": (0.4, 0.9)}, {}),
    ("Adam", {"lr": 1e-2, "weight_decay": 1e-2}, {}),
    ("Adam", {"lr": 1e-2, "amsgrad": True}, {}),
    ("Adam", {"lr": 1e-2, "maximize": True}, {}),
    ("Adam", {"lr": 1e-2}, {"max_grad_norm": 1.0}),
    ("Adam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}, {}),
    ("AdamW", {"lr": 1e-2}, {}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}, {"grad_scale": 65536.0}),
    ("Adagrad", {}, {}),
    ("Adagrad", {"lr": 0.05, "lr_decay": 1e-2, "initial_accumulator_value": 0.1}, {}),
    ("Adagrad", {"lr": 0.05, "weight_decay": 1e-2, "maximize": True}, {}),
    ("RMSprop", {"lr": 1e-3}, {}),
    ("RMSprop", {"lr": 1e-3, "centered": True}, {}),
    ("RMSprop", {"lr": 1e-3, "momentum": 0.9}, {}),
    ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 1e-2}, {}),
    ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "maximize": True}, {}),
    ("Adadelta", {}, {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.95, "weight_decay": 1e-2}, {}),
    ("Adadelta", {"maximize": True}, {}),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(TABLE)]


def _rel_err(actual, expected):
    """``max |a − b| / max |b|``: the error relative to the buffer's scale.

    Not elementwise: torch's vectorized CPU kernels fuse ``a + α·b`` and ``lerp`` into
    FMAs and pyopt's kernels do not, so the two round differently by an ulp per step, and
    an entry that crosses zero carries that absolute error with no magnitude to divide it
    by. Relative to the scale of all params (or all of one state) the drift after 500
    float32 steps stays around 1e-6.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def _torch_step(topt, tparams, options):
    scale = options.get("grad_scale")
    if scale is not None:  # a loss-scaled backward, then GradScaler.unscale_
        for p in tparams:
            p.grad.mul_(scale).mul_(1.0 / scale)
    if "max_grad_norm" in options:
        torch.nn.utils.clip_grad_norm_(tparams, options["max_grad_norm"], foreach=False)
    topt.step()


@pytest.fixture
def tiny_launch(monkeypatch):
    """One-warp blocks: the simulator's cost is per thread and per barrier."""
    from pyopt.kernels import config

    monkeypatch.setattr(config, "CUDA_THREADS", 32)
    monkeypatch.setattr(config, "CUDA_BLOCKS_PER_SM", 1)
    monkeypatch.setattr(config, "CUDA_SM_COUNT", 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "kwargs", "options"), TABLE, ids=IDS)
def test_500_steps_match_torch(backend, name, kwargs, options, dtype, request):
    if backend == "cuda" and CUDASIM:
        request.getfixturevalue("tiny_launch")
    shapes = CPU_SHAPES if backend == "cpu" else CUDA_SHAPES
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    buf = optim.ParamBuffer(shapes, dtype=dtype, device=backend)
    buf.load({str(i): p for i, p in enumerate(init)})
    opt = getattr(optim, name)(buf.params, **kwargs)
    tparams = [torch.tensor(p) for p in init]
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kwargs)
    scale = options.get("grad_scale", 1.0)
    for t in range(STEPS):
        noise = np.random.default_rng([1, t])
        ours = [to_host(buf.params[str(i)]) for i in range(len(shapes))]
        for i, (p, tp) in enumerate(zip(ours, tparams, strict=True)):
            n = noise.standard_normal(p.shape).astype(dtype)
            g = n + dtype(0.5) * p
            copy_into(buf.grads[str(i)], (g * dtype(scale)).astype(dtype))
            tp.grad = torch.from_numpy(n) + 0.5 * tp
        result = opt.step(buf.grads, **options)
        assert result.skipped is False
        _torch_step(topt, tparams, options)
    sd, tsd = opt.state_dict(), topt.state_dict()
    # Each kind of tensor compared as one flat buffer (the ParamBuffer's layout).
    worst = _rel_err(to_host(buf.data), np.concatenate([p.numpy().ravel() for p in tparams]))
    names = {k for i in tsd["state"] for k, v in tsd["state"][i].items() if v is not None}
    for i in range(len(tparams)):
        assert sd["state"][i]["step"] == STEPS
        if "step" in tsd["state"].get(i, {}):
            assert int(tsd["state"][i]["step"]) == STEPS
    for key in names - {"step"}:
        ours = np.concatenate([sd["state"][i][key].ravel() for i in range(len(tparams))])
        theirs = np.concatenate([tsd["state"][i][key].numpy().ravel() for i in range(len(tparams))])
        worst = max(worst, _rel_err(ours, theirs))
    if PRINT_ERRORS:
        print(f"\nmax-rel-err {name} {kwargs} {options} {np.dtype(dtype).name} {worst:.3g}")
    assert worst <= TOL[dtype], f"max relative error {worst:.3g} after {STEPS} steps"
