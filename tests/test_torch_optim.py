"""pyopt.torch.optim against torch.optim: the same updates, state, state dicts, schedulers,
GradScaler and closures, on flat buffers and without them, with the fallbacks when a user
replaces ``p.data`` or ``p.grad``; and clean errors that change nothing."""

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pyopt.torch needs torch (the extra 'torch')")

import pyopt.torch.optim as popt  # noqa: E402
from pyopt._check import OPTIMIZER_CASES  # noqa: E402
from pyopt.kernels.cpu import optim as cpu_optim  # noqa: E402
from pyopt.optim._optimizer import PRECISION  # noqa: E402

# (class name, hyperparameters): pyopt check's table, every flag of every rule at least once
# (its grad_scale, a loss scale, is GradScaler's business in torch).
CONFIGS = [(case.rule, case.kwargs) for case in OPTIMIZER_CASES.values()]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]
# Awkward sizes, and a conv weight for the channels_last layout.
SHAPES = [(1,), (7,), (1023,), (1025,), (3, 5), (13, 1, 3, 3), (4, 3, 2, 2)]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}


def _params(dtype, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    if channels_last:
        params[-1] = torch.nn.Parameter(params[-1].detach().to(memory_format=torch.channels_last))
    return params


def _backward(params, step, skip=()):
    """A loss whose grads differ per param and step; params in ``skip`` get no grad."""
    loss = 0
    for k, p in enumerate(params):
        if k in skip:
            continue
        g = torch.Generator().manual_seed(1000 * step + k)
        c = torch.randn(p.shape, generator=g, dtype=p.dtype)
        loss = loss + (c * p).sum() + 0.5 * (p * p).sum()
    loss.backward()


def _pair(name, hp, dtype, flatten=True, channels_last=False):
    ours, theirs = (
        _params(dtype, channels_last=channels_last),
        _params(dtype, channels_last=channels_last),
    )
    return (
        ours,
        getattr(popt, name)(ours, **hp, foreach=False, flatten=flatten),
        theirs,
        getattr(torch.optim, name)(theirs, **hp, foreach=False),
    )


def _run(params, opt, steps, skip_at=None, **step_kwargs):
    for t in range(steps):
        opt.zero_grad()
        _backward(params, t, skip=(2, 5) if t == skip_at else ())
        opt.step(**step_kwargs)


def _assert_same(ours, opt, theirs, topt, dtype):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL[dtype])
    sd, tsd = opt.state_dict(), topt.state_dict()

    # torch's hyperparameters, and pyopt's mixed-precision options at their defaults (a
    # torch optimizer that loaded pyopt's state dict holds them too).
    def torch_keys(groups):
        return [{k: v for k, v in g.items() if k not in PRECISION} for g in groups]

    assert torch_keys(sd["param_groups"]) == torch_keys(tsd["param_groups"])
    assert all({k: g[k] for k in PRECISION} == PRECISION for g in sd["param_groups"])
    assert sd["state"].keys() == tsd["state"].keys()
    for i, entry in tsd["state"].items():
        assert sd["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            torch.testing.assert_close(sd["state"][i][key], value, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("flatten", [True, False], ids=["flat", "separate"])
@pytest.mark.parametrize(("name", "hp"), CONFIGS, ids=IDS)
def test_matches_torch(name, hp, flatten, dtype):
    """Four steps, one of which leaves two params without a grad (torch skips them)."""
    ours, opt, theirs, topt = _pair(name, hp, dtype, flatten, channels_last=True)
    _run(ours, opt, 4, skip_at=1)
    _run(theirs, topt, 4, skip_at=1)
    _assert_same(ours, opt, theirs, topt, dtype)
    # The state keeps torch's layout: a channels_last param has channels_last state.
    for value in opt.state[ours[-1]].values():
        if value.dim() == 4:
            assert value.stride() == ours[-1].stride()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_params_without_grads_are_skipped_as_torch_skips_them(set_to_none):
    """A frozen param, and params no backward reached since zero_grad(): torch updates
    exactly those with a grad (a zeroed one after ``set_to_none=False``); so does pyopt,
    though after ``zero_grad()`` a flattened ``p.grad`` is a zero view, never None."""
    ours, opt, theirs, topt = _pair("AdamW", {"lr": 0.1}, torch.float32)
    for params in (ours, theirs):
        params[1].requires_grad_(False)
    for t in range(3):
        for params, o in ((ours, opt), (theirs, topt)):
            o.zero_grad(set_to_none=set_to_none)
            _backward(params, t, skip={0: (0, 3, 6), 1: (1, 6), 2: (0, 1, 4, 6)}[t])
            o.step()
    assert ours[1].grad is None and theirs[1].grad is None
    assert ours[0].grad is not None and not ours[0].grad.any()
    assert ours[6] not in opt.state and theirs[6] not in topt.state  # never had a grad
    steps = [float(o.state[params[4]]["step"]) for params, o in ((ours, opt), (theirs, topt))]
    assert steps == [2.0 if set_to_none else 3.0] * 2  # a zeroed grad is a grad
    _assert_same(ours, opt, theirs, topt, torch.float32)


def _count_calls(monkeypatch):
    """The elements of each call of the CPU optimizer launcher (its offsets' total)."""
    calls = []
    real = cpu_optim.update

    def counting(spec, segments, offsets, *args, **kwargs):
        calls.append(int(offsets[-1]))
        return real(spec, segments, offsets, *args, **kwargs)

    monkeypatch.setattr(cpu_optim, "update", counting)
    return calls


def test_step_is_one_kernel_call_per_dtype(monkeypatch):
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4)] * 40 + [(5,)] * 20]
    params += [torch.nn.Parameter(torch.randn(6, dtype=torch.float64)) for _ in range(3)]
    opt = popt.Adam([{"params": params[:30]}, {"params": params[30:], "lr": 0.1}])
    calls = _count_calls(monkeypatch)
    for t in range(2):
        opt.zero_grad()
        _backward(params, t)
        opt.step()
    # Both groups' float32 buffers (360 and 220 elements) in one call, float64 in another.
    assert calls == [580, 18] * 2


