"""Parity with torch.optim.lr_scheduler: every scheduler for 1000 steps, every value.

One table of ``(scheduler, kwargs, optimizer[, step arguments])`` rows in the style of
Optax's tests: adding a configuration adds a row. Each row drives a pyopt optimizer and the
matching torch optimizer, both with two param groups of different lrs, and compares every
group's lr (and momentum / betas, which OneCycleLR and CyclicLR cycle) after construction
and after each of 1000 ``step()`` calls, to a relative 1e-12 (0 must be exactly 0). pyopt
evaluates torch's recurrences in torch's order, so in practice the values are identical.
A row's step arguments, when it has them, give the arguments of step ``t``: the metric of
ReduceLROnPlateau, the epoch of CosineAnnealingWarmRestarts' ``step(epoch)``. Only the
schedulers step (torch warns that the optimizer has not: silenced); some tests also step
the optimizers.

Bad constructor arguments are a second table: each row says what pyopt raises and what
torch does at construction (the same exception, another one, or nothing when torch only
fails later or misreads the value), and the optimizer must be unchanged after pyopt raises.

InverseSqrtLR is not in torch: it is checked against a float64 NumPy reference written here.
"""

from __future__ import annotations

import copy
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


class _Decay:
    """A callable object ``x -> rate**x``: a MultiplicativeLR lambda or a CyclicLR scale."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x: float) -> float:
        return self.rate**x


def _inverse(epoch):
    return 1.0 / (1.0 + 0.01 * epoch)


def _loss(t: int) -> tuple[float]:
    """A loss falling 20% every 45 steps, with wiggles around 1e-4 relative: plateaus,
    improvements, and changes just above and below ReduceLROnPlateau's threshold."""
    return (2.0 * 0.8 ** (t // 45) + 1e-4 * ((t * 37) % 7),)


def _accuracy(t: int) -> tuple[float]:
    """A rising metric for ``mode="max"``, with the same plateaus."""
    return (1.0 - _loss(t)[0] / 4,)


def _fractional_epoch(t: int) -> tuple[float]:
    """``step(epoch)`` after each of 7 batches an epoch, as CosineAnnealingWarmRestarts'
    docs show: ``epoch + i / iters``."""
    return (t // 7 + (t % 7) / 7,)


def _interleaved_epoch(t: int) -> tuple[float, ...]:
    """``step()`` and ``step(epoch)`` interleaved (torch's second documented form)."""
    return (t / 3,) if t % 4 == 0 else ()


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
    ("ConstantLR", {}, "SGD"),
    ("ConstantLR", {"factor": 0.5, "total_iters": 100}, "Adam"),
    ("ConstantLR", {"factor": 1.0, "total_iters": 1}, "SGD"),  # the identity
    ("ConstantLR", {"factor": 0.1, "total_iters": 1000}, "SGD"),  # undone at the very last step
    ("PolynomialLR", {}, "SGD"),
    ("PolynomialLR", {"total_iters": 800, "power": 2.0}, "Adam"),
    ("PolynomialLR", {"total_iters": 999, "power": 0.5}, "SGD"),
    ("PolynomialLR", {"total_iters": 10, "power": 0.0}, "SGD"),  # 0.0 ** 0 = 1 at the end
    ("MultiplicativeLR", {"lr_lambda": lambda epoch: 0.995}, "SGD"),
    ("MultiplicativeLR", {"lr_lambda": [_Decay(0.9999), _inverse]}, "Adam"),
    ("CosineAnnealingWarmRestarts", {"T_0": 50}, "SGD"),
    ("CosineAnnealingWarmRestarts", {"T_0": 1}, "SGD"),  # a restart every step
    ("CosineAnnealingWarmRestarts", {"T_0": 10, "T_mult": 2, "eta_min": 1e-4}, "Adam"),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 1}, "SGD", _fractional_epoch),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "T_mult": 2, "eta_min": 1e-3}, "Adam", _fractional_epoch),
    ("CosineAnnealingWarmRestarts", {"T_0": 4, "T_mult": 3}, "SGD", _interleaved_epoch),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 50}, "SGD"),
    ("CyclicLR", {"base_lr": [1e-3, 5e-4], "max_lr": [0.1, 0.05], "step_size_up": 30,
                  "step_size_down": 70, "mode": "triangular2"}, "Adam"),  # beta1 cycled
    ("CyclicLR", {"base_lr": 0.001, "max_lr": 0.2, "step_size_up": 40, "mode": "exp_range",
                  "gamma": 0.995, "base_momentum": [0.7, 0.75], "max_momentum": 0.95}, "RMSprop"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 25, "step_size_down": 15,
                  "scale_fn": lambda x: 1 / (1 + 0.5 * (x - 1)), "cycle_momentum": False}, "SGD"),
    ("CyclicLR", {"base_lr": 0.02, "max_lr": [0.2, 0.1], "step_size_up": 60,
                  "scale_fn": _Decay(0.997), "scale_mode": "iterations"}, "Adam"),
    ("CyclicLR", {"base_lr": 0.001, "max_lr": 0.01, "cycle_momentum": False}, "Adagrad"),  # 2000 up
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 10, "step_size_down": 0}, "SGD"),  # sawtooth
    ("ReduceLROnPlateau", {}, "SGD", _loss),  # down to where eps stops the reductions
    ("ReduceLROnPlateau", {"mode": "max", "factor": 0.5, "patience": 5, "cooldown": 3,
                           "min_lr": [1e-3, 1e-4]}, "Adam", _accuracy),
    ("ReduceLROnPlateau", {"threshold_mode": "abs", "threshold": 1e-3, "patience": 3,
                           "factor": 0.7, "cooldown": 10, "min_lr": 5e-3}, "SGD", _loss),
    ("ReduceLROnPlateau", {"mode": "max", "threshold_mode": "abs", "threshold": 5e-4,
                           "patience": 0, "factor": 0.9, "eps": 1e-4, "min_lr": [0.0, 0.01]},
     "RMSprop", _accuracy),
    ("ReduceLROnPlateau", {"threshold": 0.0, "patience": 2, "factor": 0.5}, "Adagrad", _loss),
    ("ChainedScheduler", {"schedulers": [("ConstantLR", {"factor": 0.1, "total_iters": 20}),
                                         ("ExponentialLR", {"gamma": 0.99})]}, "SGD"),
    ("ChainedScheduler", {"schedulers": [("LinearLR", {"start_factor": 0.1, "total_iters": 40}),
                                         ("CosineAnnealingLR", {"T_max": 100}),
                                         ("MultiplicativeLR", {"lr_lambda": _Decay(0.99999)})]}, "Adam"),
    ("ChainedScheduler", {"schedulers": [("PolynomialLR", {"total_iters": 900, "power": 1.5}),
                                         ("StepLR", {"step_size": 100, "gamma": 0.5})]}, "SGD"),
    ("SequentialLR", {"schedulers": [("ConstantLR", {"factor": 0.2, "total_iters": 30}),
                                     ("PolynomialLR", {"total_iters": 600, "power": 2.0}),
                                     ("CosineAnnealingWarmRestarts", {"T_0": 40, "T_mult": 2})],
                      "milestones": [100, 400]}, "SGD"),
    ("SequentialLR", {"schedulers": [("ChainedScheduler",
                                      {"schedulers": [("LinearLR", {"total_iters": 50}),
                                                      ("ExponentialLR", {"gamma": 0.999})]}),
                                     ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 20,
                                                   "cycle_momentum": False})],
                      "milestones": [300]}, "Adam"),
]
# fmt: on
ROWS = [row if len(row) == 4 else (*row, None) for row in TABLE]
IDS = [f"{name}-{i}" for i, (name, _, _, _) in enumerate(ROWS)]
# The rows whose scheduler can be made with last_epoch=k to resume: ReduceLROnPlateau and
# ChainedScheduler take no last_epoch, and SequentialLR's children would need resuming too.
RESUMABLE = [
    (row, i)
    for row, i in zip(ROWS, IDS, strict=True)
    if row[0] not in ("SequentialLR", "ChainedScheduler", "ReduceLROnPlateau")
]
COMPOSITES = ("SequentialLR", "ChainedScheduler")


