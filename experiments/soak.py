"""`python -m experiments.soak`: a long SGG run checked for leaks and drift.

Resident memory, step time and the SGG state over 20,000 steps with
frequent refreshes and checkpoints. The code is experiments/bench/soak.py.
"""

from experiments.bench.soak import main

if __name__ == '__main__':
  main()
