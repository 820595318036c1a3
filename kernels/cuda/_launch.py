"""Launch sizing shared by the CUDA launchers (constants in ``pyopt.kernels.config``)."""

from __future__ import annotations

from numba import cuda

from .. import config


def resident_blocks() -> int:
    """Blocks a grid aims for: ``CUDA_BLOCKS_PER_SM`` on every SM of the current device.

    ``config.CUDA_SM_COUNT`` overrides the device's count (tests shrink it).
    """
    sms = config.CUDA_SM_COUNT
    if sms is None:
        # The simulator's device reports no SM count: size grids for one SM there.
        sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)
    return max(1, sms * config.CUDA_BLOCKS_PER_SM)


def grid_blocks(n: int, per_thread: int = 1) -> int:
    """Blocks of ``CUDA_THREADS`` for ``n`` elements, ``per_thread`` elements a thread, at
    most the resident blocks (the kernels grid-stride over the rest); 0 when n == 0."""
    return min(-(-n // (per_thread * config.CUDA_THREADS)), resident_blocks())


def launch(kernel, n: int, args: tuple, stream, per_thread: int = 1) -> None:
    """``kernel(*args)`` over :func:`grid_blocks` ``(n, per_thread)`` blocks of
    ``CUDA_THREADS`` on ``stream`` (None: the default stream); nothing when n == 0."""
    if n > 0:
        grid = grid_blocks(n, per_thread)
        kernel[grid, config.CUDA_THREADS, 0 if stream is None else stream](*args)