def _optimizers(kind: str):
    """The pyopt optimizer and the torch one, two float64 param groups each."""
    kwargs = OPTIMIZER_KWARGS[kind]
    mine = getattr(optim, kind)([{"params": [np.zeros(n)], "lr": lr} for n, lr in GROUPS], **kwargs)
    ref = getattr(torch.optim, kind)(
        [{"params": [torch.zeros(n, dtype=torch.float64)], "lr": lr} for n, lr in GROUPS],
        **kwargs,
    )
    return mine, ref


def _arguments(lib, optimizer, name: str, kwargs: dict) -> dict:
    """``kwargs`` with the ``schedulers`` of a composite scheduler built: given as
    ``(name, kwargs)`` pairs (built in order, recursively) or as a function
    ``(lib, optimizer) -> schedulers``."""
    kwargs = dict(kwargs)
    if name in COMPOSITES:
        specs = kwargs["schedulers"]
        kwargs["schedulers"] = (
            specs(lib, optimizer)
            if callable(specs)
            else [_make(lib, optimizer, n, k) for n, k in specs]
        )
    return kwargs


def _construct(lib, optimizer, name: str, kwargs: dict, **extra):
    """``lib.<name>(optimizer, **kwargs)``; ChainedScheduler takes the optimizer second."""
    if name == "ChainedScheduler":
        return lib.ChainedScheduler(optimizer=optimizer, **kwargs, **extra)
    return getattr(lib, name)(optimizer, **kwargs, **extra)


def _make(lib, optimizer, name: str, kwargs: dict, **extra):
    return _construct(lib, optimizer, name, _arguments(lib, optimizer, name, kwargs), **extra)


