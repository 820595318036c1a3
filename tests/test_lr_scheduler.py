"""Parity with torch.optim.lr_scheduler: every scheduler for 1000 steps, every value.

One table of ``(scheduler, kwargs, optimizer)`` rows in the style of Optax's tests: adding a
configuration adds a row. Each row drives a pyopt optimizer and the matching torch
optimizer, both with two param groups of different lrs, and compares every group's lr (and
momentum / betas, which OneCycleLR cycles) after construction and after each of 1000
``step()`` calls, to a relative 1e-12 (0 must be exactly 0). pyopt evaluates torch's
recurrences in torch's order, so in practice the values are identical. Only the schedulers
step (torch warns that the optimizer has not: silenced); one test also steps the optimizers.

InverseSqrtLR is not in torch: it is checked against a float64 NumPy reference written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pyopt
from pyopt import optim
from pyopt.optim import lr_scheduler as ours

torch = pytest.importorskip("torch", reason="torch.optim.lr_scheduler is the reference")
theirs = torch.optim.lr_scheduler

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")

STEPS = 1000
REL = 1e-12
GROUPS = ((3, 0.1), (2, 0.02))  # (param size, lr) of the two param groups
OPTIMIZER_KWARGS = {
    "SGD": {"momentum": 0.9},
    "Adam": {"betas": (0.9, 0.99)},
    "RMSprop": {"momentum": 0.5},
    "Adagrad": {},
}


class _Warmup:
    """A callable object: LambdaLR's state_dict keeps its ``__dict__``."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, epoch: int) -> float:
        return min(1.0, (epoch + 1) / self.steps)


def _inverse(epoch):
    return 1.0 / (1.0 + 0.01 * epoch)


# fmt: off
TABLE = [
    ("StepLR", {"step_size": 30}, "SGD"),
    ("StepLR", {"step_size": 7, "gamma": 0.5}, "Adam"),
    ("StepLR", {"step_size": 1, "gamma": 0.99}, "SGD"),
    ("MultiStepLR", {"milestones": [100, 300, 700]}, "SGD"),
    ("MultiStepLR", {"milestones": [300, 10, 300, 10, 10, 999], "gamma": 0.5}, "Adam"),  # repeated, unsorted
    ("ExponentialLR", {"gamma": 0.99}, "SGD"),
    ("ExponentialLR", {"gamma": 0.9}, "Adam"),  # down to ~1e-47: relative error near zero
    ("CosineAnnealingLR", {"T_max": 1000}, "SGD"),
    ("CosineAnnealingLR", {"T_max": 100, "eta_min": 1e-3}, "Adam"),  # 5 periods
    ("CosineAnnealingLR", {"T_max": 7}, "SGD"),  # exactly 0 at each minimum
    ("CosineAnnealingLR", {"T_max": 1, "eta_min": 5e-3}, "SGD"),  # every step a min or max
    ("LinearLR", {}, "SGD"),
    ("LinearLR", {"start_factor": 0.25, "total_iters": 100}, "Adam"),
    ("LinearLR", {"start_factor": 1.0, "end_factor": 0.0, "total_iters": 500}, "SGD"),  # to 0
    ("LinearLR", {"start_factor": 0.5, "end_factor": 0.1, "total_iters": 999}, "SGD"),
    ("OneCycleLR", {"max_lr": 0.5, "total_steps": 1000}, "SGD"),
    ("OneCycleLR", {"max_lr": [0.5, 0.05], "total_steps": 1000, "anneal_strategy": "linear"}, "Adam"),
    ("OneCycleLR", {"max_lr": 0.3, "epochs": 10, "steps_per_epoch": 100, "three_phase": True}, "SGD"),
    ("OneCycleLR", {"max_lr": 1.0, "total_steps": 1500, "pct_start": 0.25, "three_phase": True,
                    "anneal_strategy": "linear", "base_momentum": [0.8, 0.7], "max_momentum": 0.9,
                    "div_factor": 10.0, "final_div_factor": 100.0}, "Adam"),
    ("OneCycleLR", {"max_lr": 0.2, "total_steps": 1200, "pct_start": 0.5}, "RMSprop"),
    ("OneCycleLR", {"max_lr": 0.2, "total_steps": 1000, "cycle_momentum": False}, "Adagrad"),
    ("LambdaLR", {"lr_lambda": lambda epoch: 0.95**epoch}, "SGD"),
    ("LambdaLR", {"lr_lambda": [_Warmup(50), _inverse]}, "Adam"),
    ("SequentialLR", {"schedulers": [("LinearLR", {"start_factor": 0.1, "total_iters": 50}),
                                     ("CosineAnnealingLR", {"T_max": 950})],
                      "milestones": [50]}, "SGD"),
    ("SequentialLR", {"schedulers": [("LinearLR", {"total_iters": 100}),
                                     ("ExponentialLR", {"gamma": 0.999}),
                                     ("StepLR", {"step_size": 100, "gamma": 0.5})],
                      "milestones": [100, 400]}, "Adam"),
    ("SequentialLR", {"schedulers": [("ExponentialLR", {"gamma": 0.99}),
                                     ("LambdaLR", {"lr_lambda": _inverse}),
                                     ("CosineAnnealingLR", {"T_max": 50, "eta_min": 1e-4})],
                      "milestones": [200, 600]}, "SGD"),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3}),
                                     ("LinearLR", {"end_factor": 0.5, "total_iters": 300}),
                                     ("MultiStepLR", {"milestones": [5, 50, 50]})],
                      "milestones": [0, 500]}, "SGD"),  # a milestone at 0
]
# fmt: on
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(TABLE)]