def test_replaced_grad_and_data_fall_back_with_the_same_result(monkeypatch):
    ours, opt, theirs, topt = _pair("Adam", {"lr": 0.1, "weight_decay": 0.1}, torch.float32)
    _run(ours, opt, 1)
    _run(theirs, topt, 1)
    calls = _count_calls(monkeypatch)
    for params, o in ((ours, opt), (theirs, topt)):
        params[3].data = params[3].data.clone()  # no longer a view of the flat buffer
        o.zero_grad()
        _backward(params, 1)
        params[5].grad = params[5].grad.clone()  # a grad of its own
        o.step()
    assert len(calls) == 1  # the flat runs and the replaced tensors: one call still
    _assert_same(ours, opt, theirs, topt, torch.float32)
    # model.zero_grad() drops the grads; the next backward allocates new ones.
    for params, o in ((ours, opt), (theirs, topt)):
        for p in params:
            p.grad = None
        _backward(params, 2)
        o.step()
    _assert_same(ours, opt, theirs, topt, torch.float32)
    # optimizer.zero_grad() points the grads back at the flat buffer, but for the param
    # whose data was replaced: its grad is reset as torch resets it.
    opt.zero_grad()
    views = opt._groups[0].segments[0].grad_views
    assert [p.grad is v for p, v in zip(ours, views, strict=True)] == [k != 3 for k in range(7)]
    assert ours[3].grad is None