def _step(scheduler, step_args, t: int) -> None:
    """Take step ``t`` (1, 2, ...) with the row's step arguments."""
    scheduler.step(*(() if step_args is None else step_args(t)))


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
        if math.isinf(want):
            assert got == want, f"{where}: {got!r} != {want!r}"
        else:
            assert abs(got - want) <= REL * abs(want), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _run_both(mine, ref, sched_mine, sched_ref, steps: int, label: str, step_args=None) -> None:
    """Step both schedulers ``steps`` times, comparing the groups and get_last_lr each time."""
    for t in range(steps + 1):
        if t:
            _step(sched_mine, step_args, t)
            _step(sched_ref, step_args, t)
        _assert_same(_hyperparameters(mine), _hyperparameters(ref), f"{label} step {t}")
        _assert_same(sched_mine.get_last_lr(), sched_ref.get_last_lr(), f"{label} step {t} last")


@pytest.mark.parametrize(("name", "kwargs", "kind", "step_args"), ROWS, ids=IDS)
def test_matches_torch_every_step(name, kwargs, kind, step_args):
    mine, ref = _optimizers(kind)
    sched, sched_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    _run_both(mine, ref, sched, sched_ref, STEPS, name, step_args)


# torch's keys that pyopt's state dicts lack: a warning flag, and ReduceLROnPlateau's
# scalar min_lr kept to re-expand min_lrs when a param group is added (pyopt optimizers
# have no add_param_group).
TORCH_ONLY_KEYS = {"_get_lr_called_within_step", "default_min_lr"}


def _shared_state(state_mine: dict, state_ref: dict, where: str) -> None:
    """Our keys are a subset of torch's with the same values."""
    extra = set(state_mine) - set(state_ref)
    assert not extra, f"{where}: keys torch lacks: {extra}"
    assert set(state_ref) - set(state_mine) <= TORCH_ONLY_KEYS, where
    for key in state_mine:
        if key == "_schedulers":
            for i, (m, r) in enumerate(zip(state_mine[key], state_ref[key], strict=True)):
                _shared_state(m, r, f"{where}._schedulers[{i}]")
        else:
            _assert_same(state_mine[key], state_ref[key], f"{where}[{key!r}]")


@pytest.mark.parametrize(("name", "kwargs", "kind", "step_args"), ROWS, ids=IDS)
def test_state_dict_round_trip(name, kwargs, kind, step_args, tmp_path):
    """Save mid-run; a fresh optimizer + scheduler loaded from pyopt's state dict (as is, or
    through ``pyopt.save`` / ``pyopt.load``) or from torch's continues exactly like the
    uninterrupted run."""
    split = 337
    mine, ref = _optimizers(kind)
    sched, sched_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    for t in range(1, split + 1):
        _step(sched, step_args, t)
        _step(sched_ref, step_args, t)
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
    for t in range(split + 1, STEPS + 1):
        _step(sched, step_args, t)
        for opt2, sched2 in resumed:
            _step(sched2, step_args, t)
            assert _hyperparameters(opt2) == _hyperparameters(mine), f"{name} step {t}"
            assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched.state_dict().keys() == saved.keys()


@pytest.mark.parametrize(
    ("name", "kwargs", "kind", "step_args"),
    [row for row, _ in RESUMABLE],
    ids=[i for _, i in RESUMABLE],
)
def test_resume_with_last_epoch(name, kwargs, kind, step_args):
    """A scheduler made with ``last_epoch=k`` over groups that hold ``initial_lr`` (and
    OneCycleLR's / CyclicLR's keys) continues as torch's does, including torch's initial
    step."""
    mine, ref = _optimizers(kind)
    first, first_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    for t in range(1, 38):
        _step(first, step_args, t)
        _step(first_ref, step_args, t)
    sched = _make(ours, mine, name, kwargs, last_epoch=37)
    sched_ref = _make(theirs, ref, name, kwargs, last_epoch=37)
    assert sched.last_epoch == sched_ref.last_epoch == 38
    _run_both(mine, ref, sched, sched_ref, 300, f"{name} resumed", step_args)


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


def test_chained_scheduler_defaults_to_the_schedulers_optimizer():
    """``optimizer=None`` takes the first scheduler's; stepping it equals stepping each."""
    mine, ref = _optimizers("SGD")
    chain = [("ConstantLR", {"factor": 0.5, "total_iters": 3}), ("ExponentialLR", {"gamma": 0.9})]
    sched = ours.ChainedScheduler([_make(ours, mine, n, k) for n, k in chain])
    sched_ref = theirs.ChainedScheduler([_make(theirs, ref, n, k) for n, k in chain])
    assert sched.optimizer is mine
    _run_both(mine, ref, sched, sched_ref, 50, "ChainedScheduler")


