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


@cuda.jit
def _rotate_through_shared(out, rounds):
    """Each round, every thread publishes a value and reads its neighbour's after a
    ``syncthreads``; thread 0 is slow to publish, so an early release reads a stale value."""
    smem = cuda.shared.array(64, np.int64)
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    acc = np.int64(0)
    for r in range(rounds):
        if t == 0:
            for i in range(2000):  # a delay
                acc += i - i
        smem[t] = (cuda.blockIdx.x * 1000 + r) * 100 + t
        cuda.syncthreads()
        acc += smem[(t + 1) % n]
        cuda.syncthreads()  # nobody overwrites smem before every thread has read it
    out[cuda.blockIdx.x, t] = acc


@pytest.mark.skipif(not CUDASIM, reason="the simulator's block scheduler (tests/_cudasim.py)")
def test_simulator_syncthreads_waits_for_every_thread():
    out = cuda.device_array((3, 64), np.int64)
    rounds = 4
    _rotate_through_shared[3, 64](out, rounds)
    t = np.arange(64)
    b = np.arange(3)[:, None]
    r = np.arange(rounds)[:, None, None]
    expected = ((b * 1000 + r) * 100 + (t + 1) % 64).sum(axis=0)
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@cuda.jit
def _early_return_then_count(out):
    t = cuda.threadIdx.x
    if t >= 40:
        return  # the simulator lets the remaining threads' syncthreads proceed without it
    out[t] = cuda.syncthreads_count(t % 2)


@cuda.jit
def _one_thread_raises(out):
    t = cuda.threadIdx.x
    cuda.syncthreads()
    if cuda.blockIdx.x == 1 and t == 7:
        raise ValueError("thread seven failed")
    cuda.syncthreads()
    out[cuda.blockIdx.x, t] = 1


@pytest.mark.skipif(not CUDASIM, reason="the simulator's block scheduler (tests/_cudasim.py)")
def test_simulator_block_early_return_and_exception():
    out = cuda.to_device(np.full(64, -1, np.int64))
    _early_return_then_count[1, 64](out)
    np.testing.assert_array_equal(out.copy_to_host(), np.r_[np.full(40, 20), np.full(24, -1)])
    flags = cuda.to_device(np.zeros((3, 64), np.int64))
    with pytest.raises(ValueError, match=r"tid=\[7, 0, 0\] ctaid=\[1, 0, 0\]: thread seven"):
        _one_thread_raises[3, 64](flags)
    np.testing.assert_array_equal(flags.copy_to_host()[0], 1)  # block 0 ran to the end
