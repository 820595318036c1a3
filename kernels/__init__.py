"""Numba kernels behind pyopt, installed as ``pyopt.kernels``.

``cpu`` holds ``@njit(parallel=True, cache=True)`` kernels for NumPy arrays and ``cuda``
holds ``numba.cuda`` kernels for device arrays. Both expose launchers with the same
signatures. Kernels know nothing of policy: they take contiguous arrays and scalars,
trust their callers (``pyopt``) to have validated them, and do exactly one thing.

``pyopt.kernels.cuda`` imports ``numba.cuda``; import it only when CUDA is wanted.
"""