def _optimizers(kind: str):
    """The pyopt optimizer and the torch one, two float64 param groups each."""
    kwargs = OPTIMIZER_KWARGS[kind]
    mine = getattr(optim, kind)([{"params": [np.zeros(n)], "lr": lr} for n, lr in GROUPS], **kwargs)
    ref = getattr(torch.optim, kind)(
        [{"params": [torch.zeros(n, dtype=torch.float64)], "lr": lr} for n, lr in GROUPS],
        **kwargs,
    )
    return mine, ref


def _make(lib, optimizer, name: str, kwargs: dict, **extra):
    """``lib.<name>(optimizer, **kwargs)``.

    SequentialLR's ``schedulers`` are ``(name, kwargs)`` pairs, built first, or a function
    ``(lib, optimizer) -> schedulers``.
    """
    kwargs = dict(kwargs)
    if name == "SequentialLR":
        specs = kwargs["schedulers"]
        kwargs["schedulers"] = (
            specs(lib, optimizer)
            if callable(specs)
            else [_make(lib, optimizer, n, k) for n, k in specs]
        )
    return getattr(lib, name)(optimizer, **kwargs, **extra)


def _hyperparameters(optimizer):
    return [[g["lr"], g.get("momentum"), g.get("betas")] for g in optimizer.param_groups]


def _assert_same(got, want, where: str) -> None:
    """Floats to a relative ``REL`` (0 only as 0); containers recursively; others exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert abs(got - want) <= REL * abs(want), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _run_both(mine, ref, sched_mine, sched_ref, steps: int, label: str) -> None:
    """Step both schedulers ``steps`` times, comparing the groups and get_last_lr each time."""
    for t in range(steps + 1):
        if t:
            sched_mine.step()
            sched_ref.step()
        _assert_same(_hyperparameters(mine), _hyperparameters(ref), f"{label} step {t}")
        _assert_same(sched_mine.get_last_lr(), sched_ref.get_last_lr(), f"{label} step {t} last")


@pytest.mark.parametrize(("name", "kwargs", "kind"), TABLE, ids=IDS)
def test_matches_torch_every_step(name, kwargs, kind):
    mine, ref = _optimizers(kind)
    _run_both(
        mine, ref, _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs), STEPS, name
    )


def _shared_state(state_mine: dict, state_ref: dict, where: str) -> None:
    """Our keys are a subset of torch's (it adds a warning flag) with the same values."""
    extra = set(state_mine) - set(state_ref)
    assert not extra, f"{where}: keys torch lacks: {extra}"
    assert set(state_ref) - set(state_mine) <= {"_get_lr_called_within_step"}, where
    for key in state_mine:
        if key == "_schedulers":
            for i, (m, r) in enumerate(zip(state_mine[key], state_ref[key], strict=True)):
                _shared_state(m, r, f"{where}._schedulers[{i}]")
        else:
            _assert_same(state_mine[key], state_ref[key], f"{where}[{key!r}]")


