"""pyopt.optim and the functional optimizer steps: the float64 reference, multi-tensor
runs, clipping / loss scaling / non-finite skips, param groups, and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import to_backend, to_host

from pyopt import _reference as reference
from pyopt import optim
from pyopt._backend import to_numpy
from pyopt._check import OPTIMIZER_CASES

# (class name, constructor kwargs): pyopt check's table, every flag of every rule at least
# once (its grad_scale is an argument of step here, not of the constructor).
CONFIGS = [(case.rule, case.kwargs) for case in OPTIMIZER_CASES.values()]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]
SHAPES = [(1,), (7,), (3, 11), (1023,), (1025,)]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _data(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return params


def _grads(step, shapes=SHAPES, dtype=np.float64, seed=1):
    rng = np.random.default_rng([seed, step])
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _ref_run(name, kwargs, params, steps, grad_mult=(), dtype=np.float64):
    """The float64 reference over ``steps`` steps; grads cast to ``dtype`` first."""
    rule = reference.OPTIMIZERS[name]
    ps = [p.astype(np.float64) for p in params]
    states = [{} for _ in ps]
    for t in range(steps):
        mult = grad_mult[t] if grad_mult else 1.0
        gs = _grads(t, [p.shape for p in params], dtype)
        ps = [
            rule(p, g, s, grad_mult=mult, **kwargs) for p, g, s in zip(ps, gs, states, strict=True)
        ]
    return ps, states


def _rel_err(actual, expected):
    """Largest error relative to the tensor's scale (its largest magnitude)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected), initial=0.0)
    return float(np.max(np.abs(actual - expected), initial=0.0) / (scale or 1.0))


def _snapshot(opt, params):
    return [to_numpy(p) for p in params], copy.deepcopy(opt.state_dict())


def _same_snapshot(a, b):
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    sa, sb = a[1]["state"], b[1]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            np.testing.assert_array_equal(sa[i][k], sb[i][k])
    assert a[1]["param_groups"] == b[1]["param_groups"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
def test_matches_float64_reference(backend, name, kwargs, dtype):
    params = _data(dtype)
    dev = [to_backend(p.copy(), backend) for p in params]
    opt = getattr(optim, name)(dev, **kwargs)
    steps = 4
    for t in range(steps):
        opt.step([to_backend(g, backend) for g in _grads(t, dtype=dtype)])
    expected, states = _ref_run(name, kwargs, params, steps, dtype=dtype)
    sd = opt.state_dict()
    for i, (p, e) in enumerate(zip(dev, expected, strict=True)):
        assert _rel_err(to_host(p), e) <= TOL[dtype], f"param {i}"
        assert sd["state"][i]["step"] == steps
        for key, value in sd["state"][i].items():
            if key != "step" and key in states[i]:
                assert _rel_err(value, states[i][key]) <= TOL[dtype], f"{key} of param {i}"


def _count_calls(monkeypatch, module, name):
    """A list that grows by one at each call of ``module.name`` (called through)."""
    calls, original = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_step_is_one_kernel_call_whatever_the_allocation(monkeypatch):
    """A ParamBuffer, separate arrays, two param groups and differing step counts: one
    kernel call per step each, and the same bits."""
    from pyopt.kernels.cpu import optim as kernels

    shapes = {"a": (3, 5), "b": (7,), "c": (1,), "d": (2, 2, 2)}
    buf = optim.ParamBuffer(shapes, dtype=np.float32, device="cpu")
    init = {k: v for k, v in zip(shapes, _data(np.float32, list(shapes.values())), strict=True)}
    buf.load(init)
    separate = {k: v.copy() for k, v in init.items()}
    grouped = {k: v.copy() for k, v in init.items()}
    fused, loose = optim.Adam(buf.params, lr=0.01), optim.Adam(separate, lr=0.01)
    groups = optim.Adam(
        [{"params": {k: grouped[k] for k in "ab"}}, {"params": {k: grouped[k] for k in "cd"}}],
        lr=0.01,
    )
    calls = _count_calls(monkeypatch, kernels, "update")
    for t in range(3):
        grads = dict(zip(shapes, _grads(t, list(shapes.values()), np.float32), strict=True))
        for k, g in grads.items():
            buf.grads[k][...] = g
        for opt, step_grads in ((fused, buf.grads), (loose, grads), (groups, grads)):
            n = len(calls)
            # From step 1 on, "b" has no grad at odd steps: its step count falls behind.
            opt.step({**step_grads, "b": None} if t == 1 else step_grads)
            assert len(calls) - n == 1, f"{type(opt).__name__} step {t}: one kernel call"
    segments = calls[-1][1]
    assert len({int(r) for r in segments[:, 0]}) == 3, "rows per group and step count"
    for k in shapes:
        np.testing.assert_array_equal(buf.params[k], separate[k])
        np.testing.assert_array_equal(grouped[k], separate[k])


def test_cuda_step_is_one_launch(cuda_backend, monkeypatch):
    from pyopt.kernels.cuda import clip
    from pyopt.kernels.cuda import optim as kernels

    shapes = [(5, 3), (17,), (1,), (40,)]
    params = [to_backend(p, "cuda") for p in _data(np.float32, shapes)]
    updates = _count_calls(monkeypatch, kernels, "update")
    norms = _count_calls(monkeypatch, clip, "norm_partials")
    opt = optim.Adam(params, lr=0.01)
    host_grads = _grads(0, shapes, np.float32)
    result = opt.step([to_backend(g, "cuda") for g in host_grads], max_grad_norm=1.0)
    assert len(updates) == 1
    assert len(norms) == len(shapes), "separate grads: one norm launch per array"
    expected = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in host_grads))
    assert result.grad_norm == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_and_loss_scale_follow_torch_formula(backend, dtype):
    params = _data(dtype)
    dev = [to_backend(p.copy(), backend) for p in params]
    opt = optim.SGD(dev, lr=0.1, momentum=0.9)
    mults, norms = [], []
    scale = 1024.0
    for t in range(3):
        gs = _grads(t, dtype=dtype)
        norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs)))
        scaled = [to_backend((g * scale).astype(dtype), backend) for g in gs]
        result = opt.step(scaled, max_grad_norm=2.0, grad_scale=scale)
        assert result.skipped is False
        assert result.grad_norm == pytest.approx(norm, rel=1e-6)
        norms.append(result.grad_norm)
        mults.append(min(1.0, 2.0 / (norm + 1e-6)))
    assert max(mults) < 1.0, "the test must exercise clipping"
    expected, _ = _ref_run("SGD", {"lr": 0.1, "momentum": 0.9}, params, 3, mults, dtype)
    for p, e in zip(dev, expected, strict=True):
        assert _rel_err(to_host(p), e) <= 5 * TOL[dtype]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, -1])
