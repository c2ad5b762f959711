"""`python -m experiments.train`: trains one LLaMA and writes its results JSON.

One run of the pre-training loop, from one CPU to a pod. The code is
experiments/pretraining/ (the command line: train_cli.py).
"""

import logging

from experiments.pretraining.train_cli import main

if __name__ == '__main__':
  logging.basicConfig(level=logging.WARNING)
  main()
