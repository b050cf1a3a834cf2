"""Benchmarks (not timed tests): each module here with a `main()` is one benchmark.

`python -m bench` runs them all; `python -m bench NAME [ARGS...]` runs one with its arguments.
Figures and the commands that made them go in docs/performance.md.
"""
