"""`python -m experiments.demo`: one minute of AdamW and AdamW+SGG on an MLP.

The code is experiments/bench/demo.py.
"""

from experiments.bench.demo import main

if __name__ == '__main__':
  main()
