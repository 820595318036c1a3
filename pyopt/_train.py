"""``pyopt train``: an MLP trained end to end on scikit-learn's bundled digits dataset.

Everything a from-scratch training loop needs: ``Linear -> BatchNorm -> ReLU -> Dropout``
blocks with He init, AdamW (weight decay on the Linear weights only) with fused
global-norm clipping, a linear-warmup + cosine schedule stepped per batch, and evaluation
with the BatchNorm running statistics. Two frameworks run the same loop (:func:`train`):

- ``pyopt`` (the default): pyopt alone, its layers with their explicit backward, the
  parameters flattened into one :class:`~pyopt.optim.ParamBuffer`, pyopt's
  ``lr_scheduler``;
- ``torch``: a torch training loop, ``torch.nn.Linear`` and ``ReLU`` beside
  :mod:`pyopt.torch.nn`'s ``BatchNorm1d`` and ``Dropout``, torch autograd,
  :class:`pyopt.torch.optim.AdamW` (``step(max_grad_norm=...)``) and torch's own
  ``torch.optim.lr_scheduler``.

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
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any, TextIO

import numba
import numpy as np

from pyopt import _random, init, nn
from pyopt._backend import cuda_unavailable_reason, resolve_device
from pyopt._progress import KernelLoad, Progress
from pyopt.optim import AdamW, lr_scheduler

FRAMEWORKS = ("pyopt", "torch")


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
    framework: str = "pyopt"  # one of FRAMEWORKS


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


def require_framework(framework: str) -> None:
    """Check that ``--framework`` can run here.

    Raises:
        ValueError: not one of ``FRAMEWORKS``.
        RuntimeError: ``torch`` without PyTorch installed (saying which extra installs it).
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"--framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if framework == "torch" and importlib.util.find_spec("torch") is None:
        raise RuntimeError(
            "--framework torch needs PyTorch, which is not installed "
            "(pip install pyopt-kernels[torch])"
        )


def pick_device(device: str, framework: str = "pyopt") -> str:
    """``cpu`` or ``cuda`` for ``--device``; ``auto`` takes CUDA only where the framework's
    arrays can live there (CuPy installed; with ``torch``, torch built with CUDA).

    Raises:
        RuntimeError: ``cuda`` asked for where it is unusable, saying what is missing.
    """
    if device == "auto":
        if cuda_unavailable_reason() is not None:
            return "cpu"
        if framework == "torch":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda" if importlib.util.find_spec("cupy") else "cpu"
    device = resolve_device(device)
    if device == "cuda" and framework == "torch":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"--framework torch: torch {torch.__version__} cannot use CUDA")
    return device


def _layers(framework: str) -> SimpleNamespace:
    """The MLP's building blocks in ``framework``: its dtype for a NumPy one, its layer
    classes, ``Sequential`` and ``kaiming_normal_``, with the same signatures in both."""
    if framework == "pyopt":
        return SimpleNamespace(
            dtype=np.dtype,
            Linear=nn.Linear,
            BatchNorm1d=nn.BatchNorm1d,
            ReLU=nn.ReLU,
            Dropout=nn.Dropout,
            Sequential=nn.Sequential,
            kaiming_normal_=init.kaiming_normal_,
        )
    import torch

    import pyopt.torch.nn

    return SimpleNamespace(
        dtype=lambda dtype: getattr(torch, np.dtype(dtype).name),
        Linear=torch.nn.Linear,
        BatchNorm1d=pyopt.torch.nn.BatchNorm1d,
        ReLU=torch.nn.ReLU,
        Dropout=pyopt.torch.nn.Dropout,
        Sequential=torch.nn.Sequential,
        kaiming_normal_=torch.nn.init.kaiming_normal_,
    )


def build_mlp(
    in_features: int,
    hidden: tuple[int, ...],
    classes: int,
    dropout: float,
    *,
    dtype: Any,
    device: str,
    framework: str = "pyopt",
) -> Any:
    """``[Linear -> BatchNorm1d -> ReLU -> Dropout] * len(hidden) -> Linear``, He init.

    The hidden Linear layers have no bias (the BatchNorm shift after them is the bias);
    their weights are He-normal (``kaiming_normal_``, ReLU gain, fan_in). The last layer
    keeps torch's default init.

    Args:
        in_features, hidden, classes, dropout: the input width, the hidden widths, the
            output width and the dropout probability.
        dtype: the parameters' dtype, float32 or float64 (a NumPy dtype or its name).
        device: ``"cpu"`` or ``"cuda"``.
        framework: ``"pyopt"``: a :class:`pyopt.nn.Sequential` of pyopt's layers;
            ``"torch"``: a ``torch.nn.Sequential`` of torch's ``Linear`` and ``ReLU`` and
            pyopt.torch's ``BatchNorm1d`` and ``Dropout``.

    Returns:
        The model, in training mode.
    """
    blocks = _layers(framework)
    dtype = blocks.dtype(dtype)
    layers: list[Any] = []
    width = in_features
    for h in hidden:
        linear = blocks.Linear(width, h, bias=False, dtype=dtype, device=device)
        blocks.kaiming_normal_(linear.weight, nonlinearity="relu")
        layers += [
            linear,
            blocks.BatchNorm1d(h, dtype=dtype, device=device),
            blocks.ReLU(),
            blocks.Dropout(dropout),
        ]
        width = h
    layers.append(blocks.Linear(width, classes, dtype=dtype, device=device))
    return blocks.Sequential(*layers)


