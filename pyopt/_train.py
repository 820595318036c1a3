"""``pyopt train``: an MLP trained end to end on scikit-learn's bundled digits dataset.

Everything a from-scratch training loop needs, from pyopt alone: ``Linear -> BatchNorm ->
ReLU -> Dropout`` blocks with He init, the parameters flattened into one
:class:`~pyopt.optim.ParamBuffer`, AdamW (weight decay on the Linear weights only) with
fused global-norm clipping, a linear-warmup + cosine schedule stepped per batch, and
evaluation with the BatchNorm running statistics.

Thread settings: the kernels of this small model (a batch of 64 x 256 features) are too
small to gain from threads: a parallel region's start and the wait at its end cost as
much as the work, and on a machine with other work running, a thread that loses its core
stalls every region it is part of. :func:`pick_threads` chooses the Numba thread count
from the cores and the load average unless told. OpenMP's wait policy is left as it is:
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once instead of spinning) measured slower
wherever the threads had cores of their own, and faster only where they had not, which
:func:`pick_threads` avoids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from typing import Any, TextIO

import numba
import numpy as np

from pyopt import _random, init, nn
from pyopt._backend import cuda_unavailable_reason, resolve_device
from pyopt._progress import KernelLoad, Progress
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
    threads: int | None = None  # Numba threads; None: pick_threads decides


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
    seconds: float  # all of it: data, model, the first step's kernel compile or load, epochs
    first_step_s: float  # model build and the first step: compiling or loading the kernels
    threads: int  # the Numba thread count the loop ran with
    threads_reason: str


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


# pick_threads: free cores (cores minus the load) from which a second thread is used.
FREE_CORES_FOR_TWO = 4


def pick_threads(requested: int | None = None) -> tuple[int, str]:
    """The Numba thread count for the training loop, and why (for the run's first line).

    ``requested`` wins; else ``NUMBA_NUM_THREADS`` if the user set it; else 2 threads
    where the cores this process may run on (``os.sched_getaffinity``) minus the 1-minute
    load average leave ``FREE_CORES_FOR_TWO`` free, and 1 otherwise. Measured on a 2-core
    VM (``pyopt train``, steady-state epochs): 1 thread tied 2 on a quiet machine and was
    2-12x faster than 2 under load, where a thread that loses its core stalls every
    parallel region; a second thread gained 7% at most (a 4x wider model), and more
    threads only add start and join costs to kernels this small.

    Args:
        requested: an explicit count (``--threads N``), or None.

    Returns:
        ``(threads, reason)``, e.g. ``(1, "2 cores, load 1.9")``.
    """
    if requested is not None:
        return requested, "--threads"
    limit = numba.config.NUMBA_NUM_THREADS
    if "NUMBA_NUM_THREADS" in os.environ:
        return limit, f"NUMBA_NUM_THREADS={limit}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = 2 if (cores or 1) - load >= FREE_CORES_FOR_TWO else 1
    return min(threads, limit), f"{cores} cores, load {load:.1f}"


def train(
    config: TrainConfig,
    *,
    log: TextIO | None = sys.stdout,
    progress: TextIO | None = None,
) -> TrainResult:
    """Train the digits MLP as ``config`` says; the thread choice and per-epoch lines go
    to ``log``, progress (a bar on a terminal, plain lines elsewhere) to ``progress``.

    Meanwhile Numba runs ``pick_threads(config.threads)`` threads (restored after) and
    NumPy's BLAS one: its idle threads spin after each matmul and starve Numba's kernel
    threads (measured 30x slower steps on 2 cores), and these matmuls are too small to
    gain from threads.
    """
    threads, reason = pick_threads(config.threads)
    if log is not None:
        log.write(f"threads: {threads} ({reason}; --threads to override)\n")
        log.flush()
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits  # installed with scikit-learn
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(1, user_api="blas"))
        stack.callback(numba.set_num_threads, numba.get_num_threads())
        numba.set_num_threads(threads)
        bar = stack.enter_context(Progress(progress))
        return _train(config, log, bar, threads, reason)


def _train(
    config: TrainConfig, log: TextIO | None, bar: Progress, threads: int, reason: str
) -> TrainResult:
    started = time.perf_counter()
    device = pick_device(config.device)
    dtype = np.dtype(config.dtype)
    xp: Any = np
    if device == "cuda":
        import cupy

        xp = cupy
    bar.status("loading the digits dataset")
    x_train, y_train, x_test, y_test = load_digits_split(config.test_size, config.seed)
    x_train_d, x_test_d = (xp.asarray(a.astype(dtype)) for a in (x_train, x_test))
    y_train_d, y_test_d = (xp.asarray(a.astype(np.int64)) for a in (y_train, y_test))

    # Init, batch norm, dropout and the optimizer step: their kernels compile (or load
    # from the cache) in the model build and the first step.
    load = KernelLoad(device, ("random", "batchnorm", "optim"))
    bar.note(load.before())
    first_started = time.perf_counter()
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
    bar.total = total_steps
    first_step_s = None
    history = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        losses, correct = [], 0
        for b in range(batches):
            if first_step_s is None:
                bar.status(f"epoch {epoch}/{config.epochs} step 1/{batches}: first calls")
            idx = xp.asarray(order[b * config.batch_size : (b + 1) * config.batch_size])
            xb, yb = x_train_d[idx], y_train_d[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            model.backward(loss_fn.backward())
            opt.step(buf.grads, max_grad_norm=config.max_grad_norm)
            sched.step()
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == yb).sum())
            if first_step_s is None:
                first_step_s = time.perf_counter() - first_started
                bar.note(load.after("the model build and first step"))
            bar.advance()
            bar.status(
                f"epoch {epoch}/{config.epochs} step {b + 1}/{batches} "
                f"loss {float(np.mean(losses)):.4f}"
            )
        bar.status(f"epoch {epoch}/{config.epochs}: evaluating")
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
            with bar.hidden():
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
        first_step_s=first_step_s or 0.0,
        threads=threads,
        threads_reason=reason,
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
    limit = numba.config.NUMBA_NUM_THREADS
    if config.threads is not None and not 1 <= config.threads <= limit:
        raise ValueError(
            f"--threads must be 'auto' or 1 to {limit} (NUMBA_NUM_THREADS), got {config.threads}"
        )