@pytest.mark.parametrize(
    ("kind", "name", "kwargs"),
    [
        ("SGD", "OneCycleLR", {"max_lr": 0.5, "total_steps": 60}),
        ("Adam", "OneCycleLR", {"max_lr": 0.05, "total_steps": 60, "three_phase": True}),
        ("Adam", "CosineAnnealingLR", {"T_max": 10, "eta_min": 1e-4}),
        ("SGD", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.2, "step_size_up": 7}),
        (
            "Adam",
            "CyclicLR",
            {"base_lr": 1e-3, "max_lr": 0.05, "step_size_up": 5, "mode": "triangular2"},
        ),
        ("RMSprop", "CosineAnnealingWarmRestarts", {"T_0": 8, "T_mult": 2}),
    ],
)
def test_optimizer_follows_the_schedule(kind, name, kwargs):
    """With optimizer steps in between, the params follow torch's (the optimizer re-reads
    the lr and momentum / betas the scheduler wrote, and ignores the schedule's keys)."""
    mine, ref = _optimizers(kind)
    sched, sched_ref = _make(ours, mine, name, kwargs), _make(theirs, ref, name, kwargs)
    _train_both(mine, ref, sched, sched_ref, 60)


def _train_both(mine, ref, sched, sched_ref, steps: int) -> None:
    """``steps`` rounds of optimizer step then scheduler step on both; same lrs and params."""
    rng = np.random.default_rng(0)
    params_ref = [g["params"][0] for g in ref.param_groups]
    for t in range(steps):
        grads = [rng.standard_normal(n) for n, _ in GROUPS]
        mine.step(grads)
        for p, g in zip(params_ref, grads, strict=True):
            p.grad = torch.from_numpy(g)
        ref.step()
        sched.step()
        sched_ref.step()
        _assert_same(_hyperparameters(mine), _hyperparameters(ref), f"step {t}")
    for group, p in zip(mine.param_groups, params_ref, strict=True):
        np.testing.assert_allclose(group["params"][0], p.numpy(), rtol=1e-12, atol=1e-14)


def test_linear_to_zero_keeps_training():
    """LinearLR(end_factor=0.0) ends at about -1.5e-18, not 0 (torch's rounding, which
    pyopt reproduces); torch's optimizers check lr only when made, so training goes on
    through the whole schedule and past it."""
    mine, ref = _optimizers("SGD")
    sched = ours.LinearLR(mine, end_factor=0.0)
    sched_ref = theirs.LinearLR(ref, end_factor=0.0)
    _train_both(mine, ref, sched, sched_ref, 8)
    assert sched.get_last_lr()[0] < 0  # the rounding this test is about


def test_one_cycle_past_total_steps_raises_and_changes_nothing():
    mine, ref = _optimizers("SGD")
    sched = ours.OneCycleLR(mine, max_lr=0.1, total_steps=10)
    sched_ref = theirs.OneCycleLR(ref, max_lr=0.1, total_steps=10)
    _run_both(mine, ref, sched, sched_ref, 10, "OneCycleLR")
    state, groups = sched.state_dict(), copy.deepcopy(mine.param_groups)
    for _ in range(2):
        with pytest.raises(ValueError, match="total_steps"):
            sched.step()
        _assert_same(sched.state_dict(), state, "after the failed step")
        _assert_unchanged(mine, groups)
    with pytest.raises(ValueError):
        sched_ref.step()


def _other_optimizer_scheduler(lib, optimizer):
    other = _optimizers("SGD")[0 if lib is ours else 1]
    return [lib.StepLR(optimizer, 3), lib.StepLR(other, 3)]


def _plateau_scheduler(lib, optimizer):
    return [lib.ReduceLROnPlateau(optimizer)]


