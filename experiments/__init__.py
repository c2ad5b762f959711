"""The experiments: commands at the top level, their code a package each.

Every command is ``python -m experiments.<name>`` (``--help`` for its
flags); its module here only names where the code lives:

===================  =====================================================
command              code
===================  =====================================================
``train``            ``pretraining/`` (one LLaMA pre-training run)
``pretrain``         ``pretraining/`` (the tuned comparison, robustness,
                     ablations, SGG's scales)
``reproduce``        ``pretraining/reproduce.py`` (re-runs committed runs)
``finetune``         ``finetuning/`` (SmolLM2: full, LoRA, Q-LoRA)
``bench_step``       ``bench/step.py`` (step time, compile, memory)
``bench_overhead``   ``bench/overhead.py`` (dispatch by depth, compile)
``soak``             ``bench/soak.py`` (a long run checked for leaks)
``demo``             ``bench/demo.py`` (one minute: an MLP, Adam vs SGG)
``claims``           ``report/`` (the paper's claims against our runs)
``podscale``         ``scaling/`` (the train step compiled for a simulated
                     pod: memory, collectives, compile time per chip)
===================  =====================================================

``common/`` holds what several of them share: corpora, tokenizers and
batches, the NNX LLaMA (and SmolLM2 from GGUF), LoRA, run records and the
command-line argument types. ``results/`` holds committed results, each
folder with the command that made it. experiments/README.md says the same
with one line per module.
"""
