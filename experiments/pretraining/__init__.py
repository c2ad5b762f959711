"""Pre-training: one LLaMA training loop, and the experiments built on it.

The loop (``python -m experiments.train``), one concern a module:

* `config`: `TrainConfig`, its presets and its command-line flags;
* `distributed`: multi-process start-up, the mesh and its sharding rules;
* `optim`: the optimizers (clipping, Adam/Adafactor + SGG, the schedule,
  the peak learning rate held in the optimizer state);
* `optim_rows`: the paper's other C4 rows (NAdam ... GaLore), with
  `lowrank` (the factorised model) and `relora` (ReLoRA's restarts);
* `streams`: the train/dev/test token streams and the global batches;
* `evaluation`: the dev split and the windows scored on dev and test;
* `step`: the model and optimizer, created sharded, and the jitted steps;
* `checkpointing`: Orbax checkpoints (save, resume, refuse a foreign one);
* `loop`: logging, the clock, periodic work, the record, and `train`;
* `train_cli`: the command line (``main``); `deprecation`: the earlier
  spellings of flags and optimizer names that still work.

The experiments (``python -m experiments.pretrain``): `runner` (the run
cache, learning-rate tuning), `compare` (experiment 1), `robustness`
(experiment 3, and `breaking`), `ablations` (experiment 4), `c4_table`
(the paper's C4 table), `plots`, `table_cli` and `pretrain_cli`.
`reproduce` re-runs committed runs (``python -m experiments.reproduce``).
"""
