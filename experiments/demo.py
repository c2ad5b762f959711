"""`python -m experiments.demo`: a one-minute demo, an MLP with Adam and SGG.

The code is experiments/bench/demo.py.
"""

from experiments.bench.demo import main

if __name__ == '__main__':
  main()
