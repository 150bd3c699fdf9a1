"""Benchmark helpers: the peer comparison (``python -m fastnn.bench``), the
plain-NumPy reference MLP, and the CI floor check (``python -m fastnn.bench.floors``).

Nothing here is imported by ``import fastnn``; this package only uses fastnn's
public API, so it measures what a user gets.
"""