@pytest.mark.parametrize(("name", "kwargs", "kind"), TABLE, ids=IDS)
def test_state_dict_round_trip(name, kwargs, kind, tmp_path):
    """Save mid-run; a fresh optimizer + scheduler loaded from pyopt's state dict (as is, or
    through ``pyopt.save`` / ``pyopt.load``) or from torch's continues exactly like the
    uninterrupted run."""
    split = 337
    mine, ref = _optimizers(kind)
    sched, sched_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    for _ in range(split):
        sched.step()
        sched_ref.step()
    saved = sched.state_dict()
    _shared_state(saved, sched_ref.state_dict(), name)

    pyopt.save(tmp_path / "ckpt", {"optimizer": mine.state_dict(), "scheduler": saved})
    ckpt = pyopt.load(tmp_path / "ckpt")
    resumed = []
    for opt_state, state in [
        (mine.state_dict(), saved),
        (ckpt["optimizer"], ckpt["scheduler"]),
        (mine.state_dict(), sched_ref.state_dict()),
    ]:
        opt2, _ = _optimizers(kind)
        sched2 = _make(ours, opt2, name, kwargs)  # before the optimizer's load, as torch says
        opt2.load_state_dict(opt_state)
        sched2.load_state_dict(state)
        resumed.append((opt2, sched2))
    for t in range(split, STEPS):
        sched.step()
        for opt2, sched2 in resumed:
            sched2.step()
            assert _hyperparameters(opt2) == _hyperparameters(mine), f"{name} step {t}"
            assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched.state_dict().keys() == saved.keys()


@pytest.mark.parametrize(
    ("name", "kwargs", "kind"),
    [row for row in TABLE if row[0] != "SequentialLR"],
    ids=[i for i, row in zip(IDS, TABLE, strict=True) if row[0] != "SequentialLR"],
)
def test_resume_with_last_epoch(name, kwargs, kind):
    """A scheduler made with ``last_epoch=k`` over groups that hold ``initial_lr`` (and
    OneCycleLR's keys) continues as torch's does, including torch's initial step."""
    mine, ref = _optimizers(kind)
    first, first_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    for _ in range(37):
        first.step()
        first_ref.step()
    sched = _make(ours, mine, name, kwargs, last_epoch=37)
    sched_ref = _make(theirs, ref, name, kwargs, last_epoch=37)
    assert sched.last_epoch == sched_ref.last_epoch == 38
    _run_both(mine, ref, sched, sched_ref, 300, f"{name} resumed")


def test_without_initial_lr_resuming_raises_key_error():
    mine, ref = _optimizers("SGD")
    with pytest.raises(KeyError, match=r"param_groups\[0\]") as err:
        ours.StepLR(mine, 5, last_epoch=3)
    with pytest.raises(KeyError) as err_ref:
        theirs.StepLR(ref, 5, last_epoch=3)
    assert str(err.value) == str(err_ref.value)


# fmt: off
CHAINS = [
    [("LinearLR", {"start_factor": 0.1, "total_iters": 20}), ("ExponentialLR", {"gamma": 0.995})],
    [("CosineAnnealingLR", {"T_max": 60, "eta_min": 1e-3}), ("StepLR", {"step_size": 90, "gamma": 0.3})],
    [("MultiStepLR", {"milestones": [50, 50, 400]}), ("LinearLR", {"end_factor": 0.2, "total_iters": 800}),
     ("ExponentialLR", {"gamma": 0.999})],
]
# fmt: on


@pytest.mark.parametrize("chain", CHAINS, ids=["linear+exp", "cos+step", "multistep+linear+exp"])
def test_chained_schedulers_compose_like_torch(chain):
    mine, ref = _optimizers("SGD")
    scheds = [_make(ours, mine, n, k) for n, k in chain]
    scheds_ref = [_make(theirs, ref, n, k) for n, k in chain]
    for t in range(STEPS + 1):
        if t:
            for s, s_ref in zip(scheds, scheds_ref, strict=True):
                s.step()
                s_ref.step()
        _assert_same(_hyperparameters(mine), _hyperparameters(ref), f"step {t}")
        for s, s_ref in zip(scheds, scheds_ref, strict=True):
            _assert_same(s.get_last_lr(), s_ref.get_last_lr(), f"step {t} last")