# (scheduler, kwargs, optimizer kind, exception, text our message must hold, what torch
# raises when made: the same exception, another, or None where it accepts the value and
# fails later or misreads it).
# fmt: off
BAD = [
    ("LambdaLR", {"lr_lambda": [_inverse]}, "SGD", ValueError, "lr_lambda", ValueError),
    ("LambdaLR", {"lr_lambda": 0.5}, "SGD", TypeError, "lr_lambda", TypeError),  # torch: at the initial step
    ("LambdaLR", {"lr_lambda": [_inverse, "x"]}, "SGD", TypeError, "lr_lambda[1]", TypeError),
    ("MultiplicativeLR", {"lr_lambda": 0.95}, "SGD", TypeError, "lr_lambda", TypeError),
    ("MultiplicativeLR", {"lr_lambda": [_inverse]}, "SGD", ValueError, "lr_lambda", ValueError),
    ("MultiplicativeLR", {"lr_lambda": [_inverse, None]}, "SGD", TypeError, "lr_lambda[1]", TypeError),
    ("StepLR", {"step_size": 0}, "SGD", ValueError, "step_size", None),  # torch: ZeroDivisionError at step 1
    ("StepLR", {"step_size": -3}, "SGD", ValueError, "step_size", None),
    ("StepLR", {"step_size": 2.5}, "SGD", TypeError, "step_size", None),
    ("StepLR", {"step_size": True}, "SGD", TypeError, "step_size", None),
    ("StepLR", {"step_size": 3, "gamma": "0.1"}, "SGD", TypeError, "gamma", None),
    ("StepLR", {"step_size": 3, "gamma": True}, "SGD", TypeError, "gamma", None),
    ("StepLR", {"step_size": 3, "gamma": math.nan}, "SGD", ValueError, "gamma", None),
    ("StepLR", {"step_size": 3, "last_epoch": -2}, "SGD", ValueError, "last_epoch", KeyError),
    ("StepLR", {"step_size": 3, "last_epoch": 1.5}, "SGD", TypeError, "last_epoch", KeyError),
    ("MultiStepLR", {"milestones": 5}, "SGD", TypeError, "milestones", TypeError),
    ("MultiStepLR", {"milestones": "10"}, "SGD", TypeError, "milestones", None),
    ("MultiStepLR", {"milestones": [10, 2.5]}, "SGD", TypeError, "milestones[1]", None),
    ("MultiStepLR", {"milestones": [10], "gamma": None}, "SGD", TypeError, "gamma", None),
    ("ConstantLR", {"factor": 1.5}, "SGD", ValueError, "factor", ValueError),
    ("ConstantLR", {"factor": -0.1}, "SGD", ValueError, "factor", ValueError),
    ("ConstantLR", {"factor": 0.0}, "SGD", ValueError, "factor", None),  # torch: 1.0 / 0 at total_iters
    ("ConstantLR", {"factor": "0.5"}, "SGD", TypeError, "factor", TypeError),
    ("ConstantLR", {"total_iters": 0}, "SGD", ValueError, "total_iters", None),
    ("ConstantLR", {"total_iters": 5.0}, "SGD", TypeError, "total_iters", None),
    ("LinearLR", {"start_factor": 0.0}, "SGD", ValueError, "start_factor", ValueError),
    ("LinearLR", {"start_factor": 1.5}, "SGD", ValueError, "start_factor", ValueError),
    ("LinearLR", {"start_factor": math.nan}, "SGD", ValueError, "start_factor", None),
    ("LinearLR", {"end_factor": -0.1}, "SGD", ValueError, "end_factor", ValueError),
    ("LinearLR", {"end_factor": 1.01}, "SGD", ValueError, "end_factor", ValueError),
    ("LinearLR", {"end_factor": "1"}, "SGD", TypeError, "end_factor", TypeError),
    ("LinearLR", {"total_iters": 0}, "SGD", ValueError, "total_iters", None),
    ("ExponentialLR", {"gamma": "0.9"}, "SGD", TypeError, "gamma", None),
    ("ExponentialLR", {"gamma": False}, "SGD", TypeError, "gamma", None),
    ("CosineAnnealingLR", {"T_max": 0}, "SGD", ValueError, "T_max", None),  # torch: divides by 0 at step 1
    ("CosineAnnealingLR", {"T_max": 10.5}, "SGD", TypeError, "T_max", None),
    ("CosineAnnealingLR", {"T_max": 10, "eta_min": None}, "SGD", TypeError, "eta_min", None),
    ("PolynomialLR", {"total_iters": 0}, "SGD", ValueError, "total_iters", None),
    ("PolynomialLR", {"power": -1.0}, "SGD", ValueError, "power", None),  # torch: 0.0 ** -1 at total_iters
    ("PolynomialLR", {"power": "2"}, "SGD", TypeError, "power", None),
    ("CosineAnnealingWarmRestarts", {"T_0": 0}, "SGD", ValueError, "T_0", ValueError),
    ("CosineAnnealingWarmRestarts", {"T_0": 2.5}, "SGD", ValueError, "T_0", ValueError),
    ("CosineAnnealingWarmRestarts", {"T_0": True}, "SGD", ValueError, "T_0", None),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "T_mult": 0}, "SGD", ValueError, "T_mult", ValueError),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "T_mult": 1.5}, "SGD", ValueError, "T_mult", ValueError),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "eta_min": "0"}, "SGD", ValueError, "eta_min", ValueError),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "eta_min": math.nan}, "SGD", ValueError, "eta_min", None),
    ("CosineAnnealingWarmRestarts", {"T_0": 5, "last_epoch": -3}, "SGD", ValueError, "last_epoch", KeyError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0, "step_size_down": 10}, "SGD",
     ValueError, "step_size_up", ZeroDivisionError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2.5}, "SGD", TypeError, "step_size_up", None),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_down": -1}, "SGD", ValueError, "step_size_down", None),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "mode": "cos"}, "SGD", ValueError, "mode", ValueError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "scale_mode": "epoch"}, "SGD", ValueError, "scale_mode", None),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "scale_fn": 3}, "SGD", TypeError, "scale_fn", TypeError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "gamma": None}, "SGD", TypeError, "gamma", None),
    ("CyclicLR", {"base_lr": "0.01", "max_lr": 0.1}, "SGD", TypeError, "base_lr", TypeError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": [0.1]}, "SGD", ValueError, "max_lr", ValueError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": [0.1, None]}, "SGD", TypeError, "max_lr[1]", TypeError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1}, "Adagrad", ValueError, "cycle_momentum", ValueError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "base_momentum": [0.8] * 3}, "SGD", ValueError,
     "base_momentum", ValueError),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "last_epoch": -2}, "SGD", ValueError, "last_epoch", KeyError),
    ("ReduceLROnPlateau", {"factor": 1.0}, "SGD", ValueError, "factor", ValueError),
    ("ReduceLROnPlateau", {"factor": "0.1"}, "SGD", TypeError, "factor", TypeError),
    ("ReduceLROnPlateau", {"mode": "mean"}, "SGD", ValueError, "mode", ValueError),
    ("ReduceLROnPlateau", {"mode": 5}, "SGD", ValueError, "mode", TypeError),
    ("ReduceLROnPlateau", {"threshold_mode": "relative"}, "SGD", ValueError, "threshold_mode", ValueError),
    ("ReduceLROnPlateau", {"threshold": math.nan}, "SGD", ValueError, "threshold", None),
    ("ReduceLROnPlateau", {"patience": -1}, "SGD", ValueError, "patience", None),
    ("ReduceLROnPlateau", {"patience": 2.5}, "SGD", TypeError, "patience", None),
    ("ReduceLROnPlateau", {"cooldown": -1}, "SGD", ValueError, "cooldown", None),
    ("ReduceLROnPlateau", {"min_lr": [0.0]}, "SGD", ValueError, "min_lr", ValueError),
    ("ReduceLROnPlateau", {"min_lr": "0"}, "SGD", TypeError, "min_lr", None),
    ("ReduceLROnPlateau", {"eps": None}, "SGD", TypeError, "eps", None),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 0}, "SGD", ValueError, "total_steps", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10.0}, "SGD", ValueError, "total_steps", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": True}, "SGD", ValueError, "total_steps", None),
    ("OneCycleLR", {"max_lr": 0.1}, "SGD", ValueError, "total_steps", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 5}, "SGD", ValueError, "steps_per_epoch", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 0, "steps_per_epoch": 5}, "SGD", ValueError, "epochs", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 2, "steps_per_epoch": 2.5}, "SGD", ValueError, "steps_per_epoch", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": 1}, "SGD", ValueError, "pct_start", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": -0.1}, "SGD", ValueError, "pct_start", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": math.nan}, "SGD", ValueError, "pct_start", None),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": "exp"}, "SGD", ValueError, "anneal_strategy", ValueError),
    ("OneCycleLR", {"max_lr": [0.1], "total_steps": 10}, "SGD", ValueError, "max_lr", ValueError),
    ("OneCycleLR", {"max_lr": "1", "total_steps": 10}, "SGD", TypeError, "max_lr", TypeError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "div_factor": 0}, "SGD", ValueError, "div_factor", ZeroDivisionError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "final_div_factor": 0.0}, "SGD", ValueError,
     "final_div_factor", ZeroDivisionError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "max_momentum": [0.9] * 3}, "Adam", ValueError, "max_momentum", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "base_momentum": (0.8,)}, "SGD", ValueError, "base_momentum", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10}, "Adagrad", ValueError, "cycle_momentum", ValueError),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "last_epoch": -5}, "SGD", ValueError, "last_epoch", KeyError),
    ("SequentialLR", {"schedulers": [], "milestones": []}, "SGD", ValueError, "schedulers", ValueError),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3})] * 2, "milestones": []}, "SGD", ValueError, "milestones", ValueError),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3})] * 2, "milestones": 5}, "SGD", TypeError, "milestones", TypeError),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3})] * 2, "milestones": [2.5]}, "SGD", TypeError, "milestones[0]", None),
    ("SequentialLR", {"schedulers": _other_optimizer_scheduler, "milestones": [5]}, "SGD", ValueError, "schedulers[1]", ValueError),
    ("SequentialLR", {"schedulers": lambda lib, opt: ["StepLR"], "milestones": []}, "SGD", TypeError, "schedulers[0]", TypeError),
    ("SequentialLR", {"schedulers": _plateau_scheduler, "milestones": []}, "SGD", ValueError, "schedulers[0]", ValueError),
    ("SequentialLR", {"schedulers": [("StepLR", {"step_size": 3})], "milestones": [], "last_epoch": "0"}, "SGD",
     TypeError, "last_epoch", TypeError),
    ("ChainedScheduler", {"schedulers": []}, "SGD", ValueError, "schedulers", ValueError),
    ("ChainedScheduler", {"schedulers": _other_optimizer_scheduler}, "SGD", ValueError, "schedulers[1]", ValueError),
    ("ChainedScheduler", {"schedulers": lambda lib, opt: ["StepLR"]}, "SGD", TypeError, "schedulers[0]", TypeError),
    ("ChainedScheduler", {"schedulers": _plateau_scheduler}, "SGD", ValueError, "schedulers[0]", ValueError),
]
# fmt: on


