"""Small synthetic ``c4_table/`` and ``breaking/`` results folders.

They hold what ``python -m experiments.pretrain --experiment c4_table``
and ``--experiment breaking`` write (their JSON's schema, and run JSONs
with the fields the claims read), with made-up numbers chosen so that each
verdict is known: the claims and README tests read them from tmp_path.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from experiments.pretraining.c4_table import _pair

SEEDS = (0, 1, 2)
RANK = 8
LR = 0.003
# Test PPL of seeds 0, 1, 2 per row of the C4 table.
ADAM = (100.0, 110.0, 120.0)
C4_PPL = {
  'adam': ADAM,
  'lamb': ADAM,
  'lamb_sgg_momentum': (90.0, 99.0, 111.0),     # SGG better: -10, -11, -9
  'came': ADAM,
  'came_sgg_momentum': (110.0, 121.0, 129.0),   # SGG worse: +10, +11, +9
  'adafactor': ADAM,
  'adafactor_sgg_update': (101.0, 108.0, 121.0),  # tie: +1, -2, +1
  'lora': (110.0, 121.0, 130.0),
  'relora': (130.0, 141.0, 149.0),
  'galore': (115.0, 126.0, 134.0),
  'lora_sgg_momentum': (104.0, 114.0, 124.5),   # better than all three,
  'lora_sgg_update': (109.0, 119.0, 131.0),     # worse than full rank
}
# (key, optimizer, section, base, low rank, paper's 60M PPL)
C4_ROWS = (
  ('adam', 'adam', 'full', None, False, 34.06),
  ('lamb', 'lamb', 'full', None, False, 33.04),
  ('lamb_sgg_momentum', 'lamb_sgg_momentum', 'full', 'lamb', False, None),
  ('adafactor', 'adafactor', 'memory', None, False, 32.57),
  ('adafactor_sgg_update', 'adafactor_sgg_update', 'memory', 'adafactor',
   False, None),
  ('came', 'came', 'memory', None, False, 31.37),
  ('came_sgg_momentum', 'came_sgg_momentum', 'memory', 'came', False, 30.15),
  ('apollo', 'apollo', 'memory', None, False, 31.55),
  ('apollo_sgg_update', 'apollo_sgg_update', 'memory', 'apollo', False,
   30.18),
  ('lora', 'adam', 'lowrank', None, True, 34.99),
  ('relora', 'relora', 'lowrank', None, True, 37.04),
  ('galore', 'galore', 'lowrank', None, True, 34.88),
  ('lora_sgg_update', 'adam_sgg_update', 'lowrank', 'lora', True, 30.62),
  ('lora_sgg_momentum', 'adam_sgg_momentum', 'lowrank', 'lora', True,
   30.62),
)
UNAVAILABLE = {'apollo', 'apollo_sgg_update'}
# The tuning seed's dev loss: LoRA+SGG's momentum form is the dev choice.
TUNE_DEV = {'lora_sgg_momentum': 4.0, 'lora_sgg_update': 4.5}


def _write(path: pathlib.Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, indent=1))


def run_json(optimizer: str, seed: int, lr: float, lora_rank: int = 0,
             batch_size: int = 16, test_ppl: float | None = 100.0,
             diverged: bool = False) -> dict[str, Any]:
  """A pre-training run JSON with the fields the claims read."""
  loss = None if test_ppl is None else float(np.log(test_ppl))
  return {
    'config': {'optimizer': optimizer, 'seed': seed, 'lr': lr,
               'lora_rank': lora_rank, 'batch_size': batch_size,
               'preset': 'tiny', 'corpus': 'bbc_news'},
    'model': {'n_params': 630_000, 'n_trainable': 630_000},
    'provenance': {'device': {'platform': 'cpu', 'cpu_count': 2},
                   'git_commit': '0' * 40},
    'tokens_seen': 100 * batch_size * 128, 'diverged': diverged,
    'test_ppl': test_ppl, 'test_loss': loss, 'dev_loss': 5.0}


def c4_table(results: pathlib.Path, ppl: dict[str, tuple] | None = None
             ) -> pathlib.Path:
  """Writes ``results/c4_table`` (its c4_table.json and runs)."""
  ppl = {**C4_PPL, **(ppl or {})}
  folder = results / 'c4_table'
  rows = []
  for key, opt, section, base, low, paper in C4_ROWS:
    rank = RANK if low else 0
    row = {'key': key, 'section': section, 'optimizer': opt,
           'label': key, 'lora_rank': rank, 'paper_60m': paper,
           'base': base, 'status': 'ok', 'summary': None, 'paired': None}
    if key in UNAVAILABLE:
      row['status'] = f'{opt} needs sgg_optax.{opt}'
      rows.append(row)
      continue
    values = list(ppl[key])
    finished = [v for v in values if v is not None]
    row['summary'] = {
      'lr': LR, 'lr_at_grid_edge': False, 'ppl': values,
      'ppl_mean': float(np.mean(finished)),
      'ppl_std': float(np.std(finished, ddof=1)) if len(finished) > 1
      else 0.0,
      'n_diverged': len(values) - len(finished),
      'tune_dev_loss': TUNE_DEV.get(key, 5.0)}
    row['hyperparameters'] = 'b1 0.9'
    row['n_params'] = 630_000
    rows.append(row)
    for seed, v in enumerate(values):
      _write(folder / 'runs' / f'{key}_s{seed}.json',
             run_json(opt, seed, LR, rank, test_ppl=v, diverged=v is None))
    # The tuning seed, and a learning rate the row did not choose.
    _write(folder / 'runs' / f'{key}_s100.json',
           run_json(opt, 100, LR, rank))
    _write(folder / 'runs' / f'{key}_lr_s0.json',
           run_json(opt, 0, LR / 3, rank, test_ppl=1e3))
  _pair(rows)   # each SGG row's paired column, as the table computes it
  _write(folder / 'c4_table.json', {
    'experiment': 'c4_table', 'rank': RANK, 'lr_grid': [LR / 3, LR],
    'max_extensions': 2, 'seeds': len(SEEDS), 'tune_seed': 100,
    't_frac': 0.05, 'base_config': {
      'preset': 'tiny', 'corpus': 'bbc_news', 'seq_len': 128,
      'batch_size': 16, 'steps': 100, 'beta3': 0.9},
    'rows': rows})
  return folder


BREAKING_OPTS = ('adam', 'adam_sgg_update', 'lamb', 'lamb_sgg_momentum')


def _record(seed: int, diverged: bool, loss: float = 5.0) -> dict[str, Any]:
  return {'seed': seed, 'diverged': diverged,
          'reason': 'nan' if diverged else None, 'steps_done': 100,
          'max_spike': None if diverged else 0.1,
          'final_train_loss': None if diverged else loss,
          'test_loss': None if diverged else loss}


def breaking(results: pathlib.Path, adam_breaks: bool = True,
             split_seeds: int = 3) -> pathlib.Path:
  """Writes ``results/breaking``: multipliers 1, 10, 100 at batch 4 and 16.

  With ``adam_breaks``, Adam diverges on every seed at 100x in both batch
  sizes and Adam+SGG (update) on none (6 seeds where only Adam diverged),
  LAMB+SGG once where LAMB did not; without it nothing diverges.
  """
  folder = results / 'breaking'
  cells = []
  for bs in (4, 16):
    for m in (1.0, 10.0, 100.0):
      split = adam_breaks and m == 100.0
      n = split_seeds if split else 1
      runs = {}
      for opt in BREAKING_OPTS:
        div = [split and (opt == 'adam' or (opt == 'lamb_sgg_momentum'
                                            and bs == 4 and s == 0))
               for s in range(n)]
        # SGG ends 0.01 nats below its base where both finish.
        loss = 4.99 if 'sgg' in opt else 5.0
        runs[opt] = [_record(s, d, loss) for s, d in enumerate(div)]
      cells.append({'batch_size': bs, 'multiplier': m, 'lr': 0.001 * m,
                    'split': split, 'runs': runs})
  _write(folder / 'breaking.json', {
    'experiment': 'breaking', 'base_lr': 0.001,
    'multipliers': [1.0, 10.0, 100.0], 'batch_sizes': [4, 16], 'seeds': 1,
    'split_seeds': split_seeds, 'past': 1, 'optimizers': list(BREAKING_OPTS),
    'clip_norm': 0.0, 'warmup_frac': 0.0, 'steps': 100,
    'divergence_factor': 3.0, 'cells': cells})
  for bs in (4, 16):
    _write(folder / 'runs' / f'adam_bs{bs}.json',
           run_json('adam', 0, 0.001, batch_size=bs))
  return folder
