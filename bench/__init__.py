"""Benchmarks: one module per kernel family; results under ``bench/results/``."""