def test_nonfinite_gradient_skips_the_whole_step(backend, bad, where):
    params = _data(np.float32)
    dev = [to_backend(p.copy(), backend) for p in params]
    opt = optim.Adam(dev, lr=0.1)
    opt.step([to_backend(g, backend) for g in _grads(0, dtype=np.float32)])
    before = _snapshot(opt, dev)
    gs = _grads(1, dtype=np.float32)
    gs[where].reshape(-1)[where] = bad
    result = opt.step([to_backend(g, backend) for g in gs], max_grad_norm=1.0)
    assert result.skipped is True
    assert not np.isfinite(result.grad_norm)
    _same_snapshot(before, _snapshot(opt, dev))
    result = opt.step([to_backend(g, backend) for g in gs], skip_if_nonfinite=True)
    assert result.skipped is True
    _same_snapshot(before, _snapshot(opt, dev))


def test_no_extra_pass_without_clipping(monkeypatch):
    from pyopt.kernels.cpu import clip as kernels

    calls = []
    monkeypatch.setattr(kernels, "norm_partials", lambda *a, **k: calls.append(a))
    opt = optim.Adam(_data(np.float32), lr=0.1)
    result = opt.step(_grads(0, dtype=np.float32))
    assert result == optim.StepResult(grad_norm=None, skipped=False)
    assert calls == []


def test_none_grads_skip_their_params_like_torch():
    torch = pytest.importorskip("torch", reason="torch is the reference for None grads")
    params = _data(np.float64)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p, requires_grad=True) for p in params]
    opt = optim.Adam(ours, lr=0.1)
    topt = torch.optim.Adam(theirs, lr=0.1, foreach=False)
    for t in range(4):
        gs = _grads(t)
        holes = [g if (i + t) % 3 else None for i, g in enumerate(gs)]
        opt.step(holes)
        for p, g in zip(theirs, holes, strict=True):
            p.grad = None if g is None else torch.tensor(g)
        topt.step()
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-13, atol=0)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for i, entry in tsd["state"].items():
        assert sd["state"][i]["step"] == int(entry["step"])