def _assert_unchanged(optimizer, before: list[dict]) -> None:
    """The param groups equal the deep copy ``before``: keys, values and param arrays."""
    after = optimizer.param_groups
    assert len(after) == len(before)
    for gi, (got, want) in enumerate(zip(after, before, strict=True)):
        assert got.keys() == want.keys(), f"param_groups[{gi}] keys {sorted(got)}"
        for key in want:
            if key == "params":
                for a, b in zip(got[key], want[key], strict=True):
                    np.testing.assert_array_equal(a, b)
            else:
                assert got[key] == want[key], f"param_groups[{gi}][{key!r}]"


@pytest.mark.parametrize(
    ("name", "kwargs", "kind", "exc", "text", "torch_exc"),
    BAD,
    ids=[f"{r[0]}-{r[4]}-{i}" for i, r in enumerate(BAD)],
)
def test_bad_arguments_raise_and_change_nothing(name, kwargs, kind, exc, text, torch_exc):
    mine, ref = _optimizers(kind)
    args = _arguments(ours, mine, name, kwargs)  # any schedulers it combines, made first
    before = copy.deepcopy(mine.param_groups)
    with pytest.raises(exc) as err:
        _construct(ours, mine, name, args)
    assert text in str(err.value), str(err.value)
    _assert_unchanged(mine, before)
    if torch_exc is None:
        _make(theirs, ref, name, kwargs)  # torch accepts it when made
    else:
        with pytest.raises(torch_exc):
            _make(theirs, ref, name, kwargs)


