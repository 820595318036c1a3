"""Numba CUDA simulator support: the warp intrinsics our kernels use, and tiny launches.

The simulator (``NUMBA_ENABLE_CUDASIM=1``) runs each CUDA thread as a Python thread, one
block at a time, but its ``FakeCUDAModule`` has no warp shuffles. ``install()`` adds
``shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``, ``shfl_xor_sync`` and ``syncwarp``
with the hardware semantics (``__shfl_*_sync`` with ``width = 32``):

* every lane of the warp publishes its value in a per-warp buffer, waits on a per-warp
  barrier and reads its source lane's value (two buffers used in turn);
* a source lane outside ``[0, 32)`` gives the caller its own value, like the hardware;
* only the full mask ``0xFFFFFFFF`` is supported.

Constraint (the same one the kernels document in ``kernels/cuda/_reduce.py``): every
lane of a warp must call the shuffle together, so no early ``return`` and no branch that
splits a warp before a reduction; a block's thread count must be a multiple of 32 (a
shuffle that reads a lane the block does not have raises). A warp whose lanes do not all
arrive fails with a ``RuntimeError`` after ``_BARRIER_TIMEOUT_S`` instead of hanging.

``install()`` also makes ``cuda.shared.array`` thread-safe: the simulator's version looks up
the block's array by call site and creates it when missing, unlocked, so two threads of a
block can each create one and write their partials into arrays the others never read
(seen as a NaN grad norm from ``np.empty`` garbage in a loaded CI run).

And it replaces the simulator's block scheduler: its ``BlockManager.run`` busy-polls every
thread of the block for ``syncthreads`` arrivals, holding the GIL against the very threads
it waits for (on a loaded 2-core machine, half the simulator's time). ``_run_block`` keeps
its semantics (``syncthreads`` releases once every thread still running has arrived, a
thread that returns no longer counts, the first thread exception aborts the block and is
raised) with one condition variable per block that the threads signal.

``SMALL_LAUNCH`` shrinks ``pyopt.kernels.config`` so that inputs of a few hundred
elements span several blocks, partial blocks, several partials per channel and several
grid-stride iterations (apply with ``monkeypatch.setattr``; see ``conftest.small_launch``).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

WARP_SIZE = 32
FULL_MASK = 0xFFFFFFFF
_BARRIER_TIMEOUT_S = 60.0

SMALL_LAUNCH = {
    "CUDA_THREADS": 64,  # two warps: exercises the cross-warp step of block reductions
    "CUDA_BLOCKS_PER_SM": 2,
    "CUDA_SM_COUNT": 2,  # 4 resident blocks: several partials per channel when C < 4
    "CUDA_MIN_CHUNK": 8,
    "CUDA_FINALIZE_ROWS": 2,  # (32, 2) finalize blocks: two warps, two partials per pass
    "CUDA_OPTIM_CHUNK": 160,  # units of 1.25 trips of 64 threads x 2: partial trips, many units
}

_lock = threading.Lock()


class _Warp:
    """Exchange buffers and barrier shared by the lanes of one warp of the running block.

    Two buffers used alternately make one barrier per exchange enough: a lane can write
    exchange k + 2 only after every lane has reached exchange k + 1, that is, after
    every lane has read exchange k.
    """

    def __init__(self, lanes: int):
        self.lanes = lanes
        self.buffers = ([None] * lanes, [None] * lanes)
        self.count = [0] * lanes  # exchanges made so far, per lane
        self.barrier = threading.Barrier(lanes)

    def exchange(self, name: str, lane: int, value, src: int):
        slots = self.buffers[self.count[lane] % 2]
        self.count[lane] += 1
        slots[lane] = value
        try:
            self.barrier.wait(timeout=_BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise RuntimeError(
                f"cuda.{name}: not every lane of the warp reached it (a divergent warp, or "
                "a thread that returned early)"
            ) from None
        if not 0 <= src < WARP_SIZE:
            return value
        if src >= self.lanes:
            raise RuntimeError(
                f"cuda.{name}: lane {lane} reads lane {src}, which this block does not have "
                "(blocks must have a multiple of 32 threads)"
            )
        return slots[src]


def _warp(module, warp_id: int) -> _Warp:
    # One FakeCUDAModule per launch and one block running at a time: the warps of a
    # module are those of its running block (a block leaves them reusable by the next).
    with _lock:
        warps = module.__dict__.setdefault("_pyopt_warps", {})
        if warp_id not in warps:
            block = module.blockDim
            nthreads = block.x * block.y * block.z
            warps[warp_id] = _Warp(min(WARP_SIZE, nthreads - warp_id * WARP_SIZE))
        return warps[warp_id]


def _exchange(module, name, mask, value, source_lane):
    if mask & FULL_MASK != FULL_MASK:
        raise NotImplementedError(f"cuda.{name}: the simulator supports the full mask only")
    warp_id, lane = divmod(threading.current_thread().thread_id, WARP_SIZE)
    return _warp(module, warp_id).exchange(name, lane, value, source_lane(lane))


def _shfl_sync(self, mask, value, src_lane):
    return _exchange(self, "shfl_sync", mask, value, lambda lane: src_lane % WARP_SIZE)


def _shfl_up_sync(self, mask, value, delta):
    return _exchange(self, "shfl_up_sync", mask, value, lambda lane: lane - delta)


def _shfl_down_sync(self, mask, value, delta):
    return _exchange(self, "shfl_down_sync", mask, value, lambda lane: lane + delta)


def _shfl_xor_sync(self, mask, value, lane_mask):
    return _exchange(self, "shfl_xor_sync", mask, value, lambda lane: lane ^ lane_mask)


def _syncwarp(self, mask=FULL_MASK):
    _exchange(self, "syncwarp", mask, None, lambda lane: lane)


_INTRINSICS = {
    "shfl_sync": _shfl_sync,
    "shfl_up_sync": _shfl_up_sync,
    "shfl_down_sync": _shfl_down_sync,
    "shfl_xor_sync": _shfl_xor_sync,
    "syncwarp": _syncwarp,
}


_shared_lock = threading.Lock()


def _shared_array(self, shape, dtype, alignment=None):
    """``FakeCUDAShared.array`` with its lookup-or-create under a lock (same keys: the
    caller's file and line; dynamic shared memory and alignment go to the original)."""
    if shape == 0 or alignment is not None:
        return _ORIGINAL_SHARED_ARRAY(self, shape, dtype, alignment)
    from numba.cuda import types
    from numba.cuda.np import numpy_support

    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    caller = sys._getframe(1)
    key = (caller.f_code.co_filename, caller.f_lineno)
    with _shared_lock:
        res = self._allocations.get(key)
        if res is None:
            res = self._allocations[key] = np.empty(shape, dtype)
    return res


_ORIGINAL_SHARED_ARRAY = None


class _BlockSync:
    """``syncthreads`` of one simulated block: the threads arrived, exited and failed."""

    def __init__(self, nthreads: int):
        self.nthreads = nthreads
        self.arrived = 0
        self.exited = 0
        self.generation = 0
        self.failed = None  # the first BlockThread that raised
        self.abort = False
        self.cond = threading.Condition(threading.Lock())

    def release_if_complete(self) -> None:
        """Release the waiting threads once every running thread has arrived (lock held)."""
        if self.arrived and self.arrived + self.exited == self.nthreads:
            self.arrived = 0
            self.generation += 1
            self.cond.notify_all()


def _syncthreads(self):
    """``BlockThread.syncthreads``: wait for every thread of the block still running."""
    sync = self._manager._pyopt_sync
    with sync.cond:
        if sync.abort:
            raise RuntimeError("abort flag set on syncthreads call")
        sync.arrived += 1
        generation = sync.generation
        sync.release_if_complete()
        while sync.generation == generation and not sync.abort:
            sync.cond.wait()
        if sync.abort:
            raise RuntimeError("abort flag set on syncthreads clear")


def _thread_run(self):
    """``BlockThread.run`` that tells the block's ``_BlockSync`` when the thread ends."""
    try:
        _ORIGINAL_THREAD_RUN(self)  # records an exception in self.exception
    finally:
        sync = self._manager._pyopt_sync
        with sync.cond:
            sync.exited += 1
            if self.exception is not None and sync.failed is None:
                sync.failed = self
            sync.release_if_complete()
            sync.cond.notify_all()  # wakes _run_block


def _run_block(self, grid_point, *args):
    """``BlockManager.run``: run one block's threads to completion, no polling."""
    from numba.cuda.simulator.kernel import BlockThread

    def target():
        self._f(*args)

    threads = [
        BlockThread(target, self, grid_point, block_point, self._debug)
        for block_point in np.ndindex(*self._block_dim)
    ]
    sync = self._pyopt_sync = _BlockSync(len(threads))
    for t in threads:
        t.start()
    with sync.cond:
        while sync.exited < sync.nthreads and sync.failed is None:
            sync.cond.wait()
        failed = sync.failed
        if failed is not None:  # abort the others (not joined, as in the simulator)
            sync.abort = True
            for t in threads:
                t.abort = True
            sync.cond.notify_all()
    if failed is not None:
        raise failed.exception[0].with_traceback(failed.exception[1])


_ORIGINAL_THREAD_RUN = None


def install() -> None:
    """Add the warp intrinsics to the simulator's ``FakeCUDAModule``, make its shared
    arrays thread-safe and its blocks' ``syncthreads`` signalled, not polled (idempotent).

    Intrinsics the simulator already provides are left alone.
    """
    global _ORIGINAL_SHARED_ARRAY, _ORIGINAL_THREAD_RUN
    from numba.cuda.simulator.kernel import BlockManager, BlockThread
    from numba.cuda.simulator.kernelapi import FakeCUDAModule, FakeCUDAShared

    for name, function in _INTRINSICS.items():
        if not hasattr(FakeCUDAModule, name):
            setattr(FakeCUDAModule, name, function)
    if FakeCUDAShared.array is not _shared_array:
        _ORIGINAL_SHARED_ARRAY = FakeCUDAShared.array
        FakeCUDAShared.array = _shared_array
    if BlockManager.run is not _run_block:
        _ORIGINAL_THREAD_RUN = BlockThread.run
        BlockThread.run = _thread_run
        BlockThread.syncthreads = _syncthreads
        BlockManager.run = _run_block
