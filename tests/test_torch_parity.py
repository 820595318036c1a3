"""Parity with torch.nn.BatchNorm{1,2,3}d: forward, autograd backward, running stats, modes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CUDASIM, TOL, assert_close, to_backend, to_host

import pyopt.nn

torch = pytest.importorskip("torch", reason="torch is needed for the parity tests")

TORCH_LAYERS = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}
OURS = {1: pyopt.nn.BatchNorm1d, 2: pyopt.nn.BatchNorm2d, 3: pyopt.nn.BatchNorm3d}

# (kind, NCHW-style shape): sizes 1, primes, 1023 and 1025 per channel, a large batch.
CASES = [
    (1, (2, 5)),
    (1, (1025, 3)),
    (1, (3, 4, 341)),
    (1, (2, 1, 7)),
    (2, (5, 2, 205, 1)),
    (2, (4, 3, 7, 11)),
    (2, (64, 16, 9, 9)),
    (3, (2, 3, 2, 5, 3)),
    (3, (3, 1, 4, 3, 5)),
]
SIM_CASES = [(1, (7, 3)), (2, (3, 2, 3, 5)), (3, (2, 2, 2, 3, 2))]

CONFIGS = {
    "default": dict(),
    "momentum_none": dict(momentum=None),
    "no_affine": dict(affine=False),
    "no_bias": dict(bias=False),  # torch's keyword-only bias: a scale without a shift
    "no_tracking": dict(track_running_stats=False),
    "momentum_eps": dict(momentum=0.3, eps=1e-3),
}


def channels_last(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(arr, 1, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_layer_matches_torch(backend, dtype, config, layout):
    kwargs = CONFIGS[config]
    cases = SIM_CASES if backend == "cuda" and CUDASIM else CASES
    tdtype = getattr(torch, np.dtype(dtype).name)
    rng = np.random.default_rng(0)
    for kind, shape in cases:
        if layout == "channels_last" and len(shape) == 2:
            continue  # rank 2 has one layout
        channels = shape[1]
        ref = TORCH_LAYERS[kind](channels, dtype=tdtype, **kwargs)
        axis = 1 if layout == "nchw" else -1
        ours = OURS[kind](channels, dtype=dtype, device=backend, axis=axis, **kwargs)
        if ref.affine:  # non-trivial parameters, identical on both sides
            w = rng.uniform(0.5, 1.5, channels).astype(dtype)
            b = rng.standard_normal(channels).astype(dtype)
            with torch.no_grad():
                ref.weight.copy_(torch.from_numpy(w))
                if ref.bias is not None:
                    ref.bias.copy_(torch.from_numpy(b))
            affine = {"weight": w, "bias": b} if ref.bias is not None else {"weight": w}
            ours.load_state_dict({**ours.state_dict(), **affine})
        for step in range(4):
            training = step < 3
            ref.train(training)
            ours.train(training)
            x = (step + (1 + step) * rng.standard_normal(shape)).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            tx = torch.from_numpy(x).requires_grad_(True)
            ty = ref(tx)
            ty.backward(torch.from_numpy(dy))
            ox = x if layout == "nchw" else channels_last(x)
            ody = dy if layout == "nchw" else channels_last(dy)
            y = ours(to_backend(ox, backend))
            dx = ours.backward(to_backend(ody, backend))
            expect_y = ty.detach().numpy()
            expect_dx = tx.grad.numpy()
            if layout == "channels_last":
                expect_y, expect_dx = channels_last(expect_y), channels_last(expect_dx)
            what = f"{kind}d {shape} step {step}"
            tol = TOL[np.dtype(dtype)]
            assert_close(y, expect_y, dtype, scale_tol=tol * 2, what=f"y {what}")
            assert_close(dx, expect_dx, dtype, scale_tol=tol * 5, what=f"dx {what}")
            if ref.affine:
                n = x.size // channels
                gtol = tol * max(1.0, np.sqrt(n))
                assert_close(
                    ours.weight_grad, ref.weight.grad.numpy(), dtype, gtol, f"dweight {what}"
                )
                if ref.bias is None:
                    assert ours.bias is None and ours.bias_grad is None
                else:
                    assert_close(
                        ours.bias_grad, ref.bias.grad.numpy(), dtype, gtol, f"dbias {what}"
                    )
                    ref.bias.grad = None
                ref.weight.grad = None
            else:
                assert ours.weight_grad is None and ours.bias_grad is None
            expected_state = {k: v.numpy() for k, v in ref.state_dict().items()}
            got_state = ours.state_dict()
            assert set(got_state) == set(expected_state)
            for key, value in expected_state.items():
                if key == "num_batches_tracked":
                    assert int(got_state[key]) == int(value)
                else:
                    assert_close(
                        got_state[key], value, dtype, scale_tol=tol * 2, what=f"{key} {what}"
                    )


def test_functional_matches_torch_functional(backend):
    rng = np.random.default_rng(3)
    shape = (6, 4, 5) if backend == "cpu" or not CUDASIM else (3, 2, 5)
    x = rng.standard_normal(shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    rm_before = rm.copy()
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), trm, trv, training=True, momentum=0.2, eps=1e-4
    )
    d_rm, d_rv = to_backend(rm, backend), to_backend(rv, backend)
    y, _, _ = pyopt.functional.batch_norm(
        to_backend(x, backend),
        running_mean=d_rm,
        running_var=d_rv,
        training=True,
        momentum=0.2,
        eps=1e-4,
    )
    assert_close(y, expected.numpy(), np.float64, what="y")
    assert_close(d_rm, trm.numpy(), np.float64, what="running_mean")
    assert_close(d_rv, trv.numpy(), np.float64, what="running_var")
    assert np.all(to_host(d_rm) != rm_before)  # updated in place
