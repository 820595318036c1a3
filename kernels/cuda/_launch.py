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
