"""`python -m experiments.finetune`: fine-tunes SmolLM2-135M, with/without SGG.

Full, LoRA and Q-LoRA fine-tuning on BBC News (language modelling and topic
classification), every arm tuned on dev and reported on test. The code is
experiments/finetuning/ (the command line: cli.py).
"""

from experiments.finetuning.cli import main

if __name__ == '__main__':
  main()
