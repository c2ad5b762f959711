"""`python -m experiments.claims`: the paper's claims against our runs.

Writes the claims table and its details from the committed run JSONs. The
code is experiments/report/ (the command: claims.py).
"""

from experiments.report.claims import main

if __name__ == '__main__':
  main()