@pytest.mark.parametrize(
    ("name", "hp"),
    [CONFIGS[2], CONFIGS[4], CONFIGS[9], CONFIGS[11]],
    ids=["SGD", "Adam", "Adagrad", "RMSprop"],
)
@pytest.mark.parametrize("direction", ["pyopt-to-torch", "torch-to-pyopt"])
def test_state_dict_loads_across_and_continues(name, hp, direction):
    """A state dict (param groups included) moves between pyopt and torch and both
    continue identically."""

    def build(cls, params):
        return cls([{"params": params[:4]}, {"params": params[4:], "lr": hp["lr"] / 2}], **hp)

    ours, theirs = _params(torch.float32), _params(torch.float32)
    opt, topt = build(getattr(popt, name), ours), build(getattr(torch.optim, name), theirs)
    source_params, source = (ours, opt) if direction == "pyopt-to-torch" else (theirs, topt)
    _run(source_params, source, 3, skip_at=1)
    saved = copy.deepcopy(source.state_dict())
    for params in (ours, theirs):
        with torch.no_grad():
            for p, q in zip(params, source_params, strict=True):
                p.copy_(q)
    opt.load_state_dict(copy.deepcopy(saved))
    topt.load_state_dict(copy.deepcopy(saved))
    for t in range(3, 6):
        for params, o in ((ours, opt), (theirs, topt)):
            o.zero_grad()
            _backward(params, t)
            o.step()
    _assert_same(ours, opt, theirs, topt, torch.float32)


def test_torch_schedulers_drive_it():
    """OneCycleLR writes lr and betas into the param groups every step."""
    ours, opt, theirs, topt = _pair("Adam", {"lr": 0.01}, torch.float32)
    schedulers = [
        torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=6) for o in (opt, topt)
    ]
    for t in range(6):
        for params, o, s in ((ours, opt, schedulers[0]), (theirs, topt, schedulers[1])):
            o.zero_grad()
            _backward(params, t)
            o.step()
            s.step()
    assert schedulers[0].get_last_lr() == schedulers[1].get_last_lr()
    _assert_same(ours, opt, theirs, topt, torch.float32)


