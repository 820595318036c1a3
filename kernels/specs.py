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
        """Minimum memory traffic of one element's update under ``flags``: the param read
        and written, the grad read, each state read and written as the flags say."""
        values = {f: bool(flags.get(f, False)) for f in self.flags}
        moved = 3 + sum(
            self.uses(s, "read", values) + self.uses(s, "write", values) for s in self.states
        )
        return moved * itemsize


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


def compiled_rules(jit) -> dict[str, object]:
    """Every spec's rule compiled by ``jit`` (``njit(inline="always")`` or a CUDA device
    ``jit``), with the helpers it calls bound to their compiled versions."""
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
