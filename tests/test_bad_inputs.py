"""Bad input across pyopt's public API, one table for every function and class.

Each row of :data:`BAD` builds fresh valid objects, makes one bad call and expects a
``TypeError`` or ``ValueError`` whose message names the bad argument, after which every array
and object state (params, grads, running statistics, optimizer state, ``num_batches_tracked``,
``Dropout`` offsets, checkpoint files, the global generator) is bit-identical to before. The
exception type is torch's for the same input where torch has the op and raises one of the two;
otherwise TypeError for a wrong type, ValueError for a wrong value. :data:`GOOD` holds the
inputs torch accepts and so must we (generators, single arrays, views, size-0 arrays, NumPy
scalars and bools), each checked against the plain call. A few rows mix host and device arrays
on the CUDA backend (GPU or simulator).
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from helpers import to_backend

import pyopt
from pyopt import _random, init, nn, optim
from pyopt import functional as F

try:
    import torch
except ImportError:  # the torch rows are left out; every other row still runs
    torch = None


# --- the one snapshot helper --------------------------------------------------------------


def snapshot(obj: Any) -> Any:
    """A deep, bit-exact picture of ``obj``: arrays copied, pyopt objects by their attributes,
    files (``pathlib.Path``) by their bytes and their directory's listing."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True)
    if isinstance(obj, pathlib.Path):
        return sorted(os.listdir(obj.parent)), obj.read_bytes() if obj.exists() else None
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if hasattr(obj, "copy_to_host"):
        return obj.copy_to_host()
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(value) for value in obj)
    if type(obj).__module__.startswith("pyopt") and hasattr(obj, "__dict__"):
        return type(obj).__name__, snapshot(vars(obj))
    return obj


def _generator_key() -> tuple[int, int, int]:
    return _random._GLOBAL.seed, _random._GLOBAL.offset, _random._GLOBAL.derived


def assert_same(before: Any, after: Any, where: str = "objects") -> None:
    """``after`` is bit-identical to ``before`` (two :func:`snapshot` results)."""
    if isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray), f"{where} is no longer an array"
        assert (after.dtype, after.shape) == (before.dtype, before.shape), f"{where} changed"
        if before.dtype.hasobject:
            np.testing.assert_array_equal(after, before, err_msg=where)
        else:
            bits = np.atleast_1d(before).view(np.uint8)
            np.testing.assert_array_equal(np.atleast_1d(after).view(np.uint8), bits, err_msg=where)
    elif isinstance(before, dict):
        assert isinstance(after, dict) and list(after) == list(before), f"{where}: keys changed"
        for key in before:
            assert_same(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, list | tuple):
        assert type(after) is type(before) and len(after) == len(before), f"{where} changed"
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same(b, a, f"{where}[{i}]")
    else:
        assert after is before or after == before, f"{where}: {before!r} became {after!r}"


# --- small valid objects ------------------------------------------------------------------


