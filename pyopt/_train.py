"""``pyopt train``: an MLP trained end to end on scikit-learn's bundled digits dataset.

Everything a from-scratch training loop needs, from pyopt alone: ``Linear -> BatchNorm ->
ReLU -> Dropout`` blocks with He init, the parameters flattened into one
:class:`~pyopt.optim.ParamBuffer`, AdamW (weight decay on the Linear weights only) with
fused global-norm clipping, a linear-warmup + cosine schedule stepped per batch, and
evaluation with the BatchNorm running statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Any, TextIO

import numpy as np

from pyopt import _random, init, nn
from pyopt._backend import cuda_unavailable_reason, resolve_device
from pyopt.optim import AdamW
from pyopt.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.2
    warmup_epochs: float = 2.0
    max_grad_norm: float = 1.0
    test_size: float = 0.2
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"


@dataclasses.dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    lr: float
    seconds: float


@dataclasses.dataclass
class TrainResult:
    config: TrainConfig
    device: str
    history: list[EpochStats]
    test_accuracy: float
    test_correct: int
    test_count: int
    seconds: float


def load_digits_split(test_size: float, seed: int) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: digits (8x8 images, 10 classes), a stratified
    split, pixels standardized with the training set's statistics."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise RuntimeError(
            "pyopt train needs scikit-learn for its bundled digits dataset "
            "(pip install pyopt-kernels[train])"
        ) from exc
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=test_size, stratify=data.target, random_state=seed
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # always-blank border pixels
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def pick_device(device: str) -> str:
    """``cpu`` or ``cuda`` for ``--device``; ``auto`` takes CUDA only with CuPy installed."""
    if device == "auto":
        import importlib.util

        usable = cuda_unavailable_reason() is None and importlib.util.find_spec("cupy")
        return "cuda" if usable else "cpu"
    return resolve_device(device)


def build_mlp(
    in_features: int,
    hidden: tuple[int, ...],
    classes: int,
    dropout: float,
    *,
    dtype: Any,
    device: str,
) -> nn.Sequential:
    """``[Linear -> BatchNorm1d -> ReLU -> Dropout] * len(hidden) -> Linear``, He init.

    The hidden Linear layers have no bias (the BatchNorm shift after them is the bias);
    their weights are He-normal (``kaiming_normal_``, ReLU gain, fan_in). The last layer
    keeps torch's default init.
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        linear = nn.Linear(width, h, bias=False, dtype=dtype, device=device)
        init.kaiming_normal_(linear.weight, nonlinearity="relu")
        layers += [
            linear,
            nn.BatchNorm1d(h, dtype=dtype, device=device),
            nn.ReLU(),
            nn.Dropout(dropout),
        ]
        width = h
    layers.append(nn.Linear(width, classes, dtype=dtype, device=device))
    return nn.Sequential(*layers)


