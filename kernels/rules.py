"""Scalar math shared by the CPU and CUDA kernels, written once.

Plain Python functions: ``kernels/cpu`` compiles them with ``njit(inline="always")`` and
``kernels/cuda`` with ``cuda.jit(device=True, inline="always")``, so the two backends
differ only in how they schedule work over elements, never in a formula. Literals are
``np.float32`` so float32 callers stay in float32; float64 callers widen them exactly.

Numba's on-disk CPU cache does not notice edits to this file (it checks only the file of
the kernel it caches): clear ``kernels/cpu/__pycache__`` after changing a rule.
"""

import numpy as np


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries; an empty summary (count 0) is the identity.

    ``n = n_a + n_b``, ``δ = mean_b − mean_a``, ``mean = mean_a + δ·n_b/n``,
    ``M2 = M2_a + M2_b + δ²·n_a·n_b/n`` (Chan, Golub & LeVeque, 1983). Stable: no
    E[x²] − E[x]².
    """
    if n_b == np.float32(0):
        return n_a, mean_a, m2_a
    if n_a == np.float32(0):
        return n_b, mean_b, m2_b
    n = n_a + n_b
    w = n_b / n
    delta = mean_b - mean_a
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


def running_update(running, batch, momentum):
    """``(1 − momentum)·running + momentum·batch``: torch's running-statistics blend."""
    return (np.float32(1) - momentum) * running + momentum * batch


def normalized(x, mean, scale, shift):
    """``y = (x − mean)·scale + shift`` with ``scale = invstd·weight``, ``shift = bias``;
    ``x − mean`` is formed first so that a mean far from zero costs no precision."""
    return (x - mean) * scale + shift