@pytest.mark.parametrize(
    ("kind", "name", "kwargs"),
    [
        ("SGD", "OneCycleLR", {"max_lr": 0.5, "total_steps": 60}),
        ("Adam", "OneCycleLR", {"max_lr": 0.05, "total_steps": 60, "three_phase": True}),
        ("Adam", "CosineAnnealingLR", {"T_max": 10, "eta_min": 1e-4}),
    ],
)
def test_optimizer_follows_the_schedule(kind, name, kwargs):
    """With optimizer steps in between, the params follow torch's (the optimizer re-reads
    the lr and momentum / betas the scheduler wrote, and ignores the schedule's keys)."""
    mine, ref = _optimizers(kind)
    sched, sched_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    rng = np.random.default_rng(0)
    params_ref = [g["params"][0] for g in ref.param_groups]
    for _ in range(60):
        grads = [rng.standard_normal(n) for n, _ in GROUPS]
        mine.step(grads)
        for p, g in zip(params_ref, grads, strict=True):
            p.grad = torch.from_numpy(g)
        ref.step()
        sched.step()
        sched_ref.step()
    for group, p in zip(mine.param_groups, params_ref, strict=True):
        np.testing.assert_allclose(group["params"][0], p.numpy(), rtol=1e-12, atol=1e-14)


def test_one_cycle_past_total_steps_raises():
    mine, ref = _optimizers("SGD")
    sched = ours.OneCycleLR(mine, max_lr=0.1, total_steps=10)
    sched_ref = theirs.OneCycleLR(ref, max_lr=0.1, total_steps=10)
    _run_both(mine, ref, sched, sched_ref, 10, "OneCycleLR")
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()
    with pytest.raises(ValueError):
        sched_ref.step()


def _other_optimizer_scheduler(lib, optimizer):
    other = _optimizers("SGD")[0 if lib is ours else 1]
    return [lib.StepLR(optimizer, 3), lib.StepLR(other, 3)]


# (scheduler, kwargs, optimizer kind, exception, text our message must hold). Each row
# raises the same exception type in torch.
# fmt: off
BAD = [
    ("LambdaLR", {"lr_lambda": [_inverse]}, "SGD", ValueError, "lr_lambda"),
    ("LinearLR", {"start_factor": 0.0}, "SGD", ValueError, "start_factor"),
    ("LinearLR", {"start_factor": 1.5}, "SGD", ValueError, "start_factor"),
    ("LinearLR", {"end_factor": -0.1}, "SGD", ValueError, "end_factor"),
    ("LinearLR", {"end_factor": 1.01}, "SGD", ValueError, "end_factor"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 0}, "SGD", ValueError, "total_steps"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10.0}, "SGD", ValueError, "total_steps"),
    ("OneCycleLR", {"max_lr": 0.1}, "SGD", ValueError, "total_steps"),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 5}, "SGD", ValueError, "steps_per_epoch"),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 0, "steps_per_epoch": 5}, "SGD", ValueError, "epochs"),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 2, "steps_per_epoch": 2.5}, "SGD", ValueError, "steps_per_epoch"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": 1}, "SGD", ValueError, "pct_start"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": -0.1}, "SGD", ValueError, "pct_start"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": "exp"}, "SGD", ValueError, "anneal_strategy"),
    ("OneCycleLR", {"max_lr": [0.1], "total_steps": 10}, "SGD", ValueError, "max_lr"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "max_momentum": [0.9] * 3}, "Adam", ValueError, "max_momentum"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "base_momentum": (0.8,)}, "SGD", ValueError, "base_momentum"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10}, "Adagrad", ValueError, "cycle_momentum"),
    ("SequentialLR", {"schedulers": [], "milestones": []}, "SGD", ValueError, "schedulers"),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3})] * 2, "milestones": []}, "SGD", ValueError, "milestones"),
    ("SequentialLR", {"schedulers": _other_optimizer_scheduler, "milestones": [5]}, "SGD", ValueError, "schedulers[1]"),
    ("SequentialLR", {"schedulers": lambda lib, opt: ["StepLR"], "milestones": []}, "SGD", TypeError, "schedulers[0]"),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "kwargs", "kind", "exc", "text"), BAD, ids=[f"{r[0]}-{r[4]}" for r in BAD]
)
def test_bad_arguments_raise_like_torch(name, kwargs, kind, exc, text):
    for lib, optimizer in zip((ours, theirs), _optimizers(kind), strict=True):
        with pytest.raises(exc) as err:
            _make(lib, optimizer, name, kwargs)
        if lib is ours:
            assert text in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "name", ["StepLR", "LambdaLR", "OneCycleLR", "SequentialLR", "InverseSqrtLR"]
)
def test_rejects_a_non_pyopt_optimizer(name):
    _, ref = _optimizers("SGD")
    args = {
        "StepLR": (3,),
        "LambdaLR": (_inverse,),
        "OneCycleLR": (0.1, 10),
        "SequentialLR": ([], []),
        "InverseSqrtLR": (10,),
    }[name]
    with pytest.raises(TypeError, match=r"optimizer must be a pyopt\.optim\.Optimizer"):
        getattr(ours, name)(ref, *args)


