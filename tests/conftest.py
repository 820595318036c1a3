"""Test configuration: CUDA runs on a real GPU when there is one, else on the simulator.

``NUMBA_ENABLE_CUDASIM`` must be decided before Numba is imported, so it is set here, at
the top of the first module pytest loads. An explicit value in the environment wins.
"""

import os
import sys


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_nvidia_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import pytest  # noqa: E402
from helpers import CUDASIM, cuda_skip_reason  # noqa: E402


def pytest_configure(config):
    if CUDASIM and cuda_skip_reason() is None:
        import _cudasim

        _cudasim.install()
        # The simulator runs a Python thread per CUDA thread; switching between them more
        # often makes barrier-heavy kernels finish sooner.
        sys.setswitchinterval(2e-4)


@pytest.fixture
def small_launch(monkeypatch):
    """Shrink CUDA launch sizes so tiny inputs span several blocks and partial blocks."""
    from _cudasim import SMALL_LAUNCH

    from pyopt.kernels import config

    for name, value in SMALL_LAUNCH.items():
        monkeypatch.setattr(config, name, value)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.sim)])
def backend(request):
    """Each backend-agnostic test runs on the CPU and on CUDA (GPU or simulator)."""
    if request.param == "cuda":
        return request.getfixturevalue("cuda_backend")
    return request.param


@pytest.fixture
def cuda_backend(request):
    """The backend name "cuda", for tests of CUDA-only behaviour (GPU or simulator)."""
    reason = cuda_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    if CUDASIM:
        request.getfixturevalue("small_launch")
    return "cuda"
