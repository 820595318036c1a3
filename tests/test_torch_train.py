"""A torch training loop on pyopt against the same loop on torch: a small CNN on
scikit-learn's digits (8x8 images), trained with torch autograd from one initial state,
once with torch's modules and ``torch.optim`` and once after
``pyopt.torch.replace_modules`` with ``pyopt.torch.optim``: the losses agree at every
step to float32 1e-5 (relative) and the final test accuracies to 1%, in NCHW and in
channels_last."""

import copy

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pyopt.torch needs torch (the extra 'torch')")
pytest.importorskip("sklearn", reason="the digits dataset is scikit-learn's")

import pyopt.torch  # noqa: E402
import pyopt.torch.nn  # noqa: E402
import pyopt.torch.optim  # noqa: E402
from pyopt._train import load_digits_split  # noqa: E402

# name: (optimizer class, hyperparameters), one row per optimizer.
OPTIMIZERS = {
    "Adam": ("Adam", {"lr": 1e-2}),
    "SGD-momentum": ("SGD", {"lr": 5e-2, "momentum": 0.9}),
    "AdamW": ("AdamW", {"lr": 1e-2, "weight_decay": 1e-2}),
    "RMSprop": ("RMSprop", {"lr": 1e-3}),
    "Adadelta": ("Adadelta", {"lr": 1.0}),
    "Adagrad": ("Adagrad", {"lr": 5e-2}),
}
MEMORY_FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
STEPS, BATCH = 50, 64
LOSS_RTOL = 1e-5  # float32
ACCURACY_TOL = 0.01


@pytest.fixture(scope="module")
def digits():
    """``(x_train, y_train, x_test, y_test)`` as tensors, the images ``(N, 1, 8, 8)``."""
    x_train, y_train, x_test, y_test = load_digits_split(0.2, 0)
    images = (torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) for x in (x_train, x_test))
    x_train, x_test = images
    return x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One thread each for torch and Numba: on a shared 2-core machine the two runtimes'
    # spinning pools starve each other (20x slower here); the results do not need more.
    saved = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])


def _cnn() -> torch.nn.Sequential:
    """Conv -> BatchNorm2d -> SiLU, twice (8x8, then 4x4 after a stride of 2) -> Linear.

    Smooth: with ReLU, one batch-norm output that is ~1e-7 on either side of 0 in the two
    models (float32 rounding where the normalized value and the bias cancel) lets the
    gradient through in one model only, and a sign-like rule (Adagrad's first steps)
    turns that into losses 1e-4 apart within 13 steps: a kink, not a kernel difference.
    """
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.SiLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.SiLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10),
    )


def _step(model, optimizer, x, y) -> float:
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


@pytest.mark.parametrize("layout", MEMORY_FORMATS)
@pytest.mark.parametrize("rule", OPTIMIZERS)
def test_cnn_on_pyopt_trains_as_on_torch(digits, rule, layout):
    cls, hyperparameters = OPTIMIZERS[rule]
    memory_format = MEMORY_FORMATS[layout]
    x_train, y_train, x_test, y_test = digits
    x_train, x_test = (x.contiguous(memory_format=memory_format) for x in (x_train, x_test))
    torch.manual_seed(0)
    reference = _cnn().to(memory_format=memory_format)
    model = pyopt.torch.replace_modules(copy.deepcopy(reference))
    assert type(model[1]) is type(model[4]) is pyopt.torch.nn.BatchNorm2d
    reference_opt = getattr(torch.optim, cls)(reference.parameters(), **hyperparameters)
    opt = getattr(pyopt.torch.optim, cls)(model.parameters(), **hyperparameters)
    # The flat buffers keep each param's layout: channels_last conv weights stay so.
    assert model[3].weight.is_contiguous(memory_format=memory_format)

    rng = np.random.default_rng(0)
    for step in range(STEPS):
        idx = torch.from_numpy(rng.choice(len(x_train), BATCH, replace=False))
        x, y = x_train[idx].contiguous(memory_format=memory_format), y_train[idx]
        want = _step(reference, reference_opt, x, y)
        got = _step(model, opt, x, y)
        assert abs(got - want) <= LOSS_RTOL * abs(want), (step, got, want)

    want, got = (_accuracy(m, x_test, y_test) for m in (reference, model))
    assert want > 0.9  # trained: the accuracies compared are those of a working model
    assert abs(got - want) <= ACCURACY_TOL, (got, want)
    with torch.no_grad():  # pyopt's batch norm kept the layout (eval: nothing changes)
        assert model[:2](x_test).is_contiguous(memory_format=memory_format)