def test_param_groups_and_mutable_hyperparameters():
    params = _data(np.float64, [(4,), (5,), (6,)])
    ours = [p.copy() for p in params]
    opt = optim.SGD([{"params": ours[:2], "lr": 0.5}, {"params": ours[2:]}], lr=0.1, momentum=0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    gs = _grads(0, [(4,), (5,), (6,)])
    opt.step(gs)
    opt.param_groups[1]["lr"] = 1.0  # read at every step (a scheduler does this)
    opt.step(gs)
    np.testing.assert_allclose(ours[0], params[0] - 2 * 0.5 * gs[0], rtol=1e-15)
    np.testing.assert_allclose(ours[2], params[2] - (0.1 + 1.0) * gs[2], rtol=1e-15)


def test_named_params_take_a_dict_of_grads():
    w, b = np.ones((2, 3)), np.zeros(3)
    opt = optim.SGD({"w": w, "b": b}, lr=1.0)
    opt.step({"w": np.full((2, 3), 0.5), "b": None})
    assert (w == 0.5).all() and (b == 0).all()
    assert opt.param_groups[0]["param_names"] == ["w", "b"]
    with pytest.raises(ValueError, match="'x'"):
        opt.step({"w": np.ones((2, 3)), "b": None, "x": np.ones(1)})
    with pytest.raises(ValueError, match="missing 'b'"):
        opt.step({"w": np.ones((2, 3))})
    with pytest.raises(TypeError, match="names"):
        optim.SGD([w], lr=1.0).step({"w": w})


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("SGD", {"lr": -1.0}, ValueError, "lr"),
        ("SGD", {"momentum": -0.1}, ValueError, "momentum"),
        ("SGD", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
        ("SGD", {"nesterov": True}, ValueError, "nesterov"),
        ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "nesterov"),
        ("SGD", {"lr": "0.1"}, TypeError, "lr"),
        ("SGD", {"lr": float("nan")}, ValueError, "lr"),
        ("Adam", {"betas": (1.0, 0.999)}, ValueError, r"betas\[0\]"),
        ("Adam", {"betas": (0.9, -0.1)}, ValueError, r"betas\[1\]"),
        ("Adam", {"betas": 0.9}, TypeError, "betas"),
        ("Adam", {"eps": -1e-8}, ValueError, "eps"),
        ("AdamW", {"weight_decay": -0.1}, ValueError, "weight_decay"),
        ("Adam", {"amsgrad": 1}, TypeError, "amsgrad"),
        ("Adagrad", {"lr_decay": -1.0}, ValueError, "lr_decay"),
        ("Adagrad", {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator"),
        ("RMSprop", {"alpha": -0.5}, ValueError, "alpha"),
        ("RMSprop", {"momentum": -0.5}, ValueError, "momentum"),
        ("Adadelta", {"rho": 1.5}, ValueError, "rho"),
        ("Adadelta", {"lr": -1.0}, ValueError, "lr"),
    ],
)
def test_bad_hyperparameters_are_rejected_like_torch(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(optim, name)([np.ones(3)], **kwargs)


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(TypeError, match="params"):
        optim.Adam(np.ones(3))
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        optim.Adam([np.ones(3, np.int64)])
    p = np.ones(3)
    with pytest.raises(ValueError, match="shares memory"):
        optim.Adam([{"params": [p]}, {"params": [p]}])
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        optim.Adam([ro])


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda gs, dev: gs[:-1], ValueError, "entries"),
        (lambda gs, dev: [gs[0], dev(np.ones((2, 2), np.float32)), *gs[2:]], ValueError, r"s\[1\]"),
        (lambda gs, dev: [*gs[:2], dev(np.ones((3, 11))), *gs[3:]], TypeError, r"grads\[2\]"),
        (lambda gs, dev: [*gs[:4], [0.0] * 1025], TypeError, r"grads\[4\]"),
        (lambda gs, dev: tuple(np.float32(1) for _ in gs), TypeError, r"grads\[0\]"),
        (lambda gs, dev: gs[0], TypeError, "grads"),
    ],
)
def test_bad_grads_change_nothing(backend, mutate, error, match):
    params = [to_backend(p, backend) for p in _data(np.float32)]
    opt = optim.AdamW(params, lr=0.1, amsgrad=True)
    opt.step([to_backend(g, backend) for g in _grads(0, dtype=np.float32)])
    before = _snapshot(opt, params)
    gs = [to_backend(g, backend) for g in _grads(1, dtype=np.float32)]
    with pytest.raises(error, match=match):
        opt.step(mutate(gs, lambda a: to_backend(a, backend)))
    _same_snapshot(before, _snapshot(opt, params))


