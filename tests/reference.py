"""float64 NumPy textbook implementations: the readable definition of each op.

Everything is computed in float64 whatever the input dtype, with the channel axis moved
last so that every formula reads as a reduction over axis 0 of a (rows, C) matrix.
"""

from __future__ import annotations

import numpy as np


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as a float64 (rows, C) matrix with the channel axis last."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return x.reshape(-1, x.shape[-1])


def _unrows(m: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    return np.moveaxis(m.reshape(moved), -1, axis)


def batch_norm(
    x, weight=None, bias=None, running_mean=None, running_var=None,
    training=True, momentum=0.1, eps=1e-5, axis=1,
):  # fmt: skip
    """Returns ``(y, mean, invstd, new_running_mean, new_running_var)`` in float64.

    Training: batch mean, biased variance for normalizing, unbiased variance for the
    running update ``running = (1 - momentum) * running + momentum * batch``.
    Eval: the running statistics normalize; they are returned unchanged.
    """
    rows = _rows(x, axis)
    n, channels = rows.shape
    w = np.ones(channels) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(channels) if bias is None else np.asarray(bias, np.float64)
    new_rm = None if running_mean is None else np.asarray(running_mean, np.float64).copy()
    new_rv = None if running_var is None else np.asarray(running_var, np.float64).copy()
    if training:
        mean = rows.mean(axis=0)
        var = ((rows - mean) ** 2).mean(axis=0)
        if new_rm is not None:
            new_rm = (1 - momentum) * new_rm + momentum * mean
            new_rv = (1 - momentum) * new_rv + momentum * var * n / (n - 1)
    else:
        mean, var = new_rm, new_rv
    invstd = 1.0 / np.sqrt(var + eps)
    y = (rows - mean) * invstd * w + b
    return _unrows(y, np.shape(x), axis), mean, invstd, new_rm, new_rv


def batch_norm_backward(dy, x, weight, mean, invstd, training=True, axis=1):
    """Returns ``(dx, dweight, dbias)`` in float64 (``weight=None`` means ones).

    ``xhat = (x - mean) * invstd``; ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``.
    Training differentiates through the batch statistics:
    ``dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``; eval does not:
    ``dx = dy * w * invstd``.
    """
    rows, g = _rows(x, axis), _rows(dy, axis)
    n, channels = rows.shape
    w = np.ones(channels) if weight is None else np.asarray(weight, np.float64)
    mean = np.asarray(mean, np.float64)
    invstd = np.asarray(invstd, np.float64)
    xhat = (rows - mean) * invstd
    dbias = g.sum(axis=0)
    dweight = (g * xhat).sum(axis=0)
    if training:
        dx = w * invstd * (g - dbias / n - xhat * dweight / n)
    else:
        dx = g * w * invstd
    return _unrows(dx, np.shape(x), axis), dweight, dbias
