"""Measuring scripts (python -m fsbench.perf [knn-memory|timing|grid], python -m fsbench.perf.<name>).

They build benchmarks and methods and so import methods/ and benchmarks/; nothing in the core
imports them.
"""