def param_groups(
    params: Mapping[str, Any], weight_decay: float, collect: Callable[[Iterable], Any] = dict
) -> list[dict[str, Any]]:
    """AdamW's param groups: ``weight_decay`` on the Linear weights (the 2-D ``*weight``
    params), none on the rest (BatchNorm's affine params, the last layer's bias).

    Args:
        params: name -> param, in the model's order.
        weight_decay: the first group's decay.
        collect: makes a group's ``"params"`` from its ``(name, param)`` pairs: ``dict``
            (pyopt's named params), ``list`` (torch's named params).

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest,
        "weight_decay": 0.0}]``.
    """
    decay = [n for n, p in params.items() if n.endswith("weight") and p.ndim == 2]
    rest = [n for n in params if n not in decay]
    return [
        {"params": collect((n, params[n]) for n in names), "weight_decay": wd}
        for names, wd in ((decay, weight_decay), (rest, 0.0))
    ]


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

    Meanwhile Numba runs ``pick_threads(config.threads)`` threads (restored after), and so
    does torch's intra-op pool with ``--framework torch``, and NumPy's BLAS one: its idle
    threads spin after each matmul and starve Numba's kernel threads (measured 30x slower
    steps on 2 cores), and these matmuls are too small to gain from threads.

    Raises:
        RuntimeError: the framework or the device is unusable here (see
            :func:`require_framework`, :func:`pick_device`).
    """
    require_framework(config.framework)
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
        if config.framework == "torch":
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        bar = stack.enter_context(Progress(progress))
        return _train(config, log, bar, threads, reason)


class _PyoptRun:
    """The MLP on pyopt's own layers: NumPy (CuPy) arrays, an explicit backward, the
    params in one :class:`~pyopt.optim.ParamBuffer`."""

    lr_scheduler = lr_scheduler

    def __init__(self, config: TrainConfig, device: str, split: tuple[np.ndarray, ...]):
        self.xp: Any = np
        if device == "cuda":
            import cupy

            self.xp = cupy
        dtype = np.dtype(config.dtype)
        x_train, y_train, x_test, y_test = split
        self.x_train, self.x_test = (self.xp.asarray(a.astype(dtype)) for a in (x_train, x_test))
        self.y_train, self.y_test = (self.xp.asarray(a.astype(np.int64)) for a in (y_train, y_test))
        _random.manual_seed(config.seed)
        self.model = build_mlp(
            x_train.shape[1], config.hidden, 10, config.dropout, dtype=dtype, device=device
        )
        self.buf = self.model.flatten_parameters()
        self.optimizer = AdamW(param_groups(self.buf.params, config.weight_decay), lr=config.lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.max_grad_norm = config.max_grad_norm

    def step(self, idx: np.ndarray) -> tuple[float, int]:
        """One optimizer step on the training samples ``idx``: ``(loss, correct)``."""
        idx = self.xp.asarray(idx)
        xb, yb = self.x_train[idx], self.y_train[idx]
        logits = self.model(xb)
        loss = self.loss_fn(logits, yb)
        self.model.backward(self.loss_fn.backward())
        self.optimizer.step(self.buf.grads, max_grad_norm=self.max_grad_norm)
        return float(loss), _correct(logits, yb)

    def test_correct(self) -> int:
        """Correct test predictions, in eval mode (the running statistics)."""
        self.model.eval()
        return _correct(self.model(self.x_test), self.y_test)


class _TorchRun:
    """The MLP as a torch training loop: torch modules with pyopt.torch's batch norm and
    dropout, torch autograd, :class:`pyopt.torch.optim.AdamW` on torch tensors."""

    def __init__(self, config: TrainConfig, device: str, split: tuple[np.ndarray, ...]):
        import torch
        import torch.optim.lr_scheduler

        import pyopt.torch.optim

        self.torch = torch
        self.lr_scheduler = torch.optim.lr_scheduler
        dtype = getattr(torch, config.dtype)
        x_train, y_train, x_test, y_test = split
        self.x_train, self.x_test = (
            torch.as_tensor(a, dtype=dtype, device=device) for a in (x_train, x_test)
        )
        self.y_train, self.y_test = (
            torch.as_tensor(a, dtype=torch.int64, device=device) for a in (y_train, y_test)
        )
        self.device = device
        torch.manual_seed(config.seed)  # the init, and the dropout masks' seeds
        self.model = build_mlp(
            x_train.shape[1], config.hidden, 10, config.dropout, dtype=config.dtype,
            device=device, framework="torch",
        )  # fmt: skip
        groups = param_groups(dict(self.model.named_parameters()), config.weight_decay, list)
        self.optimizer = pyopt.torch.optim.AdamW(groups, lr=config.lr)
        self.max_grad_norm = config.max_grad_norm

    def step(self, idx: np.ndarray) -> tuple[float, int]:
        """One optimizer step on the training samples ``idx``: ``(loss, correct)``."""
        idx = self.torch.as_tensor(idx, device=self.device)
        xb, yb = self.x_train[idx], self.y_train[idx]
        self.optimizer.zero_grad()
        logits = self.model(xb)
        loss = self.torch.nn.functional.cross_entropy(logits, yb)
        loss.backward()
        self.optimizer.step(max_grad_norm=self.max_grad_norm)
        return loss.item(), _correct(logits, yb)

    def test_correct(self) -> int:
        """Correct test predictions, in eval mode (the running statistics)."""
        self.model.eval()
        with self.torch.no_grad():
            return _correct(self.model(self.x_test), self.y_test)


_RUNS = {"pyopt": _PyoptRun, "torch": _TorchRun}


def _train(
    config: TrainConfig, log: TextIO | None, bar: Progress, threads: int, reason: str
) -> TrainResult:
    started = time.perf_counter()
    device = pick_device(config.device, config.framework)
    bar.status("loading the digits dataset")
    split = load_digits_split(config.test_size, config.seed)
    n, test_count = split[0].shape[0], split[3].shape[0]

    # Init, batch norm, dropout and the optimizer step: their kernels compile (or load
    # from the cache) in the model build and the first step.
    load = KernelLoad(device, ("random", "batchnorm", "optim"))
    bar.note(load.before())
    first_started = time.perf_counter()
    run = _RUNS[config.framework](config, device, split)

    batches = n // config.batch_size + (n % config.batch_size > 1)  # no batch of one for BN
    total_steps = config.epochs * batches
    warmup = min(max(1, round(config.warmup_epochs * batches)), total_steps - 1)
    schedules = run.lr_scheduler
    opt = run.optimizer
    sched = schedules.SequentialLR(
        opt,
        [
            schedules.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup),
            schedules.CosineAnnealingLR(opt, T_max=total_steps - warmup),
        ],
        milestones=[warmup],
    )
    rng = np.random.default_rng(config.seed)
    bar.total = total_steps
    first_step_s = None
    history = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        run.model.train()
        order = rng.permutation(n)
        losses, correct = [], 0
        for b in range(batches):
            if first_step_s is None:
                bar.status(f"epoch {epoch}/{config.epochs} step 1/{batches}: first calls")
            loss, batch_correct = run.step(
                order[b * config.batch_size : (b + 1) * config.batch_size]
            )
            sched.step()
            losses.append(loss)
            correct += batch_correct
            if first_step_s is None:
                first_step_s = time.perf_counter() - first_started
                bar.note(load.after("the model build and first step"))
            bar.advance()
            bar.status(
                f"epoch {epoch}/{config.epochs} step {b + 1}/{batches} "
                f"loss {float(np.mean(losses)):.4f}"
            )
        bar.status(f"epoch {epoch}/{config.epochs}: evaluating")
        test_correct = run.test_correct()
        stats = EpochStats(
            epoch=epoch,
            loss=float(np.mean(losses)),
            train_accuracy=correct / min(n, batches * config.batch_size),
            test_accuracy=test_correct / test_count,
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
    test_correct = run.test_correct()
    return TrainResult(
        config=config,
        device=device,
        history=history,
        test_accuracy=test_correct / test_count,
        test_correct=test_correct,
        test_count=test_count,
        seconds=time.perf_counter() - started,
        first_step_s=first_step_s or 0.0,
        threads=threads,
        threads_reason=reason,
    )


def _correct(logits: Any, y: Any) -> int:
    """How many rows of ``logits`` have their largest value at the class ``y`` names (an
    array or a tensor)."""
    return int((logits.argmax(axis=1) == y).sum())


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
