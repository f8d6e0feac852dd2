"""Harnesses shared by the benchmarks in `bench/` and the tests in `tests/`: the fault matrix,
the fault soak and a throwaway PostgreSQL cluster.

They live here so that `bench/` stands on its own: the tests import them (`bench.harness.…`),
nothing in `bench/` imports `tests` (`tests/test_static_checks.py` checks it). No pytest here.
"""
