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


# --- Optimizers -------------------------------------------------------------------
#
# One step of each torch.optim rule in float64. ``p`` and ``g`` are arrays; ``state``
# is a dict of float64 arrays (created on the first step) plus ``"step"``; the new
# params are returned and ``state`` is updated. ``grad_mult`` multiplies the gradient
# first (clipping coefficient / loss scale), as the fused kernels do.


def _grad(p, g, state, maximize, weight_decay, grad_mult, decoupled=False):
    g = np.asarray(g, np.float64) * grad_mult
    if maximize:
        g = -g
    state["step"] = state.get("step", 0) + 1
    if weight_decay and not decoupled:
        g = g + weight_decay * p
    return g


def _zeros(state, p, *names):
    for name in names:
        state.setdefault(name, np.zeros_like(p, dtype=np.float64))


def sgd(
    p,
    g,
    state,
    *,
    lr=1e-3,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    maximize=False,
    grad_mult=1.0,
):
    p = np.asarray(p, np.float64)
    g = _grad(p, g, state, maximize, weight_decay, grad_mult)
    if momentum:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g.copy()
        else:
            state["momentum_buffer"] = momentum * state["momentum_buffer"] + (1 - dampening) * g
        g = g + momentum * state["momentum_buffer"] if nesterov else state["momentum_buffer"]
    return p - lr * g


def adam(
    p,
    g,
    state,
    *,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled=False,
    grad_mult=1.0,
):
    p = np.asarray(p, np.float64)
    beta1, beta2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    g = _grad(p, g, state, maximize, weight_decay, grad_mult, decoupled)
    _zeros(state, p, "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    t = state["step"]
    state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * g
    state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    second = state["exp_avg_sq"]
    if amsgrad:
        state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], second)
        second = state["max_exp_avg_sq"]
    m_hat = state["exp_avg"] / (1 - beta1**t)
    return p - lr * m_hat / (np.sqrt(second / (1 - beta2**t)) + eps)


def adamw(p, g, state, *, weight_decay=1e-2, **kwargs):
    return adam(p, g, state, weight_decay=weight_decay, decoupled=True, **kwargs)


def adagrad(
    p,
    g,
    state,
    *,
    lr=1e-2,
    lr_decay=0.0,
    weight_decay=0.0,
    initial_accumulator_value=0.0,
    eps=1e-10,
    maximize=False,
    grad_mult=1.0,
):
    p = np.asarray(p, np.float64)
    g = _grad(p, g, state, maximize, weight_decay, grad_mult)
    state.setdefault("sum", np.full_like(p, initial_accumulator_value))
    clr = lr / (1 + (state["step"] - 1) * lr_decay)
    state["sum"] = state["sum"] + g * g
    return p - clr * g / (np.sqrt(state["sum"]) + eps)


def rmsprop(
    p,
    g,
    state,
    *,
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    maximize=False,
    grad_mult=1.0,
):
    p = np.asarray(p, np.float64)
    g = _grad(p, g, state, maximize, weight_decay, grad_mult)
    _zeros(state, p, "square_avg", "grad_avg", "momentum_buffer")
    state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * g * g
    var = state["square_avg"]
    if centered:
        state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
        var = var - state["grad_avg"] ** 2
    avg = np.sqrt(var) + eps
    if momentum > 0:
        state["momentum_buffer"] = momentum * state["momentum_buffer"] + g / avg
        return p - lr * state["momentum_buffer"]
    return p - lr * g / avg


def adadelta(
    p, g, state, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False, grad_mult=1.0
):
    p = np.asarray(p, np.float64)
    g = _grad(p, g, state, maximize, weight_decay, grad_mult)
    _zeros(state, p, "square_avg", "acc_delta")
    state["square_avg"] = rho * state["square_avg"] + (1 - rho) * g * g
    delta = np.sqrt(state["acc_delta"] + eps) / np.sqrt(state["square_avg"] + eps) * g
    state["acc_delta"] = rho * state["acc_delta"] + (1 - rho) * delta * delta
    return p - lr * delta


OPTIMIZERS = {
    "SGD": sgd,
    "Adam": adam,
    "AdamW": adamw,
    "Adagrad": adagrad,
    "RMSprop": rmsprop,
    "Adadelta": adadelta,
}


# --- Training toolkit ---------------------------------------------------------------


def fans(shape):
    """torch's ``(fan_in, fan_out)`` of a weight shaped ``(out, in, *kernel)``."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def init_distribution(name, shape, **kw):
    """``(kind, mean, std, bound)`` of an initializer's distribution, from the formulas:
    uniform U(-b, b) has std b/√3; ``bound`` is None for normals."""
    fan_in, fan_out = fans(shape) if len(shape) >= 2 else (None, None)
    gain = kw.get("gain", 1.0)
    if name == "uniform_":
        a, b = kw.get("a", 0.0), kw.get("b", 1.0)
        return "uniform", (a + b) / 2, (b - a) / np.sqrt(12.0), (a, b)
    if name == "normal_":
        return "normal", kw.get("mean", 0.0), kw.get("std", 1.0), None
    if name in ("xavier_uniform_", "xavier_normal_"):
        std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    elif name in ("kaiming_uniform_", "kaiming_normal_"):
        fan = fan_in if kw.get("mode", "fan_in") == "fan_in" else fan_out
        nonlinearity = kw.get("nonlinearity", "leaky_relu")
        slope = kw.get("a", 0.0)
        gains = {"relu": np.sqrt(2.0), "linear": 1.0, "tanh": 5.0 / 3, "selu": 0.75}
        g = gains.get(nonlinearity, np.sqrt(2.0 / (1 + slope**2)))
        std = g / np.sqrt(fan)
    elif name == "lecun_normal_":
        std = 1.0 / np.sqrt(fan_in)
    else:
        raise KeyError(name)
    if name.endswith("uniform_"):
        bound = np.sqrt(3.0) * std
        return "uniform", 0.0, std, (-bound, bound)
    return "normal", 0.0, std, None


def moment_bounds(kind, std, n, sigmas=5.0):
    """5-sigma half-widths ``(for the sample mean, for the sample variance)`` of ``n``
    independent draws: var(mean) = σ²/n; var(s²) ≈ (μ₄ − σ⁴)/n with μ₄ = 3σ⁴ (normal) or
    9σ⁴/5 (uniform)."""
    mu4 = 3.0 if kind == "normal" else 1.8
    return sigmas * std / np.sqrt(n), sigmas * std**2 * np.sqrt((mu4 - 1.0) / n)


def dropout_keep_bounds(p, n, sigmas=5.0):
    """Kept count of ``n`` elements: expectation n(1 − p), 5-sigma half-width √(n p (1 − p))."""
    return n * (1 - p), sigmas * np.sqrt(n * p * (1 - p))


def cross_entropy(logits, target):
    """Mean softmax cross-entropy and its gradient w.r.t. the logits, in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = z.shape[0]
    loss = -log_probs[np.arange(n), target].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), target] -= 1
    return loss, grad / n
