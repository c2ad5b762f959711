"""Experiment 3: final test loss on an LR x batch-size grid, at equal tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experiments.pretraining.config import LABELS, TrainConfig
from experiments.pretraining.runner import Runner, _recluster, _stats


def robustness(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
               base_lr: float, multipliers: Sequence[float],
               batch_sizes: Sequence[int], seeds: int, t_frac: float
               ) -> dict[str, Any]:
  """Final test loss on an (LR x batch size) grid, at equal tokens.

  Args:
    base: shared configuration (its steps x batch size fix the tokens).
    runner: the run cache.
    optimizers: optimizer names (e.g. adam, adam_sgg_update).
    base_lr: the tuned learning rate the grid multiplies.
    multipliers: LR multiples.
    batch_sizes: global batch sizes.
    seeds: seeds per cell (the mean is reported).
    t_frac: SGG's T as a fraction of each run.

  Returns:
    The grid (JSON-able).
  """
  tokens = base.steps * base.batch_size
  lrs = [base_lr * m for m in multipliers]
  loss: dict[str, list[list[float | None]]] = {o: [] for o in optimizers}
  diverged: dict[str, list[list[int]]] = {o: [] for o in optimizers}
  for bs in batch_sizes:
    steps = max(1, tokens // bs)
    for opt in optimizers:
      row, drow = [], []
      for lr in lrs:
        cfg = _recluster(base.replace(optimizer=opt, lr=lr, batch_size=bs,
                                      steps=steps), t_frac)
        results = [runner.run(cfg.replace(seed=s)) for s in range(seeds)]
        st = _stats([r['test_loss'] for r in results])
        row.append(st['mean'] if st['n_diverged'] == 0 else None)
        drow.append(st['n_diverged'])
      loss[opt].append(row)
      diverged[opt].append(drow)
  return {'experiment': 'robustness', 'base_lr': base_lr,
          'multipliers': list(multipliers), 'lrs': lrs,
          'batch_sizes': list(batch_sizes), 'seeds': seeds,
          'tokens_per_run': tokens * base.seq_len, 'loss': loss,
          'n_diverged': diverged}


def robustness_table(result: dict[str, Any]) -> str:
  """The robustness grid, as Markdown."""
  lrs = result['lrs']
  lines = ['| optimizer | batch | ' + ' | '.join(
    f'lr {lr:.3g} ({m:g}x)' for lr, m in zip(lrs, result['multipliers']))
    + ' |', '|---|---|' + '---|' * len(lrs)]
  for opt, rows in result['loss'].items():
    for bs, row in zip(result['batch_sizes'], rows):
      cells = ['div' if v is None else f'{v:.3f}' for v in row]
      lines.append(f'| {LABELS[opt]} | {bs} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
