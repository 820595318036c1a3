"""The CUDA simulator support of ``tests/_cudasim.py``: its warp shuffles follow the
hardware's semantics, and its shared arrays are one array per block."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CUDASIM, cuda_skip_reason

_reason = cuda_skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

from numba import cuda  # noqa: E402

pytestmark = pytest.mark.sim

FULL_MASK = 0xFFFFFFFF


@cuda.jit
def _shuffles(out):
    t = np.int64(cuda.threadIdx.x)
    v = t * 10
    out[0, t] = cuda.shfl_sync(FULL_MASK, v, 5)
    out[1, t] = cuda.shfl_up_sync(FULL_MASK, v, 3)
    out[2, t] = cuda.shfl_down_sync(FULL_MASK, v, 3)
    out[3, t] = cuda.shfl_xor_sync(FULL_MASK, v, 6)


def test_warp_shuffles_follow_hardware_semantics():
    out = cuda.device_array((4, 64), np.int64)
    _shuffles[1, 64](out)
    t = np.arange(64)
    lane, base = t % 32, t - t % 32
    expected = 10 * np.stack(
        [
            base + 5,
            np.where(lane >= 3, t - 3, t),  # from below the warp: own value
            np.where(lane + 3 < 32, t + 3, t),  # from above the warp: own value
            base + (lane ^ 6),
        ]
    )
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@pytest.mark.skipif(not CUDASIM, reason="a fix for the CUDA simulator's shared arrays")
def test_simulator_shared_array_is_one_array_per_block():
    """Threads of a block creating a shared array at once get the same array: the
    simulator's lookup-or-create is unlocked, so a slow lookup made threads diverge."""
    import threading
    import time

    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    class SlowDict(dict):
        def get(self, key, default=None):
            found = super().get(key, default)
            time.sleep(0.02)  # widen the window between the lookup and the insert
            return found

    shared = FakeCUDAShared(0)
    shared._allocations = SlowDict()
    got = []

    def create():
        got.append(shared.array((64,), np.float64))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(a is got[0] for a in got)