def test_chained_scheduler_of_another_optimizer_raises_like_torch():
    """An ``optimizer`` none of the schedulers drives (or a non-optimizer) is a ValueError."""
    for lib, optimizer in zip((ours, theirs), _optimizers("SGD"), strict=True):
        scheds = [lib.StepLR(optimizer, 3)]
        other = _optimizers("SGD")[0 if lib is ours else 1]
        for wrong in (other, "optimizer"):
            with pytest.raises(ValueError, match="schedulers\\[0\\]" if lib is ours else None):
                lib.ChainedScheduler(scheds, optimizer=wrong)


@pytest.mark.parametrize(
    "name",
    [
        "StepLR",
        "LambdaLR",
        "OneCycleLR",
        "SequentialLR",
        "InverseSqrtLR",
        "ConstantLR",
        "PolynomialLR",
        "MultiplicativeLR",
        "CosineAnnealingWarmRestarts",
        "CyclicLR",
        "ReduceLROnPlateau",
    ],
)
def test_rejects_a_non_pyopt_optimizer(name):
    _, ref = _optimizers("SGD")
    args = {
        "StepLR": (3,),
        "LambdaLR": (_inverse,),
        "OneCycleLR": (0.1, 10),
        "SequentialLR": ([], []),
        "InverseSqrtLR": (10,),
        "ConstantLR": (),
        "PolynomialLR": (),
        "MultiplicativeLR": (_inverse,),
        "CosineAnnealingWarmRestarts": (10,),
        "CyclicLR": (0.01, 0.1),
        "ReduceLROnPlateau": (),
    }[name]
    with pytest.raises(TypeError, match=r"optimizer must be a pyopt\.optim\.Optimizer"):
        getattr(ours, name)(ref, *args)


# (a scheduler's construction, its bad step arguments, the exception)
BAD_STEPS = [
    (lambda opt: ours.CosineAnnealingWarmRestarts(opt, 5), (-1.0,), ValueError),
    (lambda opt: ours.CosineAnnealingWarmRestarts(opt, 5), (math.inf,), ValueError),
    (lambda opt: ours.CosineAnnealingWarmRestarts(opt, 5), (math.nan,), ValueError),
    (lambda opt: ours.CosineAnnealingWarmRestarts(opt, 5), ("3",), TypeError),
    (lambda opt: ours.ReduceLROnPlateau(opt, patience=0), ("1.0",), TypeError),
    (lambda opt: ours.ReduceLROnPlateau(opt, patience=0), (None,), TypeError),
    (lambda opt: ours.ReduceLROnPlateau(opt, patience=0), (np.ones(2),), TypeError),
    (lambda opt: ours.LambdaLR(opt, lambda e: 1 / (3 - e)), (), ZeroDivisionError),
]


