"""Datasets; importing this package registers each one in fsbench.registry.BENCHMARKS."""
from benchmarks import shapes  # noqa: F401  (registers "shapes")
