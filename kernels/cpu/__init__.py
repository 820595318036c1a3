"""CPU kernels: ``@njit(parallel=True, cache=True)`` over NumPy arrays.

Every launcher is wrapped by ``_launch.parallel_launcher``, so launches from several
Python threads are safe under any Numba threading layer.
"""
