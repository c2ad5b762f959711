"""`python -m experiments.reproduce`: re-runs committed runs and compares them.

Re-trains runs of a results folder from their recorded configurations and
compares every metric with the recorded one (bitwise on the machine they
were recorded on). The code is experiments/pretraining/reproduce.py.
"""

import sys

from experiments.pretraining.reproduce import main

if __name__ == '__main__':
  sys.exit(main())
