"""Experiment 3: robustness to the learning rate and the batch size.

`robustness`: final test loss on an LR x batch-size grid, at equal tokens,
in the main job's regime. `breaking`: where Adam breaks (gradient clipping
off, a short or no warm-up, learning rates upward until it diverges), with
every seed's divergence, largest loss spike and final loss.
"""

from __future__ import annotations

import math
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


# --- Where Adam breaks: no clipping, no warm-up, LRs upward, per seed ------


def max_spike(train: Sequence[Sequence[float]]) -> float | None:
  """The largest rise of the training loss above its running minimum.

  ``max_t (loss_t - min_{s<t} loss_s)`` in nats (the log of the perplexity
  ratio); 0 for a curve that never rises, None when a loss is non-finite.
  """
  best, out = math.inf, 0.0
  for point in train:
    loss = point[1]
    if loss is None or not math.isfinite(loss):
      return None
    if best < math.inf:
      out = max(out, loss - best)
    best = min(best, loss)
  return out


def _record(result: dict[str, Any]) -> dict[str, Any]:
  """What `breaking` keeps of one run: divergence, spike, final losses."""
  return {
    'seed': result['config']['seed'], 'diverged': result['diverged'],
    'reason': result['divergence_reason'],
    'steps_done': result['steps_done'],
    'max_spike': max_spike(result['curves']['train']),
    'final_train_loss': result['final_train_loss'],
    'test_loss': result['test_loss']}


def breaking(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
             base_lr: float, multipliers: Sequence[float],
             batch_sizes: Sequence[int], seeds: int, split_seeds: int,
             past: int, t_frac: float) -> dict[str, Any]:
  """Learning rates from the tuned one upward until the first optimizer
  (Adam) diverges, at each batch size, for every optimizer and seed.

  ``base`` carries the regime (gradient clipping off, a short or no
  warm-up); every cell runs ``base.steps`` steps. At each batch size the
  multipliers are tried in increasing order, every optimizer on each,
  until the first optimizer has diverged on every seed of ``past + 1``
  multipliers in a row (``past`` more after it first breaks). A cell where
  one optimizer diverged on some seed and another finished some seed gets
  seeds up to ``split_seeds``, for every optimizer: a divergence can be
  luck.

  Args:
    base: shared configuration (clip_norm 0 and warmup_frac set).
    runner: the run cache.
    optimizers: the first is the reference (Adam).
    base_lr: the tuned learning rate the multipliers scale.
    multipliers: LR multiples, tried in increasing order.
    batch_sizes: global batch sizes.
    seeds: seeds per cell.
    split_seeds: seeds of a cell where optimizers disagree.
    past: multipliers to run after the reference has diverged on every seed.
    t_frac: SGG's T as a fraction of each run.

  Returns:
    Per batch size and multiplier, per optimizer, one record per seed
    (`_record`), and a count of the disagreements (JSON-able).
  """
  cells: list[dict[str, Any]] = []
  ref = optimizers[0]
  for bs in batch_sizes:
    broken = 0
    for m in sorted(multipliers):
      cfgs = {o: _recluster(base.replace(optimizer=o, lr=base_lr * m,
                                         batch_size=bs), t_frac)
              for o in optimizers}
      runs = {o: [runner.run(c.replace(seed=s)) for s in range(seeds)]
              for o, c in cfgs.items()}
      div = {o: [r['diverged'] for r in rs] for o, rs in runs.items()}
      split = any(any(d) for d in div.values()) and any(
        not all(d) for d in div.values())
      if split:
        for o, c in cfgs.items():
          runs[o] += [runner.run(c.replace(seed=s))
                      for s in range(seeds, split_seeds)]
      cells.append({'batch_size': bs, 'multiplier': m, 'lr': base_lr * m,
                    'split': split,
                    'runs': {o: [_record(r) for r in rs]
                             for o, rs in runs.items()}})
      broken = broken + 1 if all(r['diverged'] for r in runs[ref]) else 0
      if broken > past:
        break
  return {'experiment': 'breaking', 'base_lr': base_lr,
          'multipliers': sorted(multipliers), 'batch_sizes': list(batch_sizes),
          'seeds': seeds, 'split_seeds': split_seeds, 'past': past,
          'optimizers': list(optimizers), 'clip_norm': base.clip_norm,
          'warmup_frac': base.warmup_frac, 'steps': base.steps,
          'divergence_factor': base.divergence_factor, 'cells': cells,
          'counts': _counts(cells, ref)}


def _counts(cells: Sequence[dict[str, Any]], ref: str) -> dict[str, Any]:
  """Per optimizer against the reference, over cells and matching seeds:
  how often exactly one of the two diverged, and which."""
  out: dict[str, Any] = {}
  for cell in cells:
    base_runs = cell['runs'][ref]
    for opt, runs in cell['runs'].items():
      if opt == ref:
        continue
      c = out.setdefault(opt, {'pairs': 0, 'only_ref_diverged': 0,
                               'only_this_diverged': 0, 'both_diverged': 0})
      for a, b in zip(runs, base_runs):
        c['pairs'] += 1
        if a['diverged'] and b['diverged']:
          c['both_diverged'] += 1
        elif b['diverged']:
          c['only_ref_diverged'] += 1
        elif a['diverged']:
          c['only_this_diverged'] += 1
  return out


def _cell_text(records: Sequence[dict[str, Any]]) -> str:
  n_div = sum(r['diverged'] for r in records)
  spikes = [r['max_spike'] for r in records if r['max_spike'] is not None]
  done = [r['test_loss'] for r in records if r['test_loss'] is not None]
  text = f'{n_div}/{len(records)} div'
  if spikes:
    text += f', spike {max(spikes):.2f}'
  if done:
    text += f', {sum(done) / len(done):.3f}'
  return text


def breaking_title(result: dict[str, Any]) -> str:
  """The grid's heading: its regime, from the result."""
  return (f'Where Adam breaks: {result["steps"]} steps per cell, gradient '
          f'clipping {result["clip_norm"] or "off"}, warm-up '
          f'{result["warmup_frac"]:.0%}, tuned Adam LR {result["base_lr"]:g}; '
          'per cell: diverged seeds / seeds (NaN/Inf or loss over '
          f'{result["divergence_factor"]}x the first), largest spike (nats '
          'over the running minimum), mean final test loss of the finished '
          'seeds')


def breaking_table(result: dict[str, Any]) -> str:
  """The grid as Markdown: per cell, diverged seeds / seeds, the largest
  spike (nats above the running minimum) and the mean final test loss of
  the seeds that finished."""
  opts = result['optimizers']
  lines = ['| batch | LR (x tuned) | ' + ' | '.join(LABELS.get(o, o)
                                                   for o in opts) + ' |',
           '|---|---|' + '---|' * len(opts)]
  for cell in result['cells']:
    texts = [_cell_text(cell['runs'][o]) for o in opts]
    lines.append(f'| {cell["batch_size"]} | {cell["lr"]:.3g} '
                 f'({cell["multiplier"]:g}x) | ' + ' | '.join(texts) + ' |')
  return '\n'.join(lines)
