"""Benchmarks (a developer tool): lit_align against TRL and a bare PyTorch loop, and focused measurements.

Run each as a module from the repository root, e.g. ``python -m tools.bench.run --help``.
"""
