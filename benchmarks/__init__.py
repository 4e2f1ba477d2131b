"""Datasets; importing this package registers each one in fsbench.registry.BENCHMARKS."""
