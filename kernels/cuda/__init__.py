"""CUDA kernels: ``numba.cuda`` kernels and their launchers over device arrays."""