def test_host_grads_for_device_params_are_rejected(cuda_backend):
    params = [to_backend(p, cuda_backend) for p in _data(np.float32)]
    opt = optim.Adam(params)
    with pytest.raises(TypeError, match=r"grads\[0\].*host"):
        opt.step(_grads(0, dtype=np.float32))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm"),
        ({"grad_scale": 0.0}, ValueError, "grad_scale"),
        ({"grad_scale": "2"}, TypeError, "grad_scale"),
        ({"skip_if_nonfinite": 1}, TypeError, "skip_if_nonfinite"),
    ],
)
def test_bad_step_options_change_nothing(options, error, match):
    params = _data(np.float32)
    opt = optim.Adam(params)
    opt.step(_grads(0, dtype=np.float32))
    before = _snapshot(opt, params)
    with pytest.raises(error, match=match):
        opt.step(_grads(1, dtype=np.float32), **options)
    _same_snapshot(before, _snapshot(opt, params))


@pytest.mark.parametrize(
    ("value", "error"), [("0.1", TypeError), (float("nan"), ValueError), (None, TypeError)]
)
def test_hyperparameter_made_invalid_between_steps_changes_nothing(value, error):
    params = _data(np.float32)
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    opt.step(_grads(0, dtype=np.float32))
    before = _snapshot(opt, params)
    opt.param_groups[1]["lr"] = value
    with pytest.raises(error, match="lr"):
        opt.step(_grads(1, dtype=np.float32))
    opt.param_groups[1]["lr"] = 0.1
    _same_snapshot(before, _snapshot(opt, params))


