"""orch's benchmarks, runnable alone: `python -m bench [--quick] [--rounds N] [--pg-url URL]`.

Floors are measured first in the same invocation and every figure is printed beside its floor.
Benchmarks print figures; they never fail on them.
"""
