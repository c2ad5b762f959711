"""`python -m experiments.podscale`: SGG's cost per chip on a simulated pod.

`experiments.train`'s own train step for 350M-7B LLaMAs, lowered and
compiled on 64-256 fake CPU devices: memory, collectives, conditionals,
FLOPs and compile time against Adam's. The code is experiments/scaling/.
"""

from experiments.scaling.cli import main

if __name__ == '__main__':
  main()
