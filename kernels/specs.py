"""One spec per optimizer rule: what each backend builds its fused update kernel from.

A :class:`RuleSpec` names a rule of ``kernels/rules.py`` and says what surrounds its
math: the state tensors it updates (and, for a state a flag turns off, when it is read
and written), its scalar arguments, and its per-row flags. From that, ``kernels/cpu`` and
``kernels/cuda`` each generate the update kernel with one scaffold of their own
(:mod:`pyopt.kernels._codegen`), the PTX gate gets its rows and the kernel tests their
cases. Adding a rule is one function in ``rules.py`` and one spec here.

The kernels step a *segment table* (torch's ``multi_tensor_apply``, Apex's
``TensorListMetadata``): any number of separately allocated tensors of one dtype, each a
row of ``segments`` = ``(scalar row, address of the param, of the grad, of each state)``,
with ``offsets`` their start in the concatenated element space. Tensors of several param
groups and step counts share one call: each segment names the row of ``scalars``
(``(rows, len(spec.scalars))`` in the param dtype) and ``flags`` (``(rows,
len(spec.flags))`` uint8) it is updated with. A state a segment's flags leave unused has
address 0 and is never touched.

A :class:`Storage` says how a kernel variant holds its tensors: float32/float64 throughout
(the default, one kernel typed by the scalars), or float16/bfloat16 params and grads
(uint16 bits, computed in float32) with an optional float32 master copy, bfloat16 state,
and stochastic rounding of the params. Each rule's math is the same in every variant; the
loads convert to float32 and the stores round, with the conversions of ``rules.py``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np

from pyopt.kernels import rules

# Rules the update rules call; compiled first and bound into each rule that names them.
HELPERS = ("lerp", "decayed_grad")


@dataclass(frozen=True)
class State:
    """A state tensor of a rule, with when the kernel reads and writes it: Python boolean
    expressions over the spec's flags ("True": always)."""

    name: str
    read: str = "True"
    write: str = "True"


@dataclass(frozen=True)
class RuleSpec:
    """An update rule ``rules.<name>(p, g, *states, *scalars, *rule_flags)`` returning the
    new ``(p, *states)``.

    Attributes:
        name: the rule's function in ``kernels/rules.py``.
        states: its state tensors, in argument order.
        scalars: its scalar arguments, in argument order (cast to the param dtype).
        flags: the per-row bools the kernels receive, in column order of ``flags``.
        rule_flags: those of ``flags`` the rule takes as its last arguments, in order.
    """

    name: str
    states: tuple[State, ...]
    scalars: tuple[str, ...]
    flags: tuple[str, ...] = ()
    rule_flags: tuple[str, ...] = ()

    @property
    def rule(self) -> types.FunctionType:
        return getattr(rules, self.name)

    @property
    def columns(self) -> tuple[str, ...]:
        """The tensors of a segment, in table order: param, grad, then the states."""
        return ("param", "grad", *(s.name for s in self.states))

    @property
    def access_flags(self) -> tuple[str, ...]:
        """The flags that decide which state is read or written: the CPU kernel branches
        on them once per segment and compiles each branch with them constant."""
        used = " ".join(f"{s.read} {s.write}" for s in self.states).split()
        return tuple(f for f in self.flags if f in used)

    def uses(self, state: State, access: str, flags: dict[str, bool]) -> bool:
        """Whether ``state`` is read (``access="read"``) or written under ``flags``."""
        return bool(eval(getattr(state, access), {}, dict(flags)))

    def bytes_per_element(self, itemsize: int, **flags: bool) -> int:
        """Minimum memory traffic of one element's float32/float64 update under ``flags``
        (:meth:`Storage.bytes_per_element` of the default storage)."""
        return DEFAULT.bytes_per_element(self, itemsize, **flags)


