"""The optimizer on its own: benchmarks, a soak test and a one-minute demo.

`step` (``python -m experiments.bench_step``: step time, compile time and
memory against the base optimizer), `overhead` (``bench_overhead``: host
dispatch by depth, train-step compile), `soak` (``soak``: a long SGG run
checked for leaks, slow-down and bad state) and `demo` (``demo``: a small
MLP trained with Adam and with Adam+SGG).
"""