def f32(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def read_only(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def memory_mapped(arr: np.ndarray) -> np.ndarray:
    """``arr`` saved and opened again with ``np.load(..., mmap_mode="r")`` (read-only)."""
    path = FILES / f"{next(_NAMES)}.npy"
    np.save(path, arr)
    return np.load(path, mmap_mode="r")


def zero_stride(arr: np.ndarray) -> np.ndarray:
    """A writeable array of ``arr``'s shape whose elements are all one memory location."""
    cell = np.ascontiguousarray(arr.reshape(-1)[:1]).copy()
    return np.lib.stride_tricks.as_strided(cell, shape=arr.shape, strides=(0,) * arr.ndim)


def strided(arr: np.ndarray) -> np.ndarray:
    """A non-contiguous view holding ``arr``'s values (every other element of the last axis)."""
    wide = np.zeros((*arr.shape[:-1], 2 * arr.shape[-1]), arr.dtype)
    wide[..., ::2] = arr
    return wide[..., ::2]


def reversed_view(arr: np.ndarray) -> np.ndarray:
    """A negative-stride view holding ``arr``'s values."""
    return np.ascontiguousarray(arr[::-1])[::-1]


# Files the rows create (memory-mapped arrays, checkpoints), each under a name of its own;
# removed when the process exits (rows are built at call time, after any fixture is torn down).
FILES = pathlib.Path(tempfile.mkdtemp(prefix="pyopt-bad-inputs-"))
atexit.register(shutil.rmtree, FILES, ignore_errors=True)
_NAMES = itertools.count()


# --- the bad kinds ------------------------------------------------------------------------

# (kind, make bad value from the valid one, exception). Not an array at all:
NOT_ARRAYS = [
    ("None", lambda v: None, TypeError),
    ("list", lambda v: v.tolist(), TypeError),
    ("tuple", lambda v: tuple(v.ravel().tolist()), TypeError),
    ("float", lambda v: 1.5, TypeError),
    ("str", lambda v: "abc", TypeError),
    *([("torch-cpu", lambda v: torch.from_numpy(v.copy()), TypeError)] if torch else []),
]
BAD_DTYPES = [
    (name, lambda v, d=dtype: v.astype(d), TypeError)
    for name, dtype in [
        ("int16", np.int16),  # float16/bfloat16 are valid for params, grads, dropout, init
        ("int64", np.int64),
        ("complex64", np.complex64),
        ("bool", np.bool_),
        ("object", object),
        ("str-dtype", "U8"),
    ]
]
# Only where another argument (or the object) fixes the dtype and shape:
MISMATCHED = [
    ("float64", lambda v: v.astype(np.float64), TypeError),
    ("0d", lambda v: np.asarray(v.ravel()[0]), ValueError),
    ("rank+1", lambda v: v[None], ValueError),
    ("shape", lambda v: np.concatenate([v, v], axis=-1), ValueError),
]
# Only for arrays written in place:
UNWRITABLE = [
    ("read-only", lambda v: read_only(v.copy()), ValueError),
    ("mmap-r", memory_mapped, ValueError),
    ("zero-stride", zero_stride, ValueError),
]
# Values copied into existing arrays (load_state_dict, ParamBuffer.load): torch casts numbers,
# so only what is not a real array of the right shape is bad.
BAD_VALUES = [
    ("None", lambda v: None, TypeError),
    ("str", lambda v: "abc", TypeError),
    ("str-dtype", lambda v: v.astype("U8"), TypeError),
    ("object", lambda v: v.astype(object), TypeError),
    ("complex", lambda v: v.astype(np.complex128), TypeError),
    ("shape", lambda v: np.concatenate([v, v], axis=-1), ValueError),
    ("rank+1", lambda v: v[None], ValueError),
]

REAL = [
    ("None", None, TypeError),
    ("str", "0.1", TypeError),
    ("bool", True, TypeError),
    ("list", [0.1], TypeError),
    ("complex", 1j, TypeError),
    ("nan", math.nan, ValueError),
]
INT = [
    ("None", None, TypeError),
    ("float", 2.5, TypeError),
    ("integral-float", 2.0, TypeError),
    ("bool", True, TypeError),
    ("str", "3", TypeError),
]
FLAG = [
    ("str", "False", TypeError),
    ("int0", 0, TypeError),
    ("int1", 1, TypeError),
    ("None", None, TypeError),
    ("float", 1.0, TypeError),
]
U64 = [*INT[1:], ("negative", -1, ValueError), ("2**64", 2**64, ValueError)]


@dataclass(frozen=True)
class Row:
    """One bad call: ``call(build())`` must raise ``exc`` naming ``match``, changing nothing."""

    build: Callable[[], dict[str, Any]]
    call: Callable[[dict[str, Any]], Any]
    exc: type[Exception]
    match: str


BAD: list[Any] = []


def bad(
    row_id: str,
    build: Callable[[], dict[str, Any]],
    call: Callable[[dict[str, Any]], Any],
    exc: type[Exception],
    match: str,
) -> None:
    """Add the row ``row_id`` (``"<call>-<argument>-<kind>"``) to :data:`BAD`."""
    BAD.append(pytest.param(Row(build, call, exc, match), id=row_id))


def array_rows(
    site: str,
    build: Callable[[], dict[str, Any]],
    valid: Callable[[dict[str, Any]], Any],
    call: Callable[[dict[str, Any], Any], Any],
    name: str,
    *,
    tied: bool = False,
    inplace: bool = False,
    optional: bool = False,
    kinds: list | None = None,
) -> None:
    """Rows feeding the array argument ``name`` of ``call`` every bad kind that applies.

    ``valid(objs)`` is the argument's valid value; the bad value is made from it and kept in
    the objects (as ``objs["bad"]``), so it is snapshotted too.
    """
    if kinds is None:
        kinds = [*NOT_ARRAYS, *BAD_DTYPES]
        kinds += MISMATCHED if tied else []
        kinds += UNWRITABLE if inplace else []
    for kind, make, exc in kinds:
        if optional and kind == "None":
            continue

        def build_bad(make=make):
            objs = build()
            objs["bad"] = make(valid(objs))
            return objs

        bad(f"{site}-{kind}", build_bad, lambda o, call=call: call(o, o["bad"]), exc, name)


def scalar_rows(
    site: str,
    build: Callable[[], dict[str, Any]],
    call: Callable[[dict[str, Any], Any], Any],
    name: str,
    kinds: list[tuple[str, Any, type[Exception]]],
) -> None:
    """Rows feeding the scalar argument ``name``: ``kinds`` are ``(kind, value, exc)``."""
    for kind, value, exc in kinds:
        bad(f"{site}-{kind}", build, lambda o, call=call, v=value: call(o, v), exc, name)


def not_a_state_dict_rows(site: str, build: Callable[[], dict[str, Any]], key: str) -> None:
    """Rows loading something that is not a dict into ``o[key].load_state_dict``."""
    scalar_rows(
        f"{site}.load_state_dict-state_dict",
        build,
        lambda o, v: o[key].load_state_dict(v),
        "state_dict",
        [("None", None, TypeError), ("list", [], TypeError)],
    )


# --- functional: batch norm and dropout ----------------------------------------------------


def bn_args(training: bool = True) -> dict[str, Any]:
    return {
        "x": f32(4, 3),
        "weight": f32(3, seed=1),
        "bias": f32(3, seed=2),
        "running_mean": np.zeros(3, np.float32),
        "running_var": np.ones(3, np.float32),
        "training": training,
    }


def call_bn(o: dict[str, Any], **changes: Any) -> Any:
    args = {k: o[k] for k in ("x", "weight", "bias", "running_mean", "running_var", "training")}
    args.update(changes)
    x = args.pop("x")
    return F.batch_norm(x, **args)


for _training in (True, False):
    _mode = "train" if _training else "eval"
    array_rows(
        f"batch_norm({_mode})-x",
        lambda t=_training: bn_args(t),
        lambda o: o["x"],
        lambda o, v: call_bn(o, x=v),
        "x",
    )
    for _arg in ("weight", "bias", "running_mean", "running_var"):
        array_rows(
            f"batch_norm({_mode})-{_arg}",
            lambda t=_training: bn_args(t),
            lambda o, a=_arg: o[a],
            lambda o, v, a=_arg: call_bn(o, **{a: v}),
            _arg,
            tied=True,
            inplace=_training and _arg.startswith("running"),
            optional=True,
        )
    scalar_rows(
        f"batch_norm({_mode})-training",
        lambda t=_training: bn_args(t),
        lambda o, v: call_bn(o, training=v),
        "training",
        FLAG,
    )
    scalar_rows(
        f"batch_norm({_mode})-momentum",
        lambda t=_training: bn_args(t),
        lambda o, v: call_bn(o, momentum=v),
        "momentum",
        [*REAL, ("1.5", 1.5, ValueError), ("negative", -0.1, ValueError)],
    )
    scalar_rows(
        f"batch_norm({_mode})-axis",
        lambda t=_training: bn_args(t),
        lambda o, v: call_bn(o, axis=v),
        "axis",
        [*INT, ("batch-axis", 0, ValueError), ("out-of-range", 2, ValueError)],
    )
scalar_rows(
    "batch_norm-eps",
    bn_args,
    lambda o, v: call_bn(o, eps=v),
    "eps",
    [
        *REAL,
        ("zero", 0.0, ValueError),
        ("negative", -1.0, ValueError),
        ("inf", math.inf, ValueError),
    ],
)
bad(
    "batch_norm-x-rank1",
    bn_args,
    lambda o: call_bn(o, x=f32(3), weight=None, bias=None, running_mean=None, running_var=None),
    ValueError,
    "x",
)
bad(
    "batch_norm(train)-running_var-aliases-running_mean",
    bn_args,
    lambda o: call_bn(o, running_var=o["running_mean"]),
    ValueError,
    "running_",
)
bad(
    "batch_norm(eval)-running_mean-None",
    lambda: bn_args(False),
    lambda o: call_bn(o, running_mean=None),
    ValueError,
    "running_mean",
)


def bn_backward_args() -> dict[str, Any]:
    x, weight = f32(4, 3), f32(3, seed=1)
    _, mean, invstd = F.batch_norm(x, weight=weight)
    return {"dy": f32(4, 3, seed=3), "x": x, "weight": weight, "mean": mean, "invstd": invstd}


def call_bn_backward(o: dict[str, Any], **changes: Any) -> Any:
    args = {k: o[k] for k in ("dy", "x", "weight", "mean", "invstd")}
    args.update(changes)
    return F.batch_norm_backward(args.pop("dy"), args.pop("x"), **args)


for _arg in ("dy", "weight", "mean", "invstd"):
    array_rows(
        f"batch_norm_backward-{_arg}",
        bn_backward_args,
        lambda o, a=_arg: o[a],
        lambda o, v, a=_arg: call_bn_backward(o, **{a: v}),
        _arg,
        tied=True,
        optional=_arg == "weight",
    )
array_rows(
    "batch_norm_backward-x",
    bn_backward_args,
    lambda o: o["x"],
    lambda o, v: call_bn_backward(o, x=v),
    "x",
    kinds=[*NOT_ARRAYS, *BAD_DTYPES],
)
scalar_rows(
    "batch_norm_backward-training",
    bn_backward_args,
    lambda o, v: call_bn_backward(o, training=v),
    "training",
    FLAG,
)
scalar_rows(
    "batch_norm_backward-axis",
    bn_backward_args,
    lambda o, v: call_bn_backward(o, axis=v),
    "axis",
    [*INT, ("batch-axis", 0, ValueError)],
)


def dropout_args() -> dict[str, Any]:
    return {"x": f32(4, 5)}


for _fn, _arg in ((F.dropout, "x"), (F.dropout_backward, "dy")):
    _site = _fn.__name__
    array_rows(
        f"{_site}-{_arg}",
        dropout_args,
        lambda o: o["x"],
        lambda o, v, fn=_fn: fn(v, 0.5, seed=1),
        _arg,
    )
    scalar_rows(
        f"{_site}-p",
        dropout_args,
        lambda o, v, fn=_fn: fn(o["x"], v, seed=1),
        "p",
        [*REAL, ("1.5", 1.5, ValueError), ("negative", -0.1, ValueError)],
    )
    for _key in ("seed", "offset"):
        scalar_rows(
            f"{_site}-{_key}",
            dropout_args,
            lambda o, v, fn=_fn, k=_key: fn(o["x"], 0.5, **{"seed": 1, k: v}),
            _key,
            [("None", None, TypeError), *U64] if _key == "seed" else U64,
        )
scalar_rows(
    "dropout-training",
    dropout_args,
    lambda o, v: F.dropout(o["x"], 0.5, training=v, seed=1),
    "training",
    FLAG,
)


# --- functional: optimizer steps -----------------------------------------------------------

# rule -> (function, state lists, hyperparameters, flags, kwargs that make every list used)
RULES = {
    "sgd_": (
        F.sgd_,
        ["momentum_buffers"],
        ["lr", "momentum", "dampening", "weight_decay"],
        ["nesterov", "maximize"],
        {"momentum": 0.9},
    ),
    "adam_": (
        F.adam_,
        ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
        ["lr", "beta1", "beta2", "eps", "weight_decay"],
        ["amsgrad", "maximize", "decoupled_weight_decay"],
        {"amsgrad": True},
    ),
    "adamw_": (
        F.adamw_,
        ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
        ["lr", "eps", "weight_decay"],
        ["amsgrad", "maximize"],
        {"amsgrad": True},
    ),
    "adagrad_": (
        F.adagrad_,
        ["state_sums"],
        ["lr", "lr_decay", "weight_decay", "eps"],
        ["maximize"],
        {},
    ),
    "rmsprop_": (
        F.rmsprop_,
        ["square_avgs", "grad_avgs", "momentum_buffers"],
        ["lr", "alpha", "eps", "weight_decay", "momentum"],
        ["centered", "maximize"],
        {"centered": True, "momentum": 0.5},
    ),
    "adadelta_": (
        F.adadelta_,
        ["square_avgs", "acc_deltas"],
        ["lr", "rho", "eps", "weight_decay"],
        ["maximize"],
        {},
    ),
}


# State lists a rule takes None for unless its options use them (amsgrad, momentum, centered).
OPTIONAL_LISTS = ("momentum_buffers", "max_exp_avg_sqs", "grad_avgs")


def rule_args(rule: str) -> dict[str, Any]:
    """Two params of 5 elements, their grads and every state list the rule can use."""
    _, states, _, _, kwargs = RULES[rule]
    objs = {
        "params": [f32(5), f32(5, seed=1)],
        "grads": [f32(5, seed=2), f32(5, seed=3)],
        **{name: [np.zeros(5, np.float32), np.zeros(5, np.float32)] for name in states},
        "state_steps": np.array([2, 2], np.int64),
    }
    objs["kwargs"] = {"lr": 0.1, **kwargs}
    return objs


def call_rule(rule: str, o: dict[str, Any], **changes: Any) -> None:
    fn, states, *_ = RULES[rule]
    lists = {k: o[k] for k in ("params", "grads", *states, "state_steps")}
    kwargs = dict(o["kwargs"])
    for key, value in changes.items():
        (lists if key in lists else kwargs)[key] = value
    fn(*lists.values(), **kwargs)


def with_last(lst: list[Any], value: Any) -> list[Any]:
    return [*lst[:-1], value]


for _rule, (_fn, _states, _hps, _flags, _) in RULES.items():

    def _build(r=_rule):
        return rule_args(r)

    for _list in ("params", "grads", *_states):
        array_rows(
            f"{_rule}-{_list}[1]",
            _build,
            lambda o, k=_list: o[k][1],
            lambda o, v, r=_rule, k=_list: call_rule(r, o, **{k: with_last(o[k], v)}),
            f"{_list}[1]",
            tied=_list != "params",
            inplace=_list != "grads",
        )
        scalar_rows(
            f"{_rule}-{_list}",
            _build,
            lambda o, v, r=_rule, k=_list: call_rule(r, o, **{k: v}),
            _list,
            [
                # A list the options make optional but these options need is a missing value.
                ("None", None, ValueError if _list in OPTIONAL_LISTS else TypeError),
                ("array", f32(5), TypeError),
                ("str", "abc", TypeError),
            ],
        )
        bad(
            f"{_rule}-{_list}-short",
            _build,
            lambda o, r=_rule, k=_list: call_rule(r, o, **{k: o[k][:1]}),
            ValueError,
            _list,
        )
    array_rows(
        f"{_rule}-state_steps",
        _build,
        lambda o: o["state_steps"],
        lambda o, v, r=_rule: call_rule(r, o, state_steps=v),
        "state_steps",
        kinds=[
            ("None", lambda v: None, TypeError),
            ("list", lambda v: v.tolist(), TypeError),
            ("float", lambda v: v.astype(np.float32), TypeError),
            ("shape", lambda v: np.concatenate([v, v]), ValueError),
            ("negative", lambda v: -v, ValueError),
            *UNWRITABLE,
        ],
    )
    _scale = [*REAL[1:], ("zero", 0.0, ValueError), ("inf", math.inf, ValueError)]
    _scalars = [*((h, REAL) for h in _hps), *((f, FLAG) for f in _flags), ("grad_scale", _scale)]
    for _name, _kinds in _scalars:
        scalar_rows(
            f"{_rule}-{_name}",
            _build,
            lambda o, v, r=_rule, k=_name: call_rule(r, o, **{k: v}),
            _name,
            _kinds,
        )
    if _states:
        bad(
            f"{_rule}-{_states[0]}-aliases-params",
            _build,
            lambda o, r=_rule, s=_states[0]: call_rule(r, o, **{s: o["params"]}),
            ValueError,
            _states[0],
        )
    bad(
        f"{_rule}-params-same-array-twice",
        _build,
        lambda o, r=_rule: call_rule(r, o, params=[o["params"][0], o["params"][0]]),
        ValueError,
        "params",
    )
# β1 = 1 makes Adam's bias correction 1 − β1^t zero: a value no step can use.
bad(
    "adam_-beta1-one",
    lambda: rule_args("adam_"),
    lambda o: call_rule("adam_", o, beta1=1.0),
    ValueError,
    "beta1",
)


# --- init --------------------------------------------------------------------------------

INITS = {
    "uniform_": (init.uniform_, {"a": REAL, "b": REAL}),
    # A NaN mean or fill value is one torch fills with; a NaN std or bound it refuses.
    "normal_": (init.normal_, {"mean": REAL[:-1], "std": [*REAL, ("negative", -1.0, ValueError)]}),
    "constant_": (init.constant_, {"val": REAL[:-1]}),
    "zeros_": (init.zeros_, {}),
    "ones_": (init.ones_, {}),
    "xavier_uniform_": (init.xavier_uniform_, {"gain": REAL}),
    "xavier_normal_": (init.xavier_normal_, {"gain": REAL}),
    "kaiming_uniform_": (init.kaiming_uniform_, {}),
    "kaiming_normal_": (init.kaiming_normal_, {}),
    "lecun_normal_": (init.lecun_normal_, {}),
}
# The arguments an init needs besides the tensor, and the inits that draw (take a seed).
REQUIRED = {name: {"val": 0.5} if name == "constant_" else {} for name in INITS}
SEEDED = [name for name in INITS if name not in ("constant_", "zeros_", "ones_")]
FAN_BASED = (
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "lecun_normal_",
)


def init_args() -> dict[str, Any]:
    return {"tensor": f32(4, 3)}


for _name, (_fn, _scalars) in INITS.items():
    array_rows(
        f"init.{_name}-tensor",
        init_args,
        lambda o: o["tensor"],
        lambda o, v, fn=_fn, kw=REQUIRED[_name]: fn(v, **kw),
        "tensor",
        inplace=True,
    )
    for _arg, _kinds in _scalars.items():
        scalar_rows(
            f"init.{_name}-{_arg}",
            init_args,
            lambda o, v, fn=_fn, a=_arg, kw=REQUIRED[_name]: fn(o["tensor"], **{**kw, a: v}),
            _arg,
            _kinds,
        )
    if _name in FAN_BASED:
        for _kind, _shape in (("0d", ()), ("1d", (5,))):
            bad(
                f"init.{_name}-tensor-{_kind}",
                lambda s=_shape: {"tensor": np.zeros(s, np.float32)},
                lambda o, fn=_fn: fn(o["tensor"]),
                ValueError,
                "tensor",
            )
    if _name in SEEDED:
        scalar_rows(
            f"init.{_name}-seed",
            init_args,
            lambda o, v, fn=_fn: fn(o["tensor"], seed=v),
            "seed",
            U64,
        )
for _name in ("kaiming_uniform_", "kaiming_normal_"):
    _fn = INITS[_name][0]
    scalar_rows(
        f"init.{_name}-mode",
        init_args,
        lambda o, v, fn=_fn: fn(o["tensor"], mode=v),
        "mode",
        # A choice outside the set is a ValueError whatever its type (as calculate_gain's).
        [("None", None, ValueError), ("int", 5, ValueError), ("bogus", "fan_avg", ValueError)],
    )
    scalar_rows(
        f"init.{_name}-nonlinearity",
        init_args,
        lambda o, v, fn=_fn: fn(o["tensor"], nonlinearity=v),
        "nonlinearity",
        [("None", None, ValueError), ("bogus", "swish", ValueError)],
    )
    # torch: calculate_gain's "negative_slope x not a valid number" (a is the slope).
    scalar_rows(
        f"init.{_name}-a",
        init_args,
        lambda o, v, fn=_fn: fn(o["tensor"], a=v),
        "negative_slope",
        [("str", "0.1", ValueError), ("bool", True, ValueError), ("list", [0.1], ValueError)],
    )
for _kind, _a, _b in (("a>b", 2.0, 1.0), ("a-nan", math.nan, 1.0), ("b-inf", 0.0, math.inf)):
    bad(
        f"init.uniform_-{_kind}",
        init_args,
        lambda o, a=_a, b=_b: init.uniform_(o["tensor"], a, b),
        ValueError,
        "a" if _kind.startswith("a") else "b",
    )
scalar_rows(
    "init.calculate_gain-nonlinearity",
    dict,
    lambda o, v: init.calculate_gain(v),
    "nonlinearity",
    [("None", None, ValueError), ("int", 5, ValueError), ("bogus", "swish", ValueError)],
)
scalar_rows(
    "init.calculate_gain-param",
    dict,
    lambda o, v: init.calculate_gain("leaky_relu", v),
    "negative_slope",
    [("str", "0.1", ValueError), ("bool", True, ValueError), ("list", [0.1], ValueError)],
)


# --- clipping, the generator, checkpoints --------------------------------------------------


def clip_args() -> dict[str, Any]:
    return {"grads": [f32(5) * 10, f32(7, seed=1) * 10]}


for _name, _fn, _arg in (
    ("clip_grad_norm_", pyopt.clip_grad_norm_, "max_norm"),
    ("clip_grad_value_", pyopt.clip_grad_value_, "clip_value"),
):
    array_rows(
        f"{_name}-grads[1]",
        clip_args,
        lambda o: o["grads"][1],
        lambda o, v, fn=_fn: fn(with_last(o["grads"], v), 1.0),
        "grads[1]",
        inplace=True,
        optional=True,  # a param without a grad
    )
    scalar_rows(
        f"{_name}-grads",
        clip_args,
        lambda o, v, fn=_fn: fn(v, 1.0),
        "grads",
        [("str", "abc", TypeError), ("int", 3, TypeError)],
    )
    # Strings are left out: torch float()s them ("inf" is a valid norm_type there).
    scalar_rows(
        f"{_name}-{_arg}",
        clip_args,
        lambda o, v, fn=_fn: fn(o["grads"], v),
        _arg,
        [
            ("None", None, TypeError),
            ("bool", True, TypeError),
            ("list", [1.0], TypeError),
            ("complex", 1j, TypeError),
        ],
    )
scalar_rows(
    "clip_grad_norm_-norm_type",
    clip_args,
    lambda o, v: pyopt.clip_grad_norm_(o["grads"], 1.0, v),
    "norm_type",
    [("None", None, TypeError), ("bool", True, TypeError), ("nan", math.nan, ValueError)],
)
scalar_rows(
    "clip_grad_norm_-error_if_nonfinite",
    clip_args,
    lambda o, v: pyopt.clip_grad_norm_(o["grads"], 1.0, error_if_nonfinite=v),
    "error_if_nonfinite",
    FLAG,
)
scalar_rows(
    "manual_seed-seed",
    dict,
    lambda o, v: pyopt.manual_seed(v),
    "seed",
    [
        *INT,
        ("2**64", 2**64, ValueError),
        ("below-2**63", -(2**63) - 1, ValueError),
        ("array", np.array([1]), TypeError),
    ],
)


def checkpoint_args() -> dict[str, Any]:
    """An existing good checkpoint, which a failed save must leave as it is."""
    folder = FILES / f"save-{next(_NAMES)}"
    folder.mkdir()
    path = folder / "model.pyopt"
    pyopt.save(path, {"w": np.arange(3.0)})
    return {"path": path}


def self_containing() -> dict[str, Any]:
    obj: dict[str, Any] = {}
    obj["a"] = obj
    return obj


for _kind, _obj, _match in (
    ("object-array", lambda: {"a": np.array([object()], dtype=object)}, "obj['a']"),
    ("set", lambda: {"a": {1, 2}}, "obj['a']"),
    ("function", lambda: {"a": len}, "obj['a']"),
    ("complex", lambda: {"a": 1j}, "obj['a']"),
    ("bytes", lambda: {"a": b"x"}, "obj['a']"),
):
    bad(
        f"save-obj-{_kind}",
        checkpoint_args,
        lambda o, m=_obj: pyopt.save(o["path"], m()),
        TypeError,
        _match,
    )
bad(
    "save-obj-contains-itself",
    checkpoint_args,
    lambda o: pyopt.save(o["path"], self_containing()),
    ValueError,
    "obj",
)
bad("save-path-None", checkpoint_args, lambda o: pyopt.save(None, {"a": 1}), TypeError, "path")


# --- nn layers -----------------------------------------------------------------------------


def layer_rows(
    layer: str,
    build: Callable[[], dict[str, Any]],
    key: str,
    method: str,
    shape: tuple[int, ...],
    **options: Any,
) -> None:
    """:func:`array_rows` of the layer ``objs[key]``'s ``forward(x)`` or ``backward(dy)``
    (``method``), whose valid argument is a float32 array of ``shape``."""
    name = "x" if method == "forward" else "dy"
    array_rows(
        f"{layer}.{method}-{name}",
        build,
        lambda o: f32(*shape, seed=5),
        lambda o, v: getattr(o[key], method)(v),
        name,
        **options,
    )


def trained_bn(training: bool = True) -> dict[str, Any]:
    """A BatchNorm1d(3) after one training forward and backward, in ``training`` mode."""
    bn = nn.BatchNorm1d(3, device="cpu")
    bn(f32(4, 3))
    bn.backward(f32(4, 3, seed=1))
    return {"bn": bn.train(training)}


for _training in (True, False):
    for _method in ("forward", "backward"):
        layer_rows(
            f"BatchNorm1d({'train' if _training else 'eval'})",
            lambda t=_training: trained_bn(t),
            "bn",
            _method,
            (4, 3),
            tied=True,
        )
for _stat in ("running_mean", "running_var"):
    for _kind, _make, _exc in UNWRITABLE:

        def _unwritable_stat(stat=_stat, make=_make):
            objs = trained_bn(True)
            setattr(objs["bn"], stat, make(getattr(objs["bn"], stat)))
            return objs

        bad(
            f"BatchNorm1d(train).forward-{_stat}-{_kind}",
            _unwritable_stat,
            lambda o: o["bn"](f32(4, 3)),
            _exc,
            _stat,
        )

BN_ARGS = {
    "num_features": [
        *INT,
        ("zero", 0, ValueError),
        ("negative", -1, ValueError),
        ("huge", 2**70, ValueError),
    ],
    "eps": [*REAL, ("zero", 0.0, ValueError), ("negative", -1.0, ValueError)],
    "momentum": [*REAL[1:], ("1.5", 1.5, ValueError)],  # None: a cumulative average
    "affine": FLAG,
    "track_running_stats": FLAG,
    "axis": [
        *INT,
        ("batch-axis", 0, ValueError),
        ("out-of-range", 5, ValueError),
        ("huge", 2**70, ValueError),
    ],
    "dtype": [
        ("int32", np.int32, TypeError),
        ("float16", np.float16, TypeError),
        ("bogus", "bogus", TypeError),
    ],
    "device": [("bogus", "tpu", ValueError)],
}
# BatchNorm2d and 3d share BatchNorm1d's constructor: their sizes and axes are rows enough.
for _cls, _args in (
    (nn.BatchNorm1d, BN_ARGS),
    (nn.BatchNorm2d, ["num_features", "axis"]),
    (nn.BatchNorm3d, ["num_features", "axis"]),
):
    for _arg in _args:
        _kinds = BN_ARGS[_arg]
        scalar_rows(
            f"{_cls.__name__}()-{_arg}",
            dict,
            lambda o, v, cls=_cls, a=_arg: cls(**{"num_features": 3, "device": "cpu", a: v}),
            _arg,
            _kinds,
        )
for _kind, _value, _exc in FLAG:
    # torch's type: "training mode is expected to be boolean" is a ValueError.
    bad(
        f"Module.train-mode-{_kind}",
        trained_bn,
        lambda o, v=_value: o["bn"].train(v),
        ValueError,
        "mode",
    )

LINEAR_ARGS = {
    "in_features": [*INT, ("negative", -1, ValueError), ("huge", 2**70, ValueError)],
    "out_features": [*INT, ("negative", -1, ValueError), ("huge", 2**70, ValueError)],
    "bias": FLAG,
    "dtype": BN_ARGS["dtype"],
    "device": BN_ARGS["device"],
    "seed": U64,
}
for _arg, _kinds in LINEAR_ARGS.items():
    scalar_rows(
        f"Linear()-{_arg}",
        dict,
        lambda o, v, a=_arg: nn.Linear(
            **{"in_features": 3, "out_features": 2, "device": "cpu", "seed": 0, a: v}
        ),
        _arg,
        _kinds,
    )


def linear_args() -> dict[str, Any]:
    lin = nn.Linear(3, 2, device="cpu", seed=0)
    lin(f32(4, 3))
    lin.backward(f32(4, 2, seed=1))
    return {"lin": lin}


layer_rows(
    "Linear",
    linear_args,
    "lin",
    "forward",
    (4, 3),
    # Leading axes are batch axes: only the last one is tied to the layer.
    kinds=[*NOT_ARRAYS, *BAD_DTYPES, *(k for k in MISMATCHED if k[0] != "rank+1")],
)
layer_rows("Linear", linear_args, "lin", "backward", (4, 2), tied=True)


def flat_net_args() -> dict[str, Any]:
    """A flattened Linear-ReLU-Linear net after a forward and backward (grads in one buffer)."""
    net = nn.Sequential(
        nn.Linear(3, 4, device="cpu", seed=0), nn.ReLU(), nn.Linear(4, 2, device="cpu", seed=1)
    )
    buf = net.flatten_parameters()
    net(f32(4, 3))
    net.backward(f32(4, 2, seed=1))
    return {"net": net, "buf": buf}


layer_rows("Sequential(flat)", flat_net_args, "net", "backward", (4, 2), tied=True)


def bn_net_args() -> dict[str, Any]:
    net = nn.Sequential(
        nn.BatchNorm1d(3, device="cpu"), nn.Linear(3, 2, device="cpu", seed=0), nn.Dropout(0.5, 1)
    )
    net(f32(4, 3))
    return {"net": net}


layer_rows("Sequential", bn_net_args, "net", "forward", (4, 3), tied=True)
bad("Sequential()-layers[0]-None", dict, lambda o: nn.Sequential(None), TypeError, "layers[0]")
bad(
    "Sequential.flatten_parameters-none",
    dict,
    lambda o: nn.Sequential(nn.ReLU()).flatten_parameters(),
    ValueError,
    "parameters",
)


def relu_args() -> dict[str, Any]:
    relu = nn.ReLU()
    relu(f32(4, 3))
    return {"relu": relu}


layer_rows("ReLU", relu_args, "relu", "forward", (4, 3))
layer_rows("ReLU", relu_args, "relu", "backward", (4, 3), tied=True)


def dropout_layer_args(training: bool = True) -> dict[str, Any]:
    drop = nn.Dropout(0.5, seed=1)
    drop(f32(4, 3))
    return {"drop": drop.train(training)}


for _training in (True, False):
    layer_rows(
        f"Dropout({'train' if _training else 'eval'})",
        lambda t=_training: dropout_layer_args(t),
        "drop",
        "forward",
        (4, 3),
    )
layer_rows("Dropout(train)", dropout_layer_args, "drop", "backward", (4, 3), tied=True)
scalar_rows("Dropout()-p", dict, lambda o, v: nn.Dropout(v), "p", [*REAL, ("1.5", 1.5, ValueError)])
scalar_rows("Dropout()-seed", dict, lambda o, v: nn.Dropout(0.5, seed=v), "seed", U64)


def ce_args() -> dict[str, Any]:
    loss = nn.CrossEntropyLoss()
    loss(f32(4, 3), np.array([0, 1, 2, 1]))
    return {"loss": loss, "target": np.array([0, 1, 2, 1])}


array_rows(
    "CrossEntropyLoss-logits",
    ce_args,
    lambda o: f32(4, 3, seed=5),
    lambda o, v: o["loss"](v, o["target"]),
    "logits",
)
bad(
    "CrossEntropyLoss-logits-0d",
    ce_args,
    lambda o: o["loss"](np.array(1.0, np.float32), o["target"]),
    ValueError,
    "logits",
)
for _kind, _target, _exc in (
    ("None", None, TypeError),
    ("list", [0, 1, 2, 1], TypeError),
    ("float", np.array([0.0, 1, 2, 1]), TypeError),
    ("bool", np.array([True, False, True, True]), TypeError),
    ("negative", np.array([-1, 1, 2, 1]), ValueError),
    ("out-of-range", np.array([0, 1, 3, 1]), ValueError),
    ("shape", np.array([0, 1]), ValueError),
    ("2d", np.zeros((4, 1), np.int64), ValueError),
    *([("torch-cpu", torch.tensor([0, 1, 2, 1]), TypeError)] if torch else []),
):
    bad(
        f"CrossEntropyLoss-target-{_kind}",
        ce_args,
        lambda o, t=_target: o["loss"](f32(4, 3, seed=5), t),
        _exc,
        "target",
    )


# --- state dicts (a bad LAST entry exposes half-loads) -------------------------------------

MODELS = {
    "BatchNorm1d": lambda: nn.BatchNorm1d(3, device="cpu"),
    "Linear": lambda: nn.Linear(3, 2, device="cpu", seed=0),
    "Sequential": lambda: nn.Sequential(
        nn.Linear(3, 4, device="cpu", seed=0),
        nn.ReLU(),
        nn.BatchNorm1d(4, device="cpu"),
        nn.Linear(4, 2, device="cpu", seed=1),
    ),
}


def model_args(name: str) -> dict[str, Any]:
    """A trained model and a state dict of a differently trained one (``good``)."""
    objs = {}
    for key, seed in (("model", 0), ("source", 1)):
        model = MODELS[name]()
        model(f32(4, 3, seed=seed))
        objs[key] = model
    objs["good"] = objs.pop("source").state_dict()
    return objs


for _model in MODELS:
    _last = [k for k in model_args(_model)["good"] if not k.endswith("num_batches_tracked")][-1]
    array_rows(
        f"{_model}.load_state_dict-{_last}",
        lambda m=_model: model_args(m),
        lambda o, k=_last: o["good"][k],
        lambda o, v, k=_last: o["model"].load_state_dict({**o["good"], k: v}),
        _last,
        kinds=BAD_VALUES,
    )
    for _kind, _edit, _match in (
        ("missing-key", lambda sd, k=_last: sd.pop(k), _last),
        ("unexpected-key", lambda sd: sd.__setitem__("zzz", np.ones(1)), "zzz"),
    ):

        def _edited(m=_model, edit=_edit):
            objs = model_args(m)
            edit(objs["good"])
            return objs

        bad(
            f"{_model}.load_state_dict-{_kind}",
            _edited,
            lambda o: o["model"].load_state_dict(o["good"]),
            ValueError,
            _match,
        )
    not_a_state_dict_rows(_model, lambda m=_model: model_args(m), "model")
for _kind, _value, _exc in (
    ("float", np.array(2.5), TypeError),
    ("negative", np.array(-1), ValueError),
    ("vector", np.array([1, 2]), ValueError),
    ("None", None, TypeError),
    ("str", "x", TypeError),
):
    bad(
        f"BatchNorm1d.load_state_dict-num_batches_tracked-{_kind}",
        lambda: model_args("BatchNorm1d"),
        lambda o, v=_value: o["model"].load_state_dict({**o["good"], "num_batches_tracked": v}),
        _exc,
        "num_batches_tracked",
    )


# --- optimizers ---------------------------------------------------------------------------

# class -> (constructor kwargs that use every state tensor, {hyperparameter: bad kinds})
_NONNEG = [*REAL, ("negative", -1.0, ValueError)]
_BETAS = [
    ("None", None, TypeError),
    ("float", 0.9, TypeError),
    ("triple", (0.9, 0.99, 0.9), TypeError),
    ("str", ("a", "b"), TypeError),
    ("nan", (math.nan, 0.9), ValueError),
    ("one", (1.0, 0.9), ValueError),
    ("negative", (0.9, -0.1), ValueError),
]
_ADAM = {
    "lr": _NONNEG,
    "betas": _BETAS,
    "eps": _NONNEG,
    "weight_decay": _NONNEG,
    "amsgrad": FLAG,
    "maximize": FLAG,
}
OPTIMIZERS = {
    "SGD": (
        optim.SGD,
        {"lr": 0.1, "momentum": 0.9},
        {
            "lr": _NONNEG,
            "momentum": _NONNEG,
            "dampening": _NONNEG,
            "weight_decay": _NONNEG,
            "nesterov": FLAG,
            "maximize": FLAG,
        },
    ),
    "Adam": (optim.Adam, {"lr": 0.1, "amsgrad": True}, _ADAM),
    "AdamW": (optim.AdamW, {"lr": 0.1}, _ADAM),
    "Adagrad": (
        optim.Adagrad,
        {"lr": 0.1},
        {
            "lr": _NONNEG,
            "lr_decay": _NONNEG,
            "weight_decay": _NONNEG,
            "initial_accumulator_value": _NONNEG,
            "eps": _NONNEG,
            "maximize": FLAG,
        },
    ),
    "RMSprop": (
        optim.RMSprop,
        {"lr": 0.1, "momentum": 0.5, "centered": True},
        {
            "lr": _NONNEG,
            "alpha": _NONNEG,
            "eps": _NONNEG,
            "weight_decay": _NONNEG,
            "momentum": _NONNEG,
            "centered": FLAG,
            "maximize": FLAG,
        },
    ),
    "Adadelta": (
        optim.Adadelta,
        {"lr": 1.0},
        {
            "lr": _NONNEG,
            "rho": [*REAL, ("1.5", 1.5, ValueError)],
            "eps": _NONNEG,
            "weight_decay": _NONNEG,
            "maximize": FLAG,
        },
    ),
}


def optimizer_args(name: str, steps: int = 1) -> dict[str, Any]:
    """An optimizer over two params after ``steps`` steps (so its state exists)."""
    cls, kwargs, _ = OPTIMIZERS[name]
    params = [f32(5), f32(5, seed=1)]
    opt = cls(params, **kwargs)
    for step in range(steps):
        opt.step([f32(5, seed=2 + step), f32(5, seed=9 + step)])
    return {"opt": opt, "params": params}


def edited_optimizer(name: str, key: str, value: Any) -> dict[str, Any]:
    """An optimizer over two groups, stepped once, whose LAST group's ``key`` was then set to
    ``value`` (as a scheduler does): a step must not update the first group and then fail."""
    cls, kwargs, _ = OPTIMIZERS[name]
    params = [f32(5), f32(5, seed=1)]
    opt = cls([{"params": [params[0]]}, {"params": [params[1]]}], **kwargs)
    opt.step([f32(5, seed=2), f32(5, seed=3)])
    opt.param_groups[1][key] = value
    return {"opt": opt, "params": params}


for _name, (_cls, _kwargs, _hps) in OPTIMIZERS.items():

    def _build(n=_name):
        return optimizer_args(n)

    array_rows(
        f"{_name}()-params[1]",
        lambda: {"params": [f32(5), f32(5, seed=1)]},
        lambda o: o["params"][1],
        lambda o, v, cls=_cls, kw=_kwargs: cls(with_last(o["params"], v), **kw),
        "params",
        inplace=True,
    )
    for _kind, _params, _exc in (
        ("None", lambda: None, TypeError),
        ("str", lambda: "abc", TypeError),
        ("int", lambda: 3, TypeError),
        ("empty", lambda: [], ValueError),
        ("same-array-twice", lambda: (lambda a: [a, a])(f32(5)), ValueError),
        ("dict-int-key", lambda: {1: f32(5)}, TypeError),
        (
            "named-and-unnamed-groups",
            lambda: [{"params": {"w": f32(5)}}, {"params": [f32(3)]}],
            ValueError,
        ),
        ("group-without-params", lambda: [{"lr": 0.1}], ValueError),
    ):
        bad(
            f"{_name}()-params-{_kind}",
            lambda p=_params: {"params": p()},
            lambda o, cls=_cls, kw=_kwargs: cls(o["params"], **kw),
            _exc,
            "param",
        )
    for _hp, _kinds in _hps.items():
        scalar_rows(
            f"{_name}()-{_hp}",
            lambda: {"params": [f32(5), f32(5, seed=1)]},
            lambda o, v, cls=_cls, kw=_kwargs, h=_hp: cls(o["params"], **{**kw, h: v}),
            _hp,
            _kinds,
        )
        # A hyperparameter set in a later param group is checked like a constructor one.
        _value, _exc = ("0.1", TypeError) if _hp != "betas" else ((1.0, 0.9), ValueError)
        bad(
            f"{_name}()-param_groups[1]-{_hp}",
            lambda: {"params": [f32(5), f32(5, seed=1)]},
            lambda o, cls=_cls, kw=_kwargs, h=_hp, v=_value: cls(
                [{"params": [o["params"][0]]}, {"params": [o["params"][1]], h: v}], **kw
            ),
            _exc,
            _hp,
        )
        # Scheduler-set values are checked at the step: types always, and any value no step
        # can use (β = 1 divides by zero).
        for _kind, _bad_value, _exc in _kinds:
            if _exc is TypeError or _kind in ("nan", "one"):
                bad(
                    f"{_name}.param_groups-edit-{_hp}-{_kind}",
                    lambda n=_name, h=_hp, v=_bad_value: edited_optimizer(n, h, v),
                    lambda o: o["opt"].step([f32(5, seed=7), f32(5, seed=8)]),
                    _exc,
                    _hp,
                )
    array_rows(
        f"{_name}.step-grads[1]",
        _build,
        lambda o: f32(5, seed=4),
        lambda o, v: o["opt"].step([f32(5, seed=3), v]),
        "grads[1]",
        tied=True,
        optional=True,  # a param without a grad
    )
    for _kind, _grads, _exc in (
        ("None", lambda: None, TypeError),
        ("str", lambda: "abc", TypeError),
        ("array", lambda: f32(5), TypeError),
        ("short", lambda: [f32(5)], ValueError),
        ("dict-for-unnamed-params", lambda: {"0": f32(5), "1": f32(5)}, TypeError),
    ):
        bad(
            f"{_name}.step-grads-{_kind}",
            _build,
            lambda o, g=_grads: o["opt"].step(g()),
            _exc,
            "grads",
        )
    for _arg, _kinds in (
        ("max_grad_norm", [*REAL[1:], ("negative", -1.0, ValueError)]),
        ("grad_scale", [*REAL[1:], ("zero", 0.0, ValueError), ("inf", math.inf, ValueError)]),
        ("skip_if_nonfinite", FLAG[:3] + FLAG[4:]),  # None: decided by the other options
    ):
        scalar_rows(
            f"{_name}.step-{_arg}",
            _build,
            lambda o, v, a=_arg: o["opt"].step([f32(5, seed=3), f32(5, seed=4)], **{a: v}),
            _arg,
            _kinds,
        )


def saved_state(name: str) -> dict[str, Any]:
    """An optimizer after one step and the state dict of the same setup after three."""
    objs = optimizer_args(name, steps=1)
    objs["good"] = optimizer_args(name, steps=3)["opt"].state_dict()
    return objs


def load_edited(o: dict[str, Any]) -> None:
    o["opt"].load_state_dict(o["good"])


def _state_edits(last_state: str) -> list[tuple[str, Callable[[dict], None], type, str]]:
    """(kind, edit of a good state dict, exception, name) rows for Optimizer.load_state_dict."""

    def setter(*path_and_value):
        *path, key, value = path_and_value

        def edit(sd):
            for part in path:
                sd = sd[part]
            sd[key] = value

        return edit

    return [
        ("state-list", setter("state", []), TypeError, "state"),
        ("state-None", setter("state", None), TypeError, "state"),
        ("param_groups-None", setter("param_groups", None), TypeError, "param_groups"),
        ("param_groups[0]-list", setter("param_groups", 0, [1]), TypeError, "param_groups"),
        ("params-None", setter("param_groups", 0, "params", None), TypeError, "params"),
        ("lr-str", setter("param_groups", 0, "lr", "x"), TypeError, "lr"),
        ("lr-nan", setter("param_groups", 0, "lr", math.nan), ValueError, "lr"),
        ("maximize-str", setter("param_groups", 0, "maximize", "False"), TypeError, "maximize"),
        (
            "two-groups",
            lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
            ValueError,
            "param groups",
        ),
        ("state[1]-list", setter("state", 1, [1]), TypeError, "state[1]"),
        ("state[1]-step-float", setter("state", 1, "step", 2.5), TypeError, "step"),
        ("state[1]-step-negative", setter("state", 1, "step", -1), ValueError, "step"),
        ("state[1]-no-step", lambda sd: sd["state"][1].pop("step"), ValueError, "step"),
        *[
            (
                f"state[1]-{last_state}-{kind}",
                lambda sd, make=make: sd["state"][1].__setitem__(
                    last_state, make(sd["state"][1][last_state])
                ),
                exc,
                last_state,
            )
            for kind, make, exc in BAD_VALUES
        ],
        ("state-key-99", lambda sd: sd["state"].__setitem__(99, sd["state"][1]), ValueError, "99"),
    ]


for _name in OPTIMIZERS:
    _last_state = [k for k in saved_state(_name)["good"]["state"][1] if k != "step"][-1]
    for _kind, _edit, _exc, _match in _state_edits(_last_state):
        if _name == "SGD" and _kind == "state[1]-no-step":
            continue  # torch's SGD saves no step: a momentum buffer without one loads

        def _edited_state(n=_name, edit=_edit):
            objs = saved_state(n)
            edit(objs["good"])
            return objs

        bad(f"{_name}.load_state_dict-{_kind}", _edited_state, load_edited, _exc, _match)
    not_a_state_dict_rows(_name, lambda n=_name: saved_state(n), "opt")


# --- ParamBuffer ---------------------------------------------------------------------------

for _kind, _shapes, _exc, _match in (
    ("None", None, TypeError, "shapes"),
    ("str", "abc", TypeError, "shapes"),
    ("int", 3, TypeError, "shapes"),
    ("empty", {}, ValueError, "shapes"),
    ("int-key", {1: (2,)}, TypeError, "shapes"),
    ("float-extent", {"weight": (2.5,)}, TypeError, "weight"),
    ("integral-float-extent", {"weight": (2.0,)}, TypeError, "weight"),
    ("bool-extent", {"weight": (True, 2)}, TypeError, "weight"),
    ("str-extent", {"weight": ("2",)}, TypeError, "weight"),
    ("None-extent", {"weight": (None,)}, TypeError, "weight"),
    ("nested-extent", {"weight": ((2, 3),)}, TypeError, "weight"),
    ("float-shape", {"weight": 2.5}, TypeError, "weight"),
    ("negative-extent", {"weight": (-1,)}, ValueError, "weight"),
    ("huge-extent", {"weight": (2**62,)}, ValueError, "weight"),
):
    bad(
        f"ParamBuffer()-shapes-{_kind}",
        dict,
        lambda o, s=_shapes: optim.ParamBuffer(s, device="cpu"),
        _exc,
        _match,
    )
for _arg in ("dtype", "device"):
    scalar_rows(
        f"ParamBuffer()-{_arg}",
        dict,
        lambda o, v, a=_arg: optim.ParamBuffer({"w": (2,)}, **{"device": "cpu", a: v}),
        _arg,
        BN_ARGS[_arg],
    )


def buffer_args() -> dict[str, Any]:
    buf = optim.ParamBuffer({"a": (2, 3), "b": (3,)}, device="cpu")
    buf.data[:] = np.arange(9)
    buf.grad[:] = -np.arange(9)
    return {"buf": buf}


array_rows(
    "ParamBuffer.load-b",
    buffer_args,
    lambda o: np.ones(3),
    lambda o, v: o["buf"].load({"a": np.ones((2, 3)), "b": v}),
    "b",
    kinds=BAD_VALUES,
)
for _kind, _values, _exc, _match in (
    ("None", None, TypeError, "values"),
    ("list", [np.ones((2, 3))], TypeError, "values"),
    ("unknown-key", {"a": np.ones((2, 3)), "zz": np.ones(1)}, ValueError, "zz"),
):
    bad(
        f"ParamBuffer.load-{_kind}",
        buffer_args,
        lambda o, v=_values: o["buf"].load(v),
        _exc,
        _match,
    )


# --- the bad-input test --------------------------------------------------------------------


def check_bad(row: Row) -> None:
    objs = row.build()
    before = snapshot(objs), _generator_key()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a call that warns and then raises is judged by its error
        with pytest.raises((TypeError, ValueError)) as info:
            row.call(objs)
    assert type(info.value) is row.exc or isinstance(info.value, row.exc), (
        f"raised {type(info.value).__name__} ({info.value}), expected {row.exc.__name__}"
    )
    assert row.match in str(info.value), f"the message does not name {row.match!r}: {info.value}"
    assert_same(before, (snapshot(objs), _generator_key()))


@pytest.mark.parametrize("row", BAD)
def test_bad_input_raises_naming_it_and_changes_nothing(row):
    check_bad(row)


def test_table_covers_every_public_name():
    """Every public function and class (schedulers and ``load`` are tested elsewhere) has
    rows in the table: a new public name needs its bad-input rows."""
    ids = " ".join(p.id for p in BAD)
    public = [
        *F.__all__,
        *(f"init.{n}" for n in init.__all__ if n != "calculate_gain"),
        "init.calculate_gain",
        *(n for n in nn.__all__ if n not in ("Module", "BatchNorm")),
        "Module.train",
        *(n for n in optim.__all__ if n not in ("Optimizer", "StepResult", "lr_scheduler")),
        "clip_grad_norm_",
        "clip_grad_value_",
        "manual_seed",
        "save",
    ]
    missing = [name for name in public if name not in ids]
    assert not missing, f"no bad-input rows for {missing}"


# --- inputs that must work ------------------------------------------------------------------


def assert_arrays_equal(actual: Any, expected: Any) -> None:
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def good_batch_norm_views():
    """Strided and negative-stride x, weight, bias and running statistics (updated in place
    through the view) give the contiguous call's results."""
    args = bn_args(True)
    ref = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    views = {
        "x": strided(args["x"]),
        "weight": reversed_view(args["weight"]),
        "bias": strided(args["bias"]),
        "running_mean": reversed_view(args["running_mean"]),
        "running_var": strided(args["running_var"]),
    }
    got = F.batch_norm(views.pop("x"), **views, training=True)
    want = F.batch_norm(ref.pop("x"), **{k: ref[k] for k in views}, training=True)
    assert_arrays_equal(got, want)
    assert_arrays_equal(
        [views["running_mean"], views["running_var"]], [ref["running_mean"], ref["running_var"]]
    )


def good_batch_norm_eval_unwritable():
    """In eval nothing is written: read-only and memory-mapped statistics and params work."""
    args = bn_args(False)
    want = call_bn(args)
    for make in (lambda a: read_only(a.copy()), memory_mapped):
        unwritable = {k: make(args[k]) for k in ("weight", "bias", "running_mean", "running_var")}
        assert_arrays_equal(call_bn({**args, **unwritable}), want)


def good_batch_norm_numpy_scalars():
    """NumPy bools, integers and floats (exactly representable: the same values)."""
    args, ref = bn_args(True), bn_args(True)
    want = call_bn(ref, eps=2.0**-16, momentum=0.5)
    got = call_bn(
        args,
        training=np.bool_(True),
        axis=np.int64(1),
        eps=np.float32(2.0**-16),
        momentum=np.float32(0.5),
    )
    assert_arrays_equal(got, want)
    assert_arrays_equal(
        [args["running_mean"], args["running_var"]], [ref["running_mean"], ref["running_var"]]
    )


def good_batch_norm_empty_batch():
    """torch accepts a size-0 batch in training: an empty output, statistics unchanged."""
    args = bn_args(True)
    y, _, _ = call_bn(args, x=np.zeros((0, 3), np.float32))
    assert y.shape == (0, 3)
    assert_arrays_equal(
        [args["running_mean"], args["running_var"]],
        [np.zeros(3, np.float32), np.ones(3, np.float32)],
    )


def good_batch_norm_backward_views():
    args = bn_backward_args()
    want = call_bn_backward(args)
    got = call_bn_backward(
        args,
        dy=strided(args["dy"]),
        x=reversed_view(args["x"]),
        weight=strided(args["weight"]),
        training=np.bool_(True),
    )
    assert_arrays_equal(got, want)


def good_dropout_views_and_scalars():
    x = f32(4, 5)
    want = F.dropout(x, 0.25, seed=3, offset=2)
    assert_arrays_equal(
        [F.dropout(strided(x), np.float32(0.25), seed=np.uint64(3), offset=np.int64(2))], [want]
    )
    assert F.dropout(x, 0.25, training=np.bool_(False), seed=3) is x
    assert F.dropout(np.zeros((0, 5), np.float32), 0.5, seed=1).shape == (0, 5)
    assert F.dropout(np.array(2.0, np.float32), 0.0, seed=1).shape == ()  # torch: 0-d works
    assert_arrays_equal([F.dropout_backward(reversed_view(x), 0.25, seed=3, offset=2)], [want])


def good_init_views():
    """A strided view is filled like a contiguous array with the same seed; the gaps stay."""
    for name, (fn, _) in INITS.items():
        seeded = name in SEEDED
        want = fn(np.zeros((4, 3), np.float32), **REQUIRED[name], **({"seed": 5} if seeded else {}))
        wide = np.full((4, 6), 7.0, np.float32)
        got = fn(wide[:, ::2], **REQUIRED[name], **({"seed": np.int64(5)} if seeded else {}))
        np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(wide[:, 1::2], 7.0, err_msg=name)


def good_init_zero_elements():
    """Zero-element tensors are a no-op for every init (kaiming's warning, as torch's)."""
    for name, (fn, _) in INITS.items():
        for shape in ((4, 0), (0, 4), (0, 0)):
            tensor = np.zeros(shape, np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert fn(tensor, **REQUIRED[name]) is tensor, name
    # The variance-scaling inits that divide by one fan agree with torch's kaiming warning.
    for fn in (init.kaiming_uniform_, init.kaiming_normal_, init.lecun_normal_):
        with pytest.warns(UserWarning, match="zero-element"):
            fn(np.zeros((4, 0), np.float32))


def good_init_nan_constant():
    assert np.isnan(init.constant_(np.zeros(3, np.float32), math.nan)).all()


def good_clip_iterables():
    """Generators, dicts, single arrays, views, mixed dtypes, size-0 and None entries (as
    torch's clip over ``model.parameters()``)."""
    grads = [f32(5) * 10, f32(7, seed=1) * 10]
    ref = [g.copy() for g in grads]
    want = pyopt.clip_grad_norm_(ref, 1.0)
    assert pyopt.clip_grad_norm_((g for g in grads), 1.0) == want
    assert_arrays_equal(grads, ref)
    views = [strided(f32(5) * 10), reversed_view(f32(7, seed=1) * 10)]
    assert pyopt.clip_grad_norm_([views[0], None, views[1]], 1.0) == want
    assert_arrays_equal(views, ref)
    d = {"a": f32(5) * 10, "b": f32(7, seed=1) * 10}
    assert pyopt.clip_grad_norm_(d, 1.0) == want
    mixed = [f32(5) * 10, (f32(7, seed=1) * 10).astype(np.float64), np.zeros(0, np.float32)]
    np.testing.assert_allclose(pyopt.clip_grad_norm_(mixed, 1.0), want, rtol=1e-6)
    one = f32(5) * 10
    pyopt.clip_grad_value_((g for g in [one]), np.float32(0.5))
    assert np.abs(one).max() <= 0.5
    scalar = np.array(3.0, np.float32)
    pyopt.clip_grad_value_(scalar, 1)
    assert scalar == 1.0


def _stepped(params: Any, name: str = "Adam", **kwargs: Any) -> list[np.ndarray]:
    cls, defaults, _ = OPTIMIZERS[name]
    opt = cls(params, **{**defaults, **kwargs})
    n = sum(len(g["params"]) for g in opt.param_groups)
    for step in range(2):
        opt.step([f32(5, seed=2 + step + 10 * k) for k in range(n)])
    return [p for g in opt.param_groups for p in g["params"]]


def good_optimizer_params_forms():
    """A generator (``model.parameters()``), a single array as a group's params, dicts,
    numpy scalars and bools: the same steps as the plain list. A single array as the
    params themselves is torch's TypeError."""
    for name in OPTIMIZERS:
        want = _stepped([f32(5), f32(5, seed=1)], name)
        assert_arrays_equal(_stepped((p for p in [f32(5), f32(5, seed=1)]), name), want)
        assert_arrays_equal(_stepped({"a": f32(5), "b": f32(5, seed=1)}, name), want)
        groups = [{"params": f32(5)}, {"params": (p for p in [f32(5, seed=1)])}]
        assert_arrays_equal(_stepped(groups, name), want)
        with pytest.raises(TypeError, match=r"pass \[params\]"):  # torch: TypeError too
            _stepped(f32(5), name)
        assert_arrays_equal(
            _stepped([f32(5), f32(5, seed=1)], name, lr=np.float32(0.1), maximize=np.bool_(False)),
            _stepped([f32(5), f32(5, seed=1)], name, lr=float(np.float32(0.1))),
        )


def good_optimizer_views():
    """Strided, negative-stride and 0-d params are updated in place like contiguous ones."""
    for name in OPTIMIZERS:
        want = _stepped([f32(5), f32(5, seed=1)], name)
        views = [strided(f32(5)), reversed_view(f32(5, seed=1))]
        _stepped(views, name)
        assert_arrays_equal(views, want)
        scalar = np.array(1.0, np.float32)
        cls, kwargs, _ = OPTIMIZERS[name]
        cls([scalar], **kwargs).step([np.array(0.5, np.float32)])
        assert scalar.shape == () and scalar != 1.0


def good_step_options():
    for name in OPTIMIZERS:
        objs = optimizer_args(name)
        assert (
            not objs["opt"]
            .step([f32(5), strided(f32(5, seed=1))], skip_if_nonfinite=np.bool_(True))
            .skipped
        )


def good_functional_views():
    for rule in RULES:
        plain = rule_args(rule)
        call_rule(rule, plain)
        objs = rule_args(rule)
        objs["params"] = [strided(p) for p in objs["params"]]
        objs["grads"] = [reversed_view(g) for g in objs["grads"]]
        call_rule(rule, objs, lr=np.float32(0.1))
        np.testing.assert_allclose(
            np.array(objs["params"]), np.array(plain["params"]), rtol=1e-6, err_msg=rule
        )


def good_layer_numpy_scalars_and_default_dtype():
    """NumPy integers for sizes; ``dtype=None`` is torch's default dtype (float32)."""
    bn = nn.BatchNorm1d(np.int64(3), dtype=None, device="cpu").train(np.bool_(True))
    assert bn.weight.dtype == np.float32 and bn.num_features == 3 and bn.training is True
    lin = nn.Linear(np.int64(3), np.int32(2), dtype=None, device="cpu", seed=np.uint64(0))
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (2, 3)
    assert nn.Dropout(np.float32(0.5), seed=np.int64(1)).p == 0.5
    buf = optim.ParamBuffer({"w": (np.int64(2), 3), "b": np.int64(3)}, dtype=None, device="cpu")
    assert buf.dtype == np.float32 and buf.size == 9


def good_layer_views_and_empty():
    x = f32(4, 3)
    lin = nn.Linear(3, 2, device="cpu", seed=0)
    assert_arrays_equal([lin(strided(x))], [lin(x.copy())])
    assert lin(np.zeros((0, 3), np.float32)).shape == (0, 2)
    bn = nn.BatchNorm1d(3, device="cpu").eval()
    bn.running_mean, bn.running_var = read_only(f32(3)), memory_mapped(np.ones(3, np.float32))
    assert_arrays_equal(
        [bn(reversed_view(x))],
        [
            F.batch_norm(
                x,
                weight=bn.weight,
                bias=bn.bias,
                running_mean=f32(3),
                running_var=np.ones(3, np.float32),
                training=False,
            )[0]
        ],
    )


def good_cross_entropy():
    loss = nn.CrossEntropyLoss()
    logits, target = f32(4, 3), np.array([0, 1, 2, 1])
    want = loss(logits, target)
    assert loss(strided(logits), target.astype(np.uint8)) == want
    assert math.isnan(loss(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)))  # torch: nan


def good_load_forms():
    """torch tensors and float64 values load into float32 models (cast, as torch does);
    lists and views into a ParamBuffer."""
    for name in MODELS:
        objs = model_args(name)
        values = {
            k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v
            for k, v in objs["good"].items()
        }
        objs["model"].load_state_dict(values)
        assert_arrays_equal(objs["model"].state_dict().values(), objs["good"].values())
        if torch is not None:
            model = MODELS[name]()
            model.load_state_dict(
                {k: torch.from_numpy(np.asarray(v).copy()) for k, v in objs["good"].items()}
            )
            assert_arrays_equal(model.state_dict().values(), objs["good"].values())
    buf = buffer_args()["buf"]
    buf.load({"a": [[1.0, 2, 3], [4, 5, 6]], "b": strided(np.arange(3.0))})
    assert buf.data.tolist() == [1, 2, 3, 4, 5, 6, 0, 1, 2]


def good_manual_seed():
    """NumPy integers seed like ints; negative seeds wrap modulo 2**64, as in torch."""
    draws = []
    for seed in (5, np.int64(5), -1, 2**64 - 1):
        pyopt.manual_seed(seed)
        draws.append(init.normal_(np.zeros(4)))
    assert_arrays_equal(draws[1:2], draws[:1])
    assert_arrays_equal(draws[3:], draws[2:3])


GOOD = [
    good_batch_norm_views,
    good_batch_norm_eval_unwritable,
    good_batch_norm_numpy_scalars,
    good_batch_norm_empty_batch,
    good_batch_norm_backward_views,
    good_dropout_views_and_scalars,
    good_init_views,
    good_init_zero_elements,
    good_init_nan_constant,
    good_clip_iterables,
    good_optimizer_params_forms,
    good_optimizer_views,
    good_step_options,
    good_functional_views,
    good_layer_numpy_scalars_and_default_dtype,
    good_layer_views_and_empty,
    good_cross_entropy,
    good_load_forms,
    good_manual_seed,
]


@pytest.mark.parametrize("check", GOOD, ids=[f.__name__[5:] for f in GOOD])
def test_inputs_torch_accepts_work(check):
    state = _random._GLOBAL.seed, _random._GLOBAL.offset, _random._GLOBAL.derived
    try:
        check()
    finally:  # leave the global generator as the other tests expect it
        _random._GLOBAL.seed, _random._GLOBAL.offset, _random._GLOBAL.derived = state


# --- host and device arrays mixed (CUDA backend: GPU or simulator) ---------------------------


def _device(arr: np.ndarray) -> Any:
    return to_backend(arr, "cuda")


MIXED = {
    "batch_norm-weight-host": (
        lambda: {"x": _device(f32(4, 3)), "weight": f32(3)},
        lambda o: F.batch_norm(o["x"], weight=o["weight"]),
        "weight",
    ),
    "adam_-grads[0]-host": (
        lambda: {
            "p": [_device(f32(5))],
            "m": [_device(np.zeros(5, np.float32))],
            "v": [_device(np.zeros(5, np.float32))],
            "steps": np.zeros(1, np.int64),
        },
        lambda o: F.adam_(o["p"], [f32(5)], o["m"], o["v"], None, o["steps"]),
        "grads[0]",
    ),
    "clip_grad_norm_-grads[1]-host": (
        lambda: {"grads": [_device(f32(5)), f32(5)]},
        lambda o: pyopt.clip_grad_norm_(o["grads"], 1.0),
        "grads[1]",
    ),
    "SGD.step-grads[0]-host": (
        lambda: (lambda p: {"p": p, "opt": optim.SGD(p, lr=0.1)})([_device(f32(5))]),
        lambda o: o["opt"].step([f32(5)]),
        "grads[0]",
    ),
    "BatchNorm1d(cpu).forward-x-device": (
        lambda: {"bn": nn.BatchNorm1d(3, device="cpu")},
        lambda o: o["bn"](_device(f32(4, 3))),
        "x",
    ),
    "init.uniform_-tensor-device-strided": (
        lambda: {"t": _device(f32(4, 6))},
        lambda o: init.uniform_(o["t"][:, ::2]),
        "tensor",
    ),
}


@pytest.mark.sim
@pytest.mark.parametrize("case", list(MIXED), ids=list(MIXED))
def test_host_and_device_arrays_mixed(cuda_backend, case):
    build, call, name = MIXED[case]
    exc = ValueError if case.endswith("strided") else TypeError
    check_bad(Row(build, call, exc, name))
