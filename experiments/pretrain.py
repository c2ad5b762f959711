"""`python -m experiments.pretrain`: the pre-training experiments, tuned.

Adam and Adafactor with and without SGG on a small LLaMA: the tuned
comparison (LoRA pre-training with `--lora-rank`), robustness to the
learning rate and batch size, ablations and SGG's scales. The code is
experiments/pretraining/ (the command line: pretrain_cli.py).
"""

from experiments.pretraining.pretrain_cli import main

if __name__ == '__main__':
  main()
