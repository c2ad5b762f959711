"""`python -m experiments.bench_step`: step time, compile time and memory.

SGG against its base optimizer, measured in one process. The code is
experiments/bench/step.py.
"""

from experiments.bench.step import main

if __name__ == '__main__':
  main()
