"""Benchmarks of a running TaskHub stack (entry point: bench/run.py, docs/benchmarks.md)."""
