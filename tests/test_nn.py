"""The BatchNorm layer API, device selection and the package's import behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import to_backend, to_host

import pyopt
from pyopt import _backend
from pyopt.nn import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d


@pytest.mark.parametrize(
    ("layer", "good", "bad"),
    [
        (BatchNorm1d, [(4, 3), (4, 3, 5)], [(4, 3, 2, 2)]),
        (BatchNorm2d, [(4, 3, 2, 2)], [(4, 3), (4, 3, 2, 2, 2)]),
        (BatchNorm3d, [(4, 3, 2, 2, 2)], [(4, 3, 2, 2)]),
    ],
)
def test_rank_checks_follow_torch(layer, good, bad):
    bn = layer(3, device="cpu")
    for shape in good:
        assert bn(np.ones(shape, np.float32)).shape == shape
    for shape in bad:
        with pytest.raises(ValueError, match=f"got {len(shape)}D input"):
            bn(np.ones(shape, np.float32))


def test_state_dict_round_trip_and_strict_keys(backend):
    rng = np.random.default_rng(0)
    bn = BatchNorm2d(3, device=backend)
    for _ in range(3):
        bn(to_backend(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), backend))
    state = bn.state_dict()
    assert int(state["num_batches_tracked"]) == 3
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fresh = BatchNorm2d(3, device=backend)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "bias"})
    with pytest.raises(ValueError, match="running_var"):
        fresh.load_state_dict({**state, "weight": state["weight"] + 1, "running_var": np.ones(4)})
    for key, value in fresh.state_dict().items():  # a failed load changes nothing
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_eval_uses_running_stats_and_train_updates_them(backend):
    rng = np.random.default_rng(1)
    bn = BatchNorm1d(2, momentum=0.5, device=backend)
    x = (5 + rng.standard_normal((8, 2))).astype(np.float32)
    bn(to_backend(x, backend))
    rm = to_host(bn.running_mean)
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=0), rtol=1e-5)
    bn.eval()
    y = to_host(bn(to_backend(x, backend)))
    expected = (x - rm) / np.sqrt(to_host(bn.running_var) + bn.eps)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(to_host(bn.running_mean), rm)
    assert bn.num_batches_tracked == 1


def test_momentum_none_is_a_cumulative_average():
    rng = np.random.default_rng(2)
    bn = BatchNorm1d(3, momentum=None, dtype=np.float64, device="cpu")
    batches = [rng.standard_normal((5, 3)) + i for i in range(4)]
    for x in batches:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(0) for b in batches], axis=0))
    np.testing.assert_allclose(bn.running_var, np.mean([b.var(0, ddof=1) for b in batches], axis=0))


def test_tracking_off_uses_batch_stats_in_eval():
    bn = BatchNorm1d(2, track_running_stats=False, device="cpu").eval()
    x = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    np.testing.assert_allclose(bn(x), [[-1, -1], [1, 1]], atol=1e-4)
    assert bn.running_mean is None and bn.num_batches_tracked is None
    assert set(bn.state_dict()) == {"weight", "bias"}


def test_failed_forward_changes_nothing():
    bn = BatchNorm1d(3, device="cpu")
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(np.ones((1, 3), np.float32))
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_var, np.ones(3, np.float32))


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm(0, device="cpu")
    with pytest.raises(TypeError, match="num_features"):
        BatchNorm(2.5, device="cpu")
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(3, eps=0, device="cpu")
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=2, device="cpu")
    with pytest.raises(TypeError, match="dtype"):
        BatchNorm(3, dtype=np.int32, device="cpu")
    with pytest.raises(ValueError, match="device"):
        BatchNorm(3, device="gpu")
    bn = BatchNorm2d(3, device="cpu")
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.ones((2, 3, 1, 1), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        bn(np.ones((2, 3, 2, 2), np.float64))


@pytest.mark.sim
def test_device_mismatch_names_x(cuda_backend):
    backend = cuda_backend
    bn = BatchNorm1d(3, device="cpu")
    with pytest.raises(TypeError, match="x is a CUDA array"):
        bn(to_backend(np.ones((4, 3), np.float32), backend))
    bn_cuda = BatchNorm1d(3, device="cuda")
    with pytest.raises(TypeError, match="x is a NumPy array"):
        bn_cuda(np.ones((4, 3), np.float32))


def test_repr_names_the_configuration():
    text = repr(BatchNorm2d(8, momentum=None, axis=-1, device="cpu"))
    assert text.startswith("BatchNorm2d(8,") and "momentum=None" in text and "axis=-1" in text


def test_cuda_requested_where_unusable_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(_backend, "cuda_unavailable_reason", lambda: "numba-cuda is not installed")
    with pytest.raises(RuntimeError, match="numba-cuda is not installed"):
        BatchNorm1d(3, device="cuda")
    assert pyopt.backends() == ("cpu",)
    monkeypatch.setenv("PYOPT_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is unusable"):
        BatchNorm1d(3)
    monkeypatch.setenv("PYOPT_DEVICE", "cpu")
    assert BatchNorm1d(3).device == "cpu"
    monkeypatch.setenv("PYOPT_DEVICE", "tpu")
    with pytest.raises(ValueError, match="PYOPT_DEVICE"):
        BatchNorm1d(3)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_import_is_silent_and_light():
    done = _run_python(
        "import sys, pyopt; print(sorted(m for m in ('numba', 'numba.cuda') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n" and done.stderr == ""


def test_backends_without_a_gpu_is_cpu_only_and_silent():
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    done = _run_python("import pyopt; print(pyopt.backends())")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "('cpu',)\n" and done.stderr == ""
