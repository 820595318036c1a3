"""float64 NumPy textbook implementations: the readable definition of each op.

Everything is computed in float64 whatever the input dtype, unless the caller names
another array module ``xp`` and ``dtype`` (pyopt bench's array baselines run the batch-norm
and optimizer references in the input dtype, on CuPy for CUDA). Batch norm's per-channel
vectors broadcast along the channel axis ``axis``; its sums run over every other axis.
"""

from __future__ import annotations

import numpy as np


def _channels(x, axis):
    """The axes batch norm reduces over (all but ``axis``), the shape that broadcasts a
    per-channel vector along ``axis``, and the count ``n`` of values per channel."""
    axis %= x.ndim
    channel = [1] * x.ndim
    channel[axis] = -1
    return tuple(i for i in range(x.ndim) if i != axis), tuple(channel), x.size // x.shape[axis]


def _vector(xp, dtype, value, channels, default):
    """A per-channel ``dtype`` vector: ``value``, or ``default`` everywhere when None."""
    if value is None:
        return xp.full(channels, default, dtype)
    return xp.asarray(value, dtype)


def batch_norm(
    x, weight=None, bias=None, running_mean=None, running_var=None,
    training=True, momentum=0.1, eps=1e-5, axis=1, *, xp=np, dtype=np.float64,
):  # fmt: skip
    """Returns ``(y, mean, invstd, new_running_mean, new_running_var)`` in ``dtype``.

    Training: batch mean, biased variance for normalizing, unbiased variance for the
    running update ``running = (1 - momentum) * running + momentum * batch``.
    Eval: the running statistics normalize; they are returned unchanged.
    """
    x = xp.asarray(x, dtype)
    axes, channel, n = _channels(x, axis)
    channels = x.shape[axis]
    w = _vector(xp, dtype, weight, channels, 1.0)
    b = _vector(xp, dtype, bias, channels, 0.0)
    new_rm = None if running_mean is None else xp.array(running_mean, dtype)
    new_rv = None if running_var is None else xp.array(running_var, dtype)
    if training:
        mean = x.mean(axis=axes)
        centered = x - mean.reshape(channel)
        var = (centered * centered).mean(axis=axes)
        if new_rm is not None:
            new_rm = (1 - momentum) * new_rm + momentum * mean
            new_rv = (1 - momentum) * new_rv + momentum * var * n / (n - 1)
    else:
        mean, var = new_rm, new_rv
        centered = x - mean.reshape(channel)
    invstd = 1.0 / xp.sqrt(var + eps)
    y = centered * (w * invstd).reshape(channel)
    y += b.reshape(channel)
    return y, mean, invstd, new_rm, new_rv


def batch_norm_backward(
    dy, x, weight, mean, invstd, training=True, axis=1, *, xp=np, dtype=np.float64
):
    """Returns ``(dx, dweight, dbias)`` in ``dtype`` (``weight=None`` means ones).

    ``xhat = (x - mean) * invstd``; ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``.
    Training differentiates through the batch statistics:
    ``dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``; eval does not:
    ``dx = dy * w * invstd``.
    """
    x, g = xp.asarray(x, dtype), xp.asarray(dy, dtype)
    axes, channel, n = _channels(x, axis)
    w = _vector(xp, dtype, weight, x.shape[axis], 1.0)
    invstd = xp.asarray(invstd, dtype)
    xhat = (x - xp.asarray(mean, dtype).reshape(channel)) * invstd.reshape(channel)
    dbias = g.sum(axis=axes)
    dweight = (g * xhat).sum(axis=axes)
    if training:
        dx = (w * invstd).reshape(channel) * (
            g - (dbias / n).reshape(channel) - xhat * (dweight / n).reshape(channel)
        )
    else:
        dx = g * (w * invstd).reshape(channel)
    return dx, dweight, dbias


# --- Optimizers -------------------------------------------------------------------
#
# One step of each torch.optim rule. ``p`` and ``g`` are arrays; ``state`` is a dict of
# arrays (created on the first step) plus ``"step"``. ``state`` and ``p`` are updated in
# place (``p`` converted first unless it is a ``dtype`` array of ``xp``: the float64
# checks pass copies), and the new params returned. Every rule also takes the arguments
# of :func:`_grad` (``weight_decay``, ``maximize``, ``grad_mult``, ``xp``, ``dtype``):
# ``grad_mult`` multiplies the gradient first (clipping coefficient / loss scale), as the
# fused kernels do.


def _grad(p, g, state, *, weight_decay=0.0, maximize=False, grad_mult=1.0, xp=np, dtype=np.float64):
    """What every rule does first: ``(xp, p, g)`` with ``p`` and ``g`` as ``dtype`` arrays
    of the array module ``xp`` (float64 NumPy; pyopt bench's array baselines compute in
    the param dtype, on CuPy for CUDA), ``g`` multiplied by ``grad_mult``, negated for
    ``maximize``, plus the L2 term ``weight_decay·p``; the step is counted."""
    p, g = xp.asarray(p, dtype), xp.asarray(g, dtype)
    if grad_mult != 1.0:
        g = g * grad_mult
    if maximize:
        g = -g
    state["step"] = state.get("step", 0) + 1
    if weight_decay:
        g = g + weight_decay * p
    return xp, p, g