def test_ranges_are_checked_at_construction_only_as_in_torch():
    """torch validates lr >= 0 when an optimizer is built; a step takes what the groups
    hold, so a schedule's rounding to -5.6e-19 (LinearLR to 0) keeps training."""
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([np.ones(3)], lr=-0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([np.ones(3)]).add_param_group({"params": [np.ones(2)], "lr": -0.1})
    w = np.ones(3)
    opt = optim.SGD([w], lr=0.1)
    opt.param_groups[0]["lr"] = -5.6e-19
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(w, np.ones(3) + 5.6e-19)
    opt.load_state_dict(opt.state_dict())  # a checkpoint of that run loads as in torch
    assert opt.param_groups[0]["lr"] == -5.6e-19


def test_non_contiguous_cpu_params_are_updated_in_place():
    base = _data(np.float64, [(6, 8)])[0]
    strided = base.copy()[:, ::2]
    expected = strided.copy()
    g = _grads(0, [(6, 4)])[0]
    optim.SGD([strided], lr=0.5).step([g])
    optim.SGD([expected], lr=0.5).step([np.ascontiguousarray(g)])
    np.testing.assert_array_equal(strided, expected)
    np.testing.assert_allclose(strided, base[:, ::2] - 0.5 * g, rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_forms_match_the_classes(backend, dtype):
    from pyopt import functional as F

    params = _data(dtype)
    a = [to_backend(p.copy(), backend) for p in params]
    b = [to_backend(p.copy(), backend) for p in params]
    opt = optim.AdamW(a, lr=0.01, amsgrad=True)
    zeros = [[to_backend(np.zeros_like(p), backend) for p in params] for _ in range(3)]
    steps = np.zeros(len(params), np.int64)
    for t in range(3):
        gs = [to_backend(g, backend) for g in _grads(t, dtype=dtype)]
        opt.step(gs)
        F.adamw_(b, gs, *zeros, steps, lr=0.01, amsgrad=True)
    assert steps.tolist() == [3] * len(params)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(to_host(x), to_host(y))


def test_functional_validation_names_the_argument():
    from pyopt import functional as F

    p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    m, v = [np.zeros(3, np.float32)], [np.zeros((3, 1), np.float32)]
    steps = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\]"):
        F.adam_(p, g, m, v, None, steps)
    with pytest.raises(ValueError, match="max_exp_avg_sqs"):
        F.adam_(p, g, m, m, None, steps, amsgrad=True)
    with pytest.raises(TypeError, match="state_steps"):
        F.adam_(p, g, m, m, None, [0])
    with pytest.raises(ValueError, match="momentum_buffers"):
        F.sgd_(p, g, None, steps, momentum=0.9)
    assert steps.tolist() == [0] and p[0].tolist() == [1, 1, 1]


def test_state_dict_round_trip_resumes_bit_for_bit(backend):
    params = _data(np.float32)
    a = [to_backend(p.copy(), backend) for p in params]
    opt = optim.Adam(a, lr=0.01, amsgrad=True, weight_decay=0.1)
    for t in range(3):
        opt.step([to_backend(g, backend) for g in _grads(t, dtype=np.float32)])
    sd = copy.deepcopy(opt.state_dict())
    b = [to_backend(to_host(p), backend) for p in a]
    resumed = optim.Adam(b, lr=123.0)
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["lr"] == 0.01
    for t in range(3, 6):
        gs = [to_backend(g, backend) for g in _grads(t, dtype=np.float32)]
        opt.step(gs, max_grad_norm=5.0)
        resumed.step(gs, max_grad_norm=5.0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(to_host(x), to_host(y))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "param groups"),
        (lambda sd: sd["param_groups"][0].update(params=[0, 1]), "params"),
        (lambda sd: sd["state"][1].update(exp_avg=np.zeros(3)), r"state\[1\]\['exp_avg'\]"),
        (lambda sd: sd["state"][2].pop("exp_avg_sq"), "lacks 'exp_avg_sq'"),
        (lambda sd: sd["state"][0].update(step=-1), "step"),
        (lambda sd: sd["param_groups"][0].update(lr=float("nan")), "lr"),
        (lambda sd: sd.pop("state"), "exactly"),
    ],
)
def test_load_state_dict_validates_before_changing_anything(edit, match):
    params = _data(np.float32)
    opt = optim.Adam(params, lr=0.01)
    opt.step(_grads(0, dtype=np.float32))
    sd = copy.deepcopy(opt.state_dict())
    before = _snapshot(opt, params)
    edit(sd)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _same_snapshot(before, _snapshot(opt, params))


def test_state_dict_is_numpy_copies():
    params = _data(np.float32, [(3,)])
    opt = optim.Adam(params)
    opt.step(_grads(0, [(3,)], np.float32))
    sd = opt.state_dict()
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)
    sd["state"][0]["exp_avg"][:] = 99.0
    assert not (opt.state_dict()["state"][0]["exp_avg"] == 99.0).any()
    assert sd["param_groups"][0] == {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
        "decoupled_weight_decay": False,
        "master_weights": False,
        "state_dtype": None,
        "stochastic_rounding": False,
        "seed": 0,
        "params": [0],
    }


def test_adagrad_state_exists_from_construction():
    opt = optim.Adagrad([np.ones(2)], initial_accumulator_value=0.25)
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 0
    np.testing.assert_array_equal(sd["state"][0]["sum"], [0.25, 0.25])