ADAM = RuleSpec(
    "adam",
    (State("exp_avg"), State("exp_avg_sq"), State("max_exp_avg_sq", "amsgrad", "amsgrad")),
    (
        "grad_mult",
        "param_mult",
        "weight_decay",
        "beta1_weight",
        "beta2",
        "one_minus_beta2",
        "bias_correction2_sqrt",
        "eps",
        "neg_step_size",
    ),
    flags=("amsgrad",),
    rule_flags=("amsgrad",),
)
SGD = RuleSpec(
    "sgd",
    # The buffer's first step only writes it (b ← g); no momentum, no buffer.
    (State("momentum_buffer", "has_buffer and not first", "has_buffer"),),
    ("grad_mult", "weight_decay", "momentum", "one_minus_dampening", "neg_lr"),
    flags=("has_buffer", "first", "nesterov"),
    rule_flags=("first", "nesterov"),
)
ADAGRAD = RuleSpec(
    "adagrad", (State("state_sum"),), ("grad_mult", "weight_decay", "eps", "neg_clr")
)
RMSPROP = RuleSpec(
    "rmsprop",
    (
        State("square_avg"),
        State("grad_avg", "centered", "centered"),
        State("momentum_buffer", "has_buffer", "has_buffer"),
    ),
    ("grad_mult", "weight_decay", "alpha", "one_minus_alpha", "eps", "momentum", "neg_lr"),
    flags=("centered", "has_buffer"),
    rule_flags=("centered",),
)
ADADELTA = RuleSpec(
    "adadelta",
    (State("square_avg"), State("acc_delta")),
    ("grad_mult", "weight_decay", "rho", "one_minus_rho", "eps", "neg_lr"),
)

SPECS: dict[str, RuleSpec] = {s.name: s for s in (ADAM, SGD, ADAGRAD, RMSPROP, ADADELTA)}

SIXTEEN_BIT = ("float16", "bfloat16")


@dataclass(frozen=True)
class Storage:
    """How one kernel variant stores a segment's tensors.

    Attributes:
        param: "float16" or "bfloat16": params and grads are 16-bit (uint16 bits), the
            scalars float32; None: params, grads and scalars share one float type (float32
            or float64), which types the kernel.
        state: "bfloat16": every state tensor is bfloat16 (uint16 bits) with float32 (or
            16-bit) params; None: the state is in the compute type (float32 for 16-bit
            params).
        master: a float32 master copy of each param, the table's column after the states:
            the rule updates it, and the param is written as its rounding.
        stochastic: bfloat16 params without a master are rounded stochastically; the
            table's last three columns are each segment's Philox seed and offset and the
            index its first element has in that stream.
    """

    param: str | None = None
    state: str | None = None
    master: bool = False
    stochastic: bool = False

    def __post_init__(self) -> None:
        if self.param not in (None, *SIXTEEN_BIT) or self.state not in (None, "bfloat16"):
            raise ValueError(f"no kernel variant stores {self}")
        if self.master and self.param is None:
            raise ValueError("a master copy is for 16-bit params")
        if self.stochastic and (self.param != "bfloat16" or self.master):
            raise ValueError("stochastic rounding is for bfloat16 params without a master")

    @property
    def suffix(self) -> str:
        """The variant's part of its kernel name: "" for the default."""
        parts = [self.param or "", f"state_{self.state}" if self.state else ""]
        parts += ["master" if self.master else "", "stochastic" if self.stochastic else ""]
        return "".join(f"_{p}" for p in parts if p)

    def columns(self, spec: RuleSpec) -> tuple[str, ...]:
        """The tensors of a segment, in table order: ``spec.columns``, then the master."""
        return (*spec.columns, *(("master",) if self.master else ()))

    def formats(self, spec: RuleSpec) -> tuple[str | None, ...]:
        """The stored format of each of :meth:`columns`: "float16", "bfloat16", "float32",
        or None for the scalars' own type."""
        states = (self.state or ("float32" if self.param else None),) * len(spec.states)
        return (self.param, self.param, *states, *(("float32",) if self.master else ()))

    def extra(self) -> tuple[str, ...]:
        """The int64 columns after the addresses: the stochastic rounding's stream."""
        return ("seed", "offset", "start") if self.stochastic else ()

    def bytes_per_element(self, spec: RuleSpec, itemsize: int, **flags: bool) -> int:
        """Minimum memory traffic of one element's update under ``flags``: the param read
        (unless a master is) and written, the grad read, each state and the master read
        and written (``itemsize`` is that of float32/float64 in the default storage)."""
        sizes = {"float16": 2, "bfloat16": 2, "float32": 4, None: itemsize}
        formats = dict(zip(self.columns(spec), self.formats(spec), strict=True))
        values = {f: bool(flags.get(f, False)) for f in spec.flags}
        moved = sizes[formats["grad"]] + sizes[formats["param"]] * (1 if self.master else 2)
        for state in spec.states:
            uses = spec.uses(state, "read", values) + spec.uses(state, "write", values)
            moved += uses * sizes[formats[state.name]]
        return moved + 2 * sizes["float32"] * self.master