def _new_state(xp, state, p, *names, fill=0.0):
    """The state tensors ``names`` of ``p``, created filled with ``fill`` on the first step."""
    for name in names:
        if name not in state:
            state[name] = xp.full_like(p, fill)


def sgd(p, g, state, *, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, **common):
    _, p, g = _grad(p, g, state, **common)
    if momentum:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g.copy()
        else:
            state["momentum_buffer"] *= momentum
            state["momentum_buffer"] += (1 - dampening) * g
        g = g + momentum * state["momentum_buffer"] if nesterov else state["momentum_buffer"]
    p -= lr * g
    return p


def adam(
    p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
    decoupled=False, **common,
):  # fmt: skip
    """``decoupled``: AdamW's decay ``p ← p·(1 − lr·λ)`` instead of the L2 term."""
    xp, p, g = _grad(p, g, state, weight_decay=0.0 if decoupled else weight_decay, **common)
    if decoupled:
        p *= 1 - lr * weight_decay
    beta1, beta2 = betas
    _new_state(xp, state, p, "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    t = state["step"]
    state["exp_avg"] *= beta1
    state["exp_avg"] += (1 - beta1) * g
    state["exp_avg_sq"] *= beta2
    state["exp_avg_sq"] += (1 - beta2) * g * g
    second = state["exp_avg_sq"]
    if amsgrad:
        second = xp.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
    m_hat = state["exp_avg"] / (1 - beta1**t)
    p -= lr * m_hat / (xp.sqrt(second / (1 - beta2**t)) + eps)
    return p


def adamw(p, g, state, *, weight_decay=1e-2, **kwargs):
    return adam(p, g, state, weight_decay=weight_decay, decoupled=True, **kwargs)


def adagrad(
    p, g, state, *, lr=1e-2, lr_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, **common
):
    xp, p, g = _grad(p, g, state, **common)
    _new_state(xp, state, p, "sum", fill=initial_accumulator_value)
    clr = lr / (1 + (state["step"] - 1) * lr_decay)
    state["sum"] += g * g
    p -= clr * g / (xp.sqrt(state["sum"]) + eps)
    return p


def rmsprop(p, g, state, *, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, centered=False, **common):
    xp, p, g = _grad(p, g, state, **common)
    _new_state(xp, state, p, "square_avg", "grad_avg", "momentum_buffer")
    state["square_avg"] *= alpha
    state["square_avg"] += (1 - alpha) * g * g
    var = state["square_avg"]
    if centered:
        state["grad_avg"] *= alpha
        state["grad_avg"] += (1 - alpha) * g
        var = var - state["grad_avg"] ** 2
    avg = xp.sqrt(var) + eps
    if momentum > 0:
        state["momentum_buffer"] *= momentum
        state["momentum_buffer"] += g / avg
        p -= lr * state["momentum_buffer"]
    else:
        p -= lr * g / avg
    return p


def adadelta(p, g, state, *, lr=1.0, rho=0.9, eps=1e-6, **common):
    xp, p, g = _grad(p, g, state, **common)
    _new_state(xp, state, p, "square_avg", "acc_delta")
    state["square_avg"] *= rho
    state["square_avg"] += (1 - rho) * g * g
    delta = xp.sqrt(state["acc_delta"] + eps) / xp.sqrt(state["square_avg"] + eps) * g
    state["acc_delta"] *= rho
    state["acc_delta"] += (1 - rho) * delta * delta
    p -= lr * delta
    return p


OPTIMIZERS = {
    "SGD": sgd,
    "Adam": adam,
    "AdamW": adamw,
    "Adagrad": adagrad,
    "RMSprop": rmsprop,
    "Adadelta": adadelta,
}


def total_norm(grads, norm_type=2.0, *, xp=np, dtype=np.float64):
    """The ``norm_type``-norm of every element of ``grads`` together (``inf``: max |g|,
    ``-inf``: min |g|), torch's ``clip_grad_norm_`` total: a 0-d ``dtype`` array of ``xp``
    (no device sync)."""
    norms = [xp.linalg.norm(xp.asarray(g, dtype).reshape(-1), norm_type) for g in grads]
    return xp.linalg.norm(xp.stack(norms), norm_type)


def clip_coefficient(total, max_norm, *, xp=np):
    """What ``clip_grad_norm_`` multiplies the gradients by: ``min(max_norm / (total +
    1e-6), 1)``."""
    return xp.minimum(max_norm / (total + 1e-6), 1.0)


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