def test_get_last_lr_is_a_copy():
    mine, _ = _optimizers("SGD")
    sched = ours.ExponentialLR(mine, gamma=0.5)
    last = sched.get_last_lr()
    last[0] = 123.0
    assert sched.get_last_lr() == [0.1, 0.02]
    assert mine.param_groups[0]["lr"] == 0.1


def test_lambda_state_dict_restores_callable_objects():
    mine, ref = _optimizers("SGD")
    sched = ours.LambdaLR(mine, [_Warmup(10), _inverse])
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"steps": 10}, None]
    assert (
        state["lr_lambdas"]
        == theirs.LambdaLR(ref, [_Warmup(10), _inverse]).state_dict()["lr_lambdas"]
    )
    other = ours.LambdaLR(_optimizers("SGD")[0], [_Warmup(99), _inverse])
    other.load_state_dict(state)
    assert other.lr_lambdas[0].steps == 10
    assert state["lr_lambdas"] == [{"steps": 10}, None]  # the dict was not consumed


def _inverse_sqrt_reference(base_lrs, warmup: int, steps: int) -> np.ndarray:
    """float64 ``base · min(t / w, sqrt(w / t))``: the warmup line meets the decay at t = w."""
    t = np.arange(steps + 1, dtype=np.float64)
    factor = np.minimum(t / warmup, np.sqrt(warmup / np.maximum(t, 1.0)))
    return np.asarray(base_lrs, np.float64)[None, :] * factor[:, None]


@pytest.mark.parametrize("warmup", [1, 2, 7, 100, 1000, 1023])
def test_inverse_sqrt_matches_reference(warmup):
    mine, _ = _optimizers("Adam")
    sched = ours.InverseSqrtLR(mine, warmup_steps=warmup)
    got = []
    for t in range(STEPS + 1):
        if t:
            sched.step()
        got.append([g["lr"] for g in mine.param_groups])
        assert sched.get_last_lr() == got[-1]
    got = np.asarray(got)
    want = _inverse_sqrt_reference([lr for _, lr in GROUPS], warmup, STEPS)
    np.testing.assert_allclose(got, want, rtol=REL, atol=0)
    assert got[0].tolist() == [0.0, 0.0]
    if warmup <= STEPS:
        assert got[warmup].tolist() == [lr for _, lr in GROUPS]  # base_lr exactly at t = w
        assert np.all(np.diff(got[: warmup + 1], axis=0) > 0)
        assert np.all(np.diff(got[warmup:], axis=0) < 0)


def test_inverse_sqrt_state_dict_and_resume():
    mine, _ = _optimizers("SGD")
    sched = ours.InverseSqrtLR(mine, warmup_steps=20)
    for _ in range(50):
        sched.step()
    state = sched.state_dict()
    assert state["last_epoch"] == 50 and state["warmup_steps"] == 20
    opt2, opt3 = _optimizers("SGD")[0], _optimizers("SGD")[0]
    sched2 = ours.InverseSqrtLR(opt2, warmup_steps=5)
    opt2.load_state_dict(mine.state_dict())
    sched2.load_state_dict(state)
    opt3.load_state_dict(mine.state_dict())
    resumed = ours.InverseSqrtLR(opt3, warmup_steps=20, last_epoch=50)  # at step 51 already
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == resumed.get_last_lr()
    assert sched.get_last_lr()[0] == 0.1 * math.sqrt(20 / 51)


@pytest.mark.parametrize("warmup", [0, -3, 2.5, True, "10", None])
def test_inverse_sqrt_rejects_bad_warmup(warmup):
    mine, _ = _optimizers("SGD")
    with pytest.raises(ValueError, match="warmup_steps"):
        ours.InverseSqrtLR(mine, warmup_steps=warmup)