def test_grad_scaler_with_float16_autocast_unscales_and_skips_nonfinite_steps():
    """torch.amp on the CPU: a float16 autocast forward, GradScaler's unscale_/step/update
    protocol around pyopt's step, an overflowing step skipped."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    models = [model, copy.deepcopy(model)]
    opts = [
        popt.AdamW(models[0].parameters(), lr=0.01),
        torch.optim.AdamW(models[1].parameters(), lr=0.01),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for t in range(5):
        for m, o, scaler in zip(models, opts, scalers, strict=True):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = m(x)
            assert out.dtype == torch.float16
            loss = torch.nn.functional.mse_loss(out.float(), y)
            if t == 2:
                loss = loss * float("inf")  # an overflow: the step is skipped
            scaler.scale(loss).backward()
            scaler.step(o)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**9
    _assert_same(
        list(models[0].parameters()), opts[0], list(models[1].parameters()), opts[1], torch.float32
    )


def test_closure_runs_under_enable_grad_and_its_loss_is_returned():
    ours, opt, theirs, topt = _pair("RMSprop", {"lr": 0.01}, torch.float64)

    def closure(params, o):
        def evaluate():
            assert torch.is_grad_enabled()
            o.zero_grad()
            loss = sum((p * p).sum() for p in params)
            loss.backward()
            return loss

        return evaluate

    with torch.no_grad():
        losses = [o.step(closure(params, o)) for params, o in ((ours, opt), (theirs, topt))]
    torch.testing.assert_close(losses[0], losses[1])
    _assert_same(ours, opt, theirs, topt, torch.float64)


def test_add_param_group_matches_torch():
    ours, opt, theirs, topt = _pair("Adagrad", {"lr": 0.1}, torch.float32)
    extra = [torch.nn.Parameter(torch.ones(5)) for _ in range(2)]
    opt.add_param_group({"params": [extra[0]], "lr": 0.5})
    topt.add_param_group({"params": [extra[1]], "lr": 0.5})
    for t in range(2):
        for params, o in (([*ours, extra[0]], opt), ([*theirs, extra[1]], topt)):
            o.zero_grad()
            _backward(params, t)
            o.step()
    _assert_same([*ours, extra[0]], opt, [*theirs, extra[1]], topt, torch.float32)


def test_max_grad_norm_clips_as_clip_grad_norm():
    ours, opt, theirs, topt = _pair("Adam", {"lr": 0.01}, torch.float64)
    for t in range(3):
        opt.zero_grad()
        _backward(ours, t)
        opt.step(max_grad_norm=0.5)
        topt.zero_grad()
        _backward(theirs, t)
        norm = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        topt.step()
        assert opt.last_step.grad_norm == pytest.approx(float(norm), rel=1e-12)
    _assert_same(ours, opt, theirs, topt, torch.float64)


def _snapshot(params, opt):
    return copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))


def _assert_unchanged(params, opt, snapshot):
    before_params, before_state = snapshot
    for p, q in zip(params, before_params, strict=True):
        assert torch.equal(p.detach(), q)
    after = opt.state_dict()
    assert after["param_groups"] == before_state["param_groups"]
    assert after["state"].keys() == before_state["state"].keys()
    for i, entry in before_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][i][key], value), (i, key)


def test_nonfinite_grad_with_clipping_skips_the_step():
    params = _params(torch.float32)
    opt = popt.Adam(params)
    _run(params, opt, 1)
    snapshot = _snapshot(params, opt)
    opt.zero_grad()
    _backward(params, 1)
    params[4].grad[0, 0] = float("nan")
    opt.step(max_grad_norm=1.0)
    assert opt.last_step.skipped
    _assert_unchanged(params, opt, snapshot)


def test_hooks_outlive_the_optimizer():
    params = _params(torch.float32)
    opt = popt.SGD(params, lr=0.1)
    opt.zero_grad()
    del opt
    _backward(params, 0)  # the dead optimizer's hooks do nothing
    assert all(p.grad is not None for p in params)


def test_import_pyopt_does_not_import_torch():
    code = "import sys, pyopt, pyopt.optim, pyopt.functional; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- bad input: a clear error, nothing modified --------------------------------------

BAD_CONSTRUCTION = [
    ("int param", lambda: [torch.zeros(3, dtype=torch.int64)], {}, TypeError, "or bfloat16"),
    (
        "complex param",
        lambda: [torch.zeros(3, dtype=torch.complex64, requires_grad=True)],
        {},
        TypeError,
        "complex",
    ),
    (
        "float8 param",
        lambda: [torch.nn.Parameter(torch.zeros(3, dtype=torch.float8_e4m3fn))],
        {},
        TypeError,
        "float32, float64, float16 or bfloat16",
    ),
    ("not a tensor", lambda: [np.zeros(3, np.float32)], {}, TypeError, "Tensor"),
    (
        "two devices",
        lambda: [
            torch.nn.Parameter(torch.zeros(3)),
            torch.nn.Parameter(torch.zeros(3, device="meta")),
        ],
        {},
        ValueError,
        "one device",
    ),
    (
        "a param twice",
        lambda: [torch.nn.Parameter(torch.zeros(3))] * 2,
        {},
        ValueError,
        "given twice",
    ),
    ("negative lr", lambda: [torch.nn.Parameter(torch.zeros(3))], {"lr": -1.0}, ValueError, "lr"),
    (
        "beta 1",
        lambda: [torch.nn.Parameter(torch.zeros(3))],
        {"betas": (1.0, 0.9)},
        ValueError,
        "beta1",
    ),
    (
        "differentiable",
        lambda: [torch.nn.Parameter(torch.zeros(3))],
        {"differentiable": True},
        ValueError,
        "differentiable",
    ),
    (
        "capturable",
        lambda: [torch.nn.Parameter(torch.zeros(3))],
        {"capturable": True},
        ValueError,
        "capturable",
    ),
    (
        "flatten not bool",
        lambda: [torch.nn.Parameter(torch.zeros(3))],
        {"flatten": 1},
        TypeError,
        "flatten",
    ),
    ("empty", lambda: [], {}, ValueError, "empty"),
]


# torch warns of a duplicate param before pyopt refuses it.
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize(
    ("params", "hp", "error", "match"),
    [row[1:] for row in BAD_CONSTRUCTION],
    ids=[row[0] for row in BAD_CONSTRUCTION],
)
def test_bad_construction(params, hp, error, match):
    made = params()
    before = [p.detach().clone() if isinstance(p, torch.Tensor) else None for p in made]
    with pytest.raises(error, match=match):
        popt.Adam(made, **hp)
    for p, b in zip(made, before, strict=True):
        if isinstance(p, torch.Tensor) and p.device.type == "cpu":
            assert torch.equal(p.detach(), b) and p.grad is None


def test_bad_param_group_adds_nothing():
    params = _params(torch.float32)
    opt = popt.Adam(params[:3])
    bad = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"param_groups\[1\]: .*beta"):
        opt.add_param_group({"params": [bad], "betas": (0.9, 2.0)})
    assert len(opt.param_groups) == 1 and len(opt._groups) == 1


def _spoil_grad_dtype(params):
    params[5].data = params[5].data.double()
    params[5].grad = torch.zeros_like(params[5])


def _spoil_sparse(params):
    params[5].grad = torch.zeros_like(params[5]).to_sparse()


def _spoil_group(opt):
    opt.param_groups[0]["params"].pop()


def _spoil_lr(opt):
    opt.param_groups[0]["betas"] = (0.9, -0.5)


BAD_STEPS = [
    ("param and grad now float64", _spoil_grad_dtype, None, TypeError, "float64"),
    ("sparse grad", _spoil_sparse, None, TypeError, "sparse"),
    ("group params changed", None, _spoil_group, ValueError, "changed"),
    ("bad betas at a step", None, _spoil_lr, ValueError, "beta2"),
]


@pytest.mark.parametrize(
    ("spoil_params", "spoil_opt", "error", "match"),
    [row[1:] for row in BAD_STEPS],
    ids=[row[0] for row in BAD_STEPS],
)
def test_bad_step_changes_nothing(spoil_params, spoil_opt, error, match):
    params = _params(torch.float32)
    opt = popt.Adam(params, weight_decay=0.1)
    _run(params, opt, 1)
    opt.zero_grad()
    _backward(params, 1)
    if spoil_params:
        spoil_params(params)
    snapshot = copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))
    if spoil_opt:
        spoil_opt(opt)
    with pytest.raises(error, match=match):
        opt.step()
    before_params, before_state = snapshot
    for p, q in zip(params, before_params, strict=True):
        assert torch.equal(p.detach(), q)
    assert float(opt.state[params[0]]["step"]) == float(before_state["state"][0]["step"]) == 1.0


def test_bad_max_grad_norm():
    params = _params(torch.float32)
    opt = popt.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.step(max_grad_norm=-1.0)


def _wrong_shape(sd):
    sd["state"][0]["exp_avg"] = torch.zeros(2)


def _missing_state(sd):
    del sd["state"][0]["exp_avg_sq"]


def _wrong_groups(sd):
    sd["param_groups"].append(dict(sd["param_groups"][0]))


def _bad_step(sd):
    sd["state"][0]["step"] = torch.tensor(-1.0)


BAD_STATE_DICTS = [
    ("state of another shape", _wrong_shape, ValueError, "shape"),
    ("missing state tensor", _missing_state, ValueError, "exp_avg_sq"),
    ("another group count", _wrong_groups, ValueError, "param groups"),
    ("negative step", _bad_step, ValueError, "step"),
]


@pytest.mark.parametrize(
    ("spoil", "error", "match"),
    [row[1:] for row in BAD_STATE_DICTS],
    ids=[row[0] for row in BAD_STATE_DICTS],
)
def test_bad_state_dict_loads_nothing(spoil, error, match):
    params = _params(torch.float32)
    opt = popt.Adam(params)
    _run(params, opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    spoil(saved)
    snapshot = _snapshot(params, opt)
    with pytest.raises(error, match=match):
        opt.load_state_dict(saved)
    _assert_unchanged(params, opt, snapshot)