def test_param_buffer_views_and_validation():
    buf = optim.ParamBuffer({"w": (2, 3), "b": 3}, dtype=np.float64, device="cpu")
    assert list(buf) == ["w", "b"] and len(buf) == 2 and buf.size == 9
    assert buf["w"].shape == (2, 3) and buf.grads["b"].shape == (3,)
    assert buf.offset("b") == slice(6, 9)
    buf["b"][:] = 2.0
    assert buf.data[6:].tolist() == [2.0, 2.0, 2.0]
    buf.grad[:] = 1.0
    buf.zero_grad()
    assert not buf.grad.any()
    with pytest.raises(TypeError, match="dtype"):
        optim.ParamBuffer([(2,)], dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        buf.load({"w": np.ones(3)})
    with pytest.raises(ValueError, match="nope"):
        buf.load({"nope": np.ones(3)})
    assert (buf["w"] == 0).all(), "a failed load copies nothing"


def test_params_as_torch_gives_them():
    """(name, array) pairs as ``named_parameters()`` gives, generators, one array as a
    group's params; named beside unnamed groups is torch's ValueError."""
    w, b = np.ones(3), np.ones(2)
    opt = optim.SGD([("w", w), ("b", b)], lr=0.5)
    assert opt.param_groups[0]["param_names"] == ["w", "b"]
    opt.step({"w": np.ones(3), "b": None})
    assert w.tolist() == [0.5] * 3 and b.tolist() == [1.0, 1.0]
    opt = optim.SGD((p for p in [np.ones(3)]), lr=0.5)
    assert len(opt.param_groups[0]["params"]) == 1
    with pytest.raises(ValueError, match="with names or all without"):
        optim.SGD([{"params": [("w", np.ones(3))]}, {"params": [np.ones(2)]}])
    with pytest.raises(ValueError, match="with names or without"):
        optim.SGD([("w", np.ones(3)), np.ones(2)])
    with pytest.raises(TypeError, match="not a set"):
        optim.SGD({np.float64(1.0)})


def test_add_param_group_checks_everything_first():
    a, b = np.ones(3, np.float32), np.ones(2, np.float32)
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.2, "betas": (0.5, 0.9)})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    np.testing.assert_allclose(b, 0.8)  # Adam's first step moves by lr
    before = _snapshot(opt, [a, b])
    for bad, error in [
        ({"params": [a]}, ValueError),  # already in group 0
        ({"params": [np.ones(2, np.float32)], "lr": -1.0}, ValueError),
        ({"params": [np.ones(2, np.float32)], "betas": (1.0, 0.9)}, ValueError),
        ({"params": [("named", np.ones(2, np.float32))]}, ValueError),
        ({"params": [np.ones(2, np.int32)]}, TypeError),
        ({"lr": 0.1}, ValueError),
        ([np.ones(2, np.float32)], TypeError),
    ]:
        with pytest.raises(error):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == 2
    _same_snapshot(before, _snapshot(opt, [a, b]))


def test_a_changed_params_list_is_refused_not_misread():
    opt = optim.Adam([np.ones(3)])
    opt.param_groups[0]["params"].append(np.ones(2))
    for call in (lambda: opt.step([np.ones(3), np.ones(2)]), opt.state_dict):
        with pytest.raises(ValueError, match="add_param_group"):
            call()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_state_dicts_interchange_with_torch(name):
    """A pyopt state dict loads into torch.optim and a torch one into pyopt (step counts
    as torch's float tensors included); both then continue as the uninterrupted run."""
    torch = pytest.importorskip("torch", reason="torch is the other side of the exchange")
    kwargs = {"lr": 0.01, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 0.01}
    params = _data(np.float64, [(3,), (2, 2)])
    ours = getattr(optim, name)(params, **kwargs)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **kwargs)
    for t in range(3):
        grads = _grads(t, [(3,), (2, 2)])
        ours.step(grads)
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.from_numpy(g)
        theirs.step()
    mine = ours.state_dict()
    as_torch = {
        "state": {
            i: {
                k: torch.tensor(float(v)) if k == "step" else torch.from_numpy(v)
                for k, v in s.items()
            }
            for i, s in mine["state"].items()
        },
        "param_groups": mine["param_groups"],
    }
    fresh_t = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    resumed_torch = getattr(torch.optim, name)(fresh_t, foreach=False, **kwargs)
    resumed_torch.load_state_dict(as_torch)
    fresh = [p.copy() for p in params]
    resumed_ours = getattr(optim, name)(fresh, **kwargs)
    resumed_ours.load_state_dict(theirs.state_dict())  # torch tensors, tensor steps
    # torch's SGD keeps no step count: pyopt's only needs "the buffer has started".
    assert resumed_ours.state_dict()["state"][0]["step"] == (1 if name == "SGD" else 3)
    for t in range(3, 6):
        grads = _grads(t, [(3,), (2, 2)])
        ours.step(grads)
        resumed_ours.step(grads)
        for tp, g in zip(fresh_t, grads, strict=True):
            tp.grad = torch.from_numpy(g)
        resumed_torch.step()
    for p, q, tp in zip(params, fresh, fresh_t, strict=True):
        assert _rel_err(q, p) < 1e-12
        assert _rel_err(tp.detach().numpy(), p) < 1e-12