class _Progress:
    """A one-line progress bar on a terminal stream (nothing when disabled)."""

    def __init__(self, stream: TextIO | None, width: int = 24):
        self.stream, self.width = stream, width

    def update(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
        if self.stream is None:
            return
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\repoch {epoch:>3}/{epochs} [{bar}] {done:>3}/{total} loss {loss:.4f}")
        self.stream.flush()

    def clear(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * (self.width + 48) + "\r")


def train(
    config: TrainConfig,
    *,
    log: TextIO | None = sys.stdout,
    progress: TextIO | None = None,
) -> TrainResult:
    """Train the digits MLP as ``config`` says; per-epoch lines go to ``log``, the bar
    to ``progress``.

    NumPy's BLAS is limited to one thread meanwhile: its idle threads spin after each
    matmul and starve Numba's kernel threads (measured 30x slower steps on 2 cores), and
    these matmuls are too small to gain from threads.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits  # installed with scikit-learn
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(1, user_api="blas"))
        return _train(config, log, progress)


def _train(config: TrainConfig, log: TextIO | None, progress: TextIO | None) -> TrainResult:
    started = time.perf_counter()
    device = pick_device(config.device)
    dtype = np.dtype(config.dtype)
    xp: Any = np
    if device == "cuda":
        import cupy

        xp = cupy
    x_train, y_train, x_test, y_test = load_digits_split(config.test_size, config.seed)
    x_train_d, x_test_d = (xp.asarray(a.astype(dtype)) for a in (x_train, x_test))
    y_train_d, y_test_d = (xp.asarray(a.astype(np.int64)) for a in (y_train, y_test))

    _random.manual_seed(config.seed)
    model = build_mlp(
        x_train.shape[1], config.hidden, 10, config.dropout, dtype=dtype, device=device
    )
    buf = model.flatten_parameters()
    decay = [n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2]
    groups = [
        {"params": {n: buf.params[n] for n in decay}, "weight_decay": config.weight_decay},
        {"params": {n: buf.params[n] for n in buf if n not in decay}, "weight_decay": 0.0},
    ]
    opt = AdamW(groups, lr=config.lr)

    n = x_train.shape[0]
    batches = n // config.batch_size + (n % config.batch_size > 1)  # no batch of one for BN
    total_steps = config.epochs * batches
    warmup = min(max(1, round(config.warmup_epochs * batches)), total_steps - 1)
    sched = SequentialLR(
        opt,
        [
            LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup),
            CosineAnnealingLR(opt, T_max=total_steps - warmup),
        ],
        milestones=[warmup],
    )
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(config.seed)
    bar = _Progress(progress)
    history = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        losses, correct = [], 0
        for b in range(batches):
            idx = xp.asarray(order[b * config.batch_size : (b + 1) * config.batch_size])
            xb, yb = x_train_d[idx], y_train_d[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            model.backward(loss_fn.backward())
            opt.step(buf.grads, max_grad_norm=config.max_grad_norm)
            sched.step()
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == yb).sum())
            bar.update(epoch, config.epochs, b + 1, batches, float(np.mean(losses)))
        bar.clear()
        test_correct = _correct(model, x_test_d, y_test_d)
        stats = EpochStats(
            epoch=epoch,
            loss=float(np.mean(losses)),
            train_accuracy=correct / min(n, batches * config.batch_size),
            test_accuracy=test_correct / len(y_test),
            lr=float(sched.get_last_lr()[0]),
            seconds=time.perf_counter() - t0,
        )
        history.append(stats)
        if log is not None:
            log.write(
                f"epoch {epoch:>3}/{config.epochs}  loss {stats.loss:.4f}  "
                f"train acc {100 * stats.train_accuracy:6.2f}%  "
                f"test acc {100 * stats.test_accuracy:6.2f}%  lr {stats.lr:.2e}  "
                f"{stats.seconds:.2f} s\n"
            )
            log.flush()
    test_correct = _correct(model, x_test_d, y_test_d)
    return TrainResult(
        config=config,
        device=device,
        history=history,
        test_accuracy=test_correct / len(y_test),
        test_correct=test_correct,
        test_count=len(y_test),
        seconds=time.perf_counter() - started,
    )


def _correct(model: nn.Sequential, x: Any, y: Any) -> int:
    model.eval()
    return int((model(x).argmax(axis=1) == y).sum())


def check_config(config: TrainConfig) -> None:
    """ValueError naming the first option out of range."""
    positive_ints = {"epochs": config.epochs, "batch_size": config.batch_size}
    for name, value in positive_ints.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if config.batch_size < 2:
        raise ValueError("--batch-size must be >= 2 (BatchNorm needs two samples per batch)")
    if not config.hidden or min(config.hidden) < 1:
        raise ValueError(f"--hidden must be one or more positive widths, got {config.hidden}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0.0 < config.test_size < 1.0:
        raise ValueError(f"--test-size must be in (0, 1), got {config.test_size}")
    for name in ("lr", "max_grad_norm"):
        value = getattr(config, name)
        if not (0.0 < value < math.inf):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if config.weight_decay < 0 or config.warmup_epochs < 0:
        raise ValueError("--weight-decay and --warmup-epochs must be >= 0")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {config.dtype}")