@pytest.mark.parametrize(("make", "args", "exc"), BAD_STEPS)
def test_a_step_that_raises_changes_nothing(make, args, exc):
    mine, _ = _optimizers("SGD")
    sched = make(mine)
    good = (1.0,) if args else ()  # an epoch or a metric, as the bad step takes one
    for _ in range(2):
        sched.step(*good)
    state, groups = sched.state_dict(), copy.deepcopy(mine.param_groups)
    with pytest.raises(exc, match="epoch|metrics" if exc is not ZeroDivisionError else None):
        sched.step(*args)
    _assert_same(sched.state_dict(), state, "after the failed step")
    _assert_unchanged(mine, groups)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_nan_and_inf_metrics_like_torch(mode):
    """NaN is never an improvement (a bad epoch); ±inf compare as floats do; a one-element
    array or tensor is a metric too (``float(metrics)``)."""
    metrics = [1.0, math.nan, 0.5, math.nan, math.nan, math.inf, 0.4, -math.inf, 0.3, math.nan,
               2.0, math.inf, math.inf, 0.1, -math.inf, 0.2, math.nan, 5.0]  # fmt: skip
    mine, ref = _optimizers("SGD")
    sched = ours.ReduceLROnPlateau(mine, mode=mode, patience=1, factor=0.5)
    sched_ref = theirs.ReduceLROnPlateau(ref, mode=mode, patience=1, factor=0.5)
    for i, m in enumerate(metrics):
        sched.step(np.float32(m) if i % 3 == 1 else np.array(m) if i % 3 == 2 else m)
        sched_ref.step(torch.tensor(m) if i % 2 else m)
        _assert_same(_hyperparameters(mine), _hyperparameters(ref), f"metric {i}")
        state, state_ref = sched.state_dict(), sched_ref.state_dict()
        for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
            got, want = state[key], state_ref[key]
            assert got == want or (math.isnan(got) and math.isnan(want)), f"{i} {key}"
    assert sched.get_last_lr() != [lr for _, lr in GROUPS]  # some reduction happened


def test_plateau_leaves_the_optimizer_alone_until_it_reduces():
    """No ``initial_lr`` written, no lr changed when made (as torch), and get_last_lr is
    the groups' lrs."""
    mine, _ = _optimizers("Adam")
    before = copy.deepcopy(mine.param_groups)
    sched = ours.ReduceLROnPlateau(mine, patience=0, min_lr=[0.05, 0.0])
    _assert_unchanged(mine, before)
    assert sched.get_last_lr() == [0.1, 0.02]
    sched.step(1.0)
    sched.step(1.0)  # one bad epoch > patience 0: reduce, group 0 to its min_lr
    assert sched.get_last_lr() == [0.05, 0.002] == [g["lr"] for g in mine.param_groups]
    assert not sched.in_cooldown and sched.num_bad_epochs == 0


def test_get_last_lr_is_a_copy():
    mine, _ = _optimizers("SGD")
    sched = ours.ExponentialLR(mine, gamma=0.5)
    last = sched.get_last_lr()
    last[0] = 123.0
    assert sched.get_last_lr() == [0.1, 0.02]
    assert mine.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("name", ["LambdaLR", "MultiplicativeLR"])
def test_lambda_state_dict_restores_callable_objects(name):
    mine, ref = _optimizers("SGD")
    sched = getattr(ours, name)(mine, [_Warmup(10), _inverse])
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"steps": 10}, None]
    ref_state = getattr(theirs, name)(ref, [_Warmup(10), _inverse]).state_dict()
    assert state["lr_lambdas"] == ref_state["lr_lambdas"]
    other = getattr(ours, name)(_optimizers("SGD")[0], [_Warmup(99), _inverse])
    other.load_state_dict(state)
    assert other.lr_lambdas[0].steps == 10
    assert state["lr_lambdas"] == [{"steps": 10}, None]  # the dict was not consumed


def test_cyclic_state_dict_keeps_a_callable_scale_fn_and_saves():
    """A callable-object scale_fn's ``__dict__`` is saved (a function's is not) and comes
    back through pyopt.save / pyopt.load, as torch's; the state dict holds no bound method."""
    mine, ref = _optimizers("Adam")
    kwargs = {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "scale_mode": "iterations"}
    sched = ours.CyclicLR(mine, scale_fn=_Decay(0.9), **kwargs)
    state = sched.state_dict()
    assert state["_scale_fn_custom"] == {"rate": 0.9}
    assert (
        state["_scale_fn_custom"]
        == theirs.CyclicLR(ref, scale_fn=_Decay(0.9), **kwargs).state_dict()["_scale_fn_custom"]
    )
    assert not any(callable(v) for v in state.values())
    other = ours.CyclicLR(_optimizers("Adam")[0], scale_fn=_Decay(0.5), **kwargs)
    other.load_state_dict(state)
    assert other._scale_fn_custom.rate == 0.9
    plain = ours.CyclicLR(_optimizers("Adam")[0], scale_fn=lambda x: 1.0, **kwargs)
    assert plain.state_dict()["_scale_fn_custom"] is None


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


@pytest.mark.parametrize(
    ("warmup", "exc"),
    [
        (0, ValueError),
        (-3, ValueError),
        (2.5, TypeError),
        (True, TypeError),
        ("10", TypeError),
        (None, TypeError),
    ],
)
def test_inverse_sqrt_rejects_bad_warmup(warmup, exc):
    mine, _ = _optimizers("SGD")
    before = copy.deepcopy(mine.param_groups)
    with pytest.raises(exc, match="warmup_steps"):
        ours.InverseSqrtLR(mine, warmup_steps=warmup)
    _assert_unchanged(mine, before)
