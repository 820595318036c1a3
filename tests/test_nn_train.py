"""Linear, ReLU, CrossEntropyLoss and Sequential against torch; flattened parameters; the
digits MLP trained beside a torch model for 50 steps; the ``pyopt train`` console script,
its progress lines, its thread choice and its torch framework (``--framework torch``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

import pyopt
from pyopt import _reference as reference
from pyopt import _train, nn
from pyopt._train import TrainConfig, build_mlp, load_digits_split, pick_threads
from pyopt.optim import AdamW

torch = pytest.importorskip("torch", reason="torch is needed for the layer parity tests")

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape, out", [((5, 7), 3), ((2, 3, 1025), 1), ((1, 1), 1023)])
def test_linear_matches_torch(x_shape, out, bias, dtype):
    rng = np.random.default_rng(0)
    layer = nn.Linear(x_shape[-1], out, bias=bias, dtype=dtype, device="cpu", seed=3)
    ref = torch.nn.Linear(x_shape[-1], out, bias=bias, dtype=getattr(torch, np.dtype(dtype).name))
    ref.load_state_dict({k: _t(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal(x_shape).astype(dtype)
    dy = rng.standard_normal((*x_shape[:-1], out)).astype(dtype)
    tx = _t(x).requires_grad_()
    ty = ref(tx)
    ty.backward(_t(dy))
    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == dtype
    assert _rel(y, ty.detach().numpy()) <= TOL[dtype]
    assert _rel(dx, tx.grad.numpy()) <= TOL[dtype]
    assert _rel(layer.weight_grad, ref.weight.grad.numpy()) <= TOL[dtype]
    if bias:
        assert _rel(layer.bias_grad, ref.bias.grad.numpy()) <= TOL[dtype]
    else:
        assert layer.bias is None and layer.bias_grad is None


def test_linear_init_is_torchs_distribution():
    layer = nn.Linear(400, 300, device="cpu", seed=1)
    bound = 1 / np.sqrt(400)
    for arr in (layer.weight, layer.bias):
        assert np.abs(arr).max() <= bound and np.abs(arr).max() > 0.99 * bound
    kind, mean, std, _ = reference.init_distribution("uniform_", (300, 400), a=-bound, b=bound)
    mean_tol, var_tol = reference.moment_bounds(kind, std, layer.weight.size)
    assert abs(layer.weight.mean() - mean) < mean_tol
    assert abs(layer.weight.astype(np.float64).var() - std**2) < var_tol
    again = nn.Linear(400, 300, device="cpu", seed=1)
    assert np.array_equal(again.weight, layer.weight) and np.array_equal(again.bias, layer.bias)
    assert not np.array_equal(layer.bias, layer.weight[0, :300])  # different offsets


def test_linear_errors():
    layer = nn.Linear(4, 2, device="cpu")
    with pytest.raises(ValueError, match="in_features"):
        layer(np.ones((3, 5), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.ones((3, 4), np.float64))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(4, 2, device="cpu").backward(np.ones((3, 2), np.float32))
    layer(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        layer.backward(np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="in_features"):
        nn.Linear(4.0, 2)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(4, -1)


def test_relu_matches_torch():
    x = np.array([-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf], np.float32)
    dy = np.arange(1, 9, dtype=np.float32)
    tx = _t(x).requires_grad_()
    ty = torch.relu(tx)
    ty.backward(_t(dy))
    relu = nn.ReLU()
    np.testing.assert_array_equal(relu(x), ty.detach().numpy())
    np.testing.assert_array_equal(relu.backward(dy), tx.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_torch_and_reference(dtype):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((37, 10)) * 30).astype(dtype)  # large: needs the max shift
    target = rng.integers(0, 10, 37)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, target)
    grad = loss_fn.backward()
    tl = _t(logits).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target))
    tloss.backward()
    want_loss, want_grad = reference.cross_entropy(logits, target)
    assert loss == pytest.approx(tloss.item(), rel=TOL[dtype])
    assert loss == pytest.approx(want_loss, rel=TOL[dtype])
    assert _rel(grad, tl.grad.numpy()) <= TOL[dtype]
    assert _rel(grad, want_grad) <= TOL[dtype]
    with pytest.raises(ValueError, match="class indices"):
        loss_fn(logits, target + 10)
    with pytest.raises(ValueError, match="target must have shape"):
        loss_fn(logits, target[:3])


def test_sequential_names_state_dict_and_flattening():
    model = build_mlp(64, (32, 16), 10, 0.0, dtype=np.float32, device="cpu")
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "1.weight", "1.bias", "4.weight", "5.weight", "5.bias",
                     "8.weight", "8.bias"]  # fmt: skip
    ref = torch.nn.Sequential(
        torch.nn.Linear(64, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Dropout(0.0), torch.nn.Linear(32, 16, bias=False), torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(16, 10),
    )  # fmt: skip
    state = model.state_dict()
    # The Dropout layers' random-stream position: state torch's Dropout does not have.
    assert set(state) - set(ref.state_dict()) == {"3._extra_state", "7._extra_state"}
    assert set(ref.state_dict()) <= set(state)
    ref.load_state_dict(_torch_state(state))
    before = {n: p.copy() for n, p in model.named_parameters()}
    buf = model.flatten_parameters()
    assert buf.size == sum(p.size for p in before.values())
    for name, p in model.named_parameters():
        assert np.shares_memory(p, buf.data) and np.array_equal(p, before[name])
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    model.backward(np.ones_like(model(x)))
    for name, g in model.named_grads():
        assert np.shares_memory(g, buf.grad) and g is buf.grads[name]
    assert np.abs(buf.grad).max() > 0
    model.load_state_dict(state)  # loads into the flattened views
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p, before[name])
    with pytest.raises(ValueError, match=r"missing keys \['0.weight'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "0.weight"})
    with pytest.raises(ValueError, match=r"state_dict\['8.weight'\]"):  # a later layer's shape
        model.load_state_dict({**state, "0.weight": state["0.weight"] + 1, "8.weight": np.ones(3)})
    for name, p in model.named_parameters():  # nothing was copied, not even layer 0
        np.testing.assert_array_equal(p, before[name])


def _torch_mlp(model, dtype):
    tdtype = getattr(torch, np.dtype(dtype).name)
    layers = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            layers.append(
                torch.nn.Linear(
                    layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=tdtype
                )
            )
        elif isinstance(layer, nn.BatchNorm):
            layers.append(torch.nn.BatchNorm1d(layer.num_features, dtype=tdtype))
        elif isinstance(layer, nn.ReLU):
            layers.append(torch.nn.ReLU())
        else:
            layers.append(torch.nn.Dropout(layer.p))
    ref = torch.nn.Sequential(*layers)
    ref.load_state_dict(_torch_state(model.state_dict()))
    return ref


def _torch_state(state):
    """A pyopt state dict for a torch model: tensors, without the Dropout layers' stream
    positions (``*._extra_state``, which torch's Dropout does not keep)."""
    return {k: torch.as_tensor(v) for k, v in state.items() if not k.endswith("._extra_state")}


def _groups(names, params, wd, named):
    """Weight decay on the Linear weights only; params as dicts (pyopt) or lists (torch)."""
    decay = [n for n in names if n.endswith("weight") and params[n].ndim == 2]
    rest = [n for n in names if n not in decay]
    pick = (
        (lambda ns: {n: params[n] for n in ns}) if named else (lambda ns: [params[n] for n in ns])
    )
    return [
        {"params": pick(decay), "weight_decay": wd},
        {"params": pick(rest), "weight_decay": 0.0},
    ]


def _schedule(opt, mod, warmup, total):
    return mod.SequentialLR(
        opt,
        [
            mod.LinearLR(opt, start_factor=0.01, total_iters=warmup),
            mod.CosineAnnealingLR(opt, T_max=total - warmup),
        ],
        milestones=[warmup],
    )


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_training_matches_torch_for_50_steps(dtype, tol):
    """The digits MLP (dropout off, same initial weights) trained by pyopt and by torch:
    Linear/BatchNorm/ReLU forward and backward, cross-entropy, AdamW with per-group weight
    decay, fused global-norm clipping vs clip_grad_norm_, warmup + cosine schedule."""
    x_train, y_train, _, _ = load_digits_split(0.2, 0)
    pyopt.manual_seed(0)
    model = build_mlp(64, (128, 128), 10, 0.0, dtype=dtype, device="cpu")
    ref = _torch_mlp(model, dtype)
    buf = model.flatten_parameters()
    names = list(buf)
    opt = AdamW(_groups(names, buf.params, 0.05, named=True), lr=3e-3)
    tparams = dict(ref.named_parameters())
    topt = torch.optim.AdamW(_groups(names, tparams, 0.05, named=False), lr=3e-3)
    steps, batch = 50, 64
    sched = _schedule(opt, sys.modules["pyopt.optim.lr_scheduler"], 10, steps)
    tsched = _schedule(topt, torch.optim.lr_scheduler, 10, steps)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    worst = 0.0
    for step in range(steps):
        idx = rng.choice(len(x_train), batch, replace=False)
        xb, yb = x_train[idx].astype(dtype), y_train[idx]
        loss = loss_fn(model(xb), yb)
        model.backward(loss_fn.backward())
        result = opt.step(buf.grads, max_grad_norm=1.0)
        sched.step()

        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(ref(_t(xb)), torch.from_numpy(yb))
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        topt.step()
        tsched.step()

        assert abs(loss - tloss.item()) <= tol * abs(tloss.item()), (step, loss, tloss.item())
        assert result.grad_norm == pytest.approx(float(tnorm), rel=max(tol, 1e-6))
        worst = max(worst, abs(loss - tloss.item()) / abs(tloss.item()))
    if os.environ.get("PYOPT_PRINT_PARITY"):
        print(
            f"\nworst relative loss difference over {steps} steps ({np.dtype(dtype)}): {worst:.2e}"
        )
    for name, p in model.named_parameters():
        assert _rel(p, tparams[name].detach().numpy()) <= 50 * tol, name
    state = model.state_dict()
    for key, value in ref.state_dict().items():
        assert _rel(state[key], value.numpy()) <= 50 * tol, key


@pytest.mark.slow
def test_pyopt_train_console_script_reaches_97_percent(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pyopt", "train", "--device", "cpu", "--no-progress",
         "--min-accuracy", "0.97", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["test_accuracy"] >= 0.97
    assert len(result["history"]) == TrainConfig().epochs
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == TrainConfig().epochs and "test acc" in lines[-1]
    assert f"test accuracy {100 * result['test_accuracy']:.2f}%" in proc.stdout
    # the loss went down and the schedule ended at zero (cosine to eta_min = 0)
    assert result["history"][-1]["loss"] < 0.1 * result["history"][0]["loss"]
    assert result["history"][-1]["lr"] == 0.0


@pytest.mark.slow
def test_pyopt_train_framework_torch_reaches_97_percent(tmp_path, capsys):
    """``--framework torch``: the same MLP as torch modules with pyopt.torch's batch norm,
    dropout and AdamW, torch autograd and torch's schedulers, the same output, JSON and
    accuracy bar as the default framework."""
    from pyopt.cli import main

    out = tmp_path / "result.json"
    argv = ["train", "--framework", "torch", "--device", "cpu", "--no-progress", "--threads",
            "1", "--min-accuracy", "0.97", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["config"]["framework"] == "torch" and result["test_accuracy"] >= 0.97
    assert set(result) == {f.name for f in dataclasses.fields(_train.TrainResult)}
    lines = [line for line in stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == len(result["history"]) == TrainConfig().epochs
    assert f"test accuracy {100 * result['test_accuracy']:.2f}%" in stdout
    assert result["history"][-1]["loss"] < 0.1 * result["history"][0]["loss"]
    assert result["history"][-1]["lr"] == 0.0  # torch's CosineAnnealingLR, to eta_min = 0


def test_torch_framework_builds_the_same_mlp_from_torch_modules():
    import pyopt.torch.nn

    pyopt.manual_seed(0)
    ours = build_mlp(64, (32, 16), 10, 0.2, dtype=np.float64, device="cpu")
    torch.manual_seed(0)
    model = build_mlp(64, (32, 16), 10, 0.2, dtype="float64", device="cpu", framework="torch")
    assert isinstance(model, torch.nn.Sequential)
    assert [type(m) for m in model] == [
        torch.nn.Linear, pyopt.torch.nn.BatchNorm1d, torch.nn.ReLU, pyopt.torch.nn.Dropout,
    ] * 2 + [torch.nn.Linear]  # fmt: skip
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {n: p.shape for n, p in ours.named_parameters()}
    assert all(p.dtype == torch.float64 for p in model.parameters())
    weight = model[0].weight.detach().numpy()  # He-normal: std sqrt(2 / fan_in)
    assert abs(weight.std() - np.sqrt(2 / 64)) < 0.1 * np.sqrt(2 / 64)
    groups = _train.param_groups(dict(model.named_parameters()), 0.05, list)
    assert [n for n, _ in groups[0]["params"]] == ["0.weight", "4.weight", "8.weight"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    named = _train.param_groups(dict(ours.named_parameters()), 0.05)
    assert [list(g["params"]) for g in named] == [
        [n for n, _ in g["params"]] for g in groups
    ]  # pyopt's groups: the same names, as dicts


def test_torch_framework_runs_with_the_chosen_threads_and_restores_torchs(monkeypatch):
    seen = []
    monkeypatch.setattr(
        _train,
        "_train",
        lambda *args: seen.append((numba.get_num_threads(), torch.get_num_threads())),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _train.train(TrainConfig(threads=1, framework="torch"), log=None)
        assert seen == [(1, 1)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pyopt_train_framework_torch_without_torch_names_the_extra(monkeypatch, capsys):
    from pyopt.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else find_spec(name, *args),
    )
    assert main(["train", "--framework", "torch"]) == 2
    err = capsys.readouterr().err
    assert "--framework torch needs PyTorch" in err and "pip install pyopt-kernels[torch]" in err
    with pytest.raises(RuntimeError, match=r"pyopt-kernels\[torch\]"):
        _train.train(TrainConfig(framework="torch"), log=None)
    with pytest.raises(SystemExit):
        main(["train", "--framework", "jax"])
    with pytest.raises(ValueError, match="--framework must be one of pyopt, torch"):
        _train.require_framework("jax")


def test_pyopt_train_rejects_bad_options(capsys):
    from pyopt.cli import main

    assert main(["train", "--epochs", "0"]) == 2
    assert main(["train", "--dropout", "1.0"]) == 2
    if "cuda" not in pyopt.backends():
        assert main(["train", "--device", "cuda"]) == 2  # says why CUDA is unusable
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    assert main(["train", "--threads", str(too_many)]) == 2
    assert f"--threads must be 'auto' or 1 to {too_many - 1}" in capsys.readouterr().err
    for bad in (["--device", "tpu"], ["--threads", "0"], ["--threads", "two"]):
        with pytest.raises(SystemExit):
            main(["train", *bad])
    assert "--threads: must be 'auto' or a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cores, load, threads",
    [(2, 0.0, 1), (2, 1.9, 1), (1, 0.0, 1), (4, 0.0, 2), (4, 0.5, 1), (64, 3.0, 2), (64, 63.5, 1)],
)
def test_pick_threads_from_cores_and_load(monkeypatch, cores, load, threads):
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setattr(_train.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(_train.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 64)
    assert pick_threads() == (threads, f"{cores} cores, load {load:.1f}")
    assert pick_threads(3) == (3, "--threads")  # asked for: as asked
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert pick_threads()[0] == 1  # never more than Numba may run
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert pick_threads() == (1, "NUMBA_NUM_THREADS=1")


def test_train_runs_with_the_chosen_threads_and_restores_numbas(monkeypatch):
    seen = []
    monkeypatch.setattr(_train, "_train", lambda *args: seen.append(numba.get_num_threads()))
    before = numba.get_num_threads()
    log = io.StringIO()
    _train.train(TrainConfig(threads=1), log=log)
    assert seen == [1] and numba.get_num_threads() == before
    assert log.getvalue() == "threads: 1 (--threads; --threads to override)\n"


def test_pyopt_train_piped_says_what_compiles_before_the_first_epoch(tmp_path):
    """stderr a pipe (merged into stdout, which the epochs flush): the thread choice first,
    then a line naming the kernels about to compile (or load), then what they did, all
    before the first epoch's line; the JSON records the threads and the first step."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pyopt", "train", "--device", "cpu", "--epochs", "1",
         "--hidden", "16", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    kernels = "pyopt's CPU kernels for dropout and init, batch norm, optimizers"
    assert re.fullmatch(r"threads: \d+ \(.*; --threads to override\)", lines[0])
    assert re.fullmatch(rf"(compiling|loading|compiling or loading) {kernels}( .*)?", lines[1]), (
        lines
    )
    assert re.fullmatch(
        rf"{kernels}: \d+ compiled, \d+ loaded from the Numba cache "
        r"\(the model build and first step took \d+\.\d s\)",
        lines[2],
    )
    assert lines[3].startswith("epoch   1/1") and lines[4].startswith("test accuracy")
    assert "\r" not in proc.stdout  # no bar off a terminal
    result = json.loads(out.read_text())
    assert result["threads"] == int(lines[0].split()[1]) >= 1
    assert 0 < result["first_step_s"] < result["seconds"]

    quiet = subprocess.run(
        [sys.executable, "-m", "pyopt", "train", "--device", "cpu", "--epochs", "1",
         "--hidden", "16", "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""  # --no-progress: results alone
    assert quiet.stdout.startswith("threads: 1 (--threads; --threads to override)\n")


@pytest.mark.sim
def test_linear_on_cuda_needs_cupy(cuda_backend):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: the CUDA matmul path is available")
    with pytest.raises(RuntimeError, match="CuPy"):
        nn.Linear(4, 2, device="cuda")