DEFAULT = Storage()

# Every variant the public layer launches: float32/float64 (DEFAULT); float32 params with
# bfloat16 state; 16-bit params with or without a master, float32 or bfloat16 state;
# bfloat16 params rounded stochastically.
STORAGES: tuple[Storage, ...] = (
    DEFAULT,
    Storage(state="bfloat16"),
    *(
        Storage(param, state, master)
        for param in SIXTEEN_BIT
        for state in (None, "bfloat16")
        for master in (True, False)
    ),
    Storage("bfloat16", None, stochastic=True),
    Storage("bfloat16", "bfloat16", stochastic=True),
)


def kernel_name(spec: RuleSpec, storage: Storage = DEFAULT) -> str:
    """The name of ``spec``'s kernel for ``storage`` in ``kernels/{cpu,cuda}/optim.py``."""
    return f"_{spec.name}{storage.suffix}_kernel"


def variant_of(name: str) -> tuple[RuleSpec, Storage] | None:
    """The ``(spec, storage)`` whose :func:`kernel_name` is ``name``, or None."""
    for spec in SPECS.values():
        prefix = f"_{spec.name}"
        if not (name.startswith(prefix) and name.endswith("_kernel")):
            continue
        words = name[len(prefix) : -len("_kernel")].split("_")[1:]
        param = words.pop(0) if words and words[0] in SIXTEEN_BIT else None
        state = None
        if words[:2] == ["state", "bfloat16"]:
            state, words = "bfloat16", words[2:]
        master = bool(words) and words[0] == "master"
        words = words[master:]
        stochastic = words == ["stochastic"]
        if words and not stochastic:
            continue
        try:
            storage = Storage(param, state, master, stochastic)
        except ValueError:
            continue
        if kernel_name(spec, storage) == name:
            return spec, storage
    return None


def compiled_rules(jit) -> dict[str, object]:
    """Every spec's rule compiled by ``jit`` (a CPU ``njit`` or a CUDA device ``jit``), with the
    helpers it calls bound to their compiled versions."""
    helpers: dict[str, object] = {}
    for name in HELPERS:  # in order: a helper may call the ones before it
        helpers[name] = rules.compiled(jit, getattr(rules, name), **helpers)
    return {
        name: rules.compiled(
            jit, spec.rule, **{h: f for h, f in helpers.items() if h in spec.rule.__code__.co_names}
        )
        for name, spec in SPECS.items()
    }


def unit_table(offsets: np.ndarray, chunk: int) -> np.ndarray:
    """The first segment each unit of ``chunk`` elements overlaps: units cover the
    concatenated elements ``[0, offsets[-1])`` in order (the last one shorter)."""
    starts = np.arange(0, int(offsets[-1]), chunk, dtype=np.int64)
    return np.searchsorted(offsets, starts, side="right").astype(np.int64) - 1
