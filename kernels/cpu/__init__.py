"""CPU kernels: ``@njit(parallel=True, cache=True)`` over NumPy arrays."""
