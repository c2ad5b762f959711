"""Claim 3, robustness: the LR x batch grid and where Adam breaks.

`grid_row` is the earlier evidence: the main job's regime (clipping at
1.0, warm-up) on an LR x batch grid, one seed per cell, where nothing
diverged. `breaking_row` reads ``breaking/breaking.json`` (``python -m
experiments.pretrain --experiment breaking``: clipping off, learning rates
from Adam's tuned one upward until Adam diverges, every seed's divergence,
largest spike and final loss) and pairs each SGG optimizer with its base
cell by cell and seed by seed: the seeds where exactly one of the two
diverged decide, by an exact two-sided sign test. The details keep the
grid's evidence beside the new one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.finetuning import breaking as ft_breaking
from experiments.pretraining import optim_rows
from experiments.pretraining.config import LABELS
from experiments.pretraining.robustness import breaking_table
from experiments.report.evidence import (
  GPU_REPEAT_NATS,
  _field,
  _runs,
  pick,
  scale_of,
)
from experiments.report.rows import Row

FOLDER = 'breaking'
FINETUNE_FOLDER = 'finetune_breaking'
# An SGG optimizer's base optimizer.
SGG_BASE = {'adam_sgg_update': 'adam', 'adam_sgg_momentum': 'adam',
            'adafactor_sgg_update': 'adafactor'}
SGG_BASE.update({k: r.sgg_base for k, r in optim_rows.ROWS.items()
                 if r.sgg_base})
SPLIT_SEEDS = 3   # a cell where one diverged and another did not
ALPHA = 0.05


def _robustness_cells(root: pathlib.Path) -> dict[str, dict]:
  """The LR x batch grid, seed 0: optimizer -> (lr, batch) -> run. The 1x
  cells at batch 16 are the main job's runs."""
  grid = 'cpu_tiny_robustness_ablations'
  main = 'main_job_cpu'
  cells: dict[str, dict] = {}
  for opt in ('adam', 'adam_sgg_update', 'adam_sgg_momentum'):
    cells[opt] = {}
    for lr in (0.0025, 0.0075, 0.025, 0.075):
      for batch in (16, 64):
        where = dict(optimizer=opt, lr=lr, batch_size=batch, b2=0.95)
        if opt != 'adam':
          steps = 204800 // (batch * 128)
          where.update(recluster_interval=max(1, round(0.05 * steps)),
                       beta3=0.9, num_clusters=3, scale_rule='mda',
                       cluster_stat='signed', sgg_1d=False)
        try:
          run = pick(root, grid, seeds=(0,), **where)[0]
        except ValueError:
          run = pick(root, main, seeds=(0,), **where)[0]
        cells[opt][(lr, batch)] = run
  return cells


def _nats(x: float) -> str:
  return f'{x:+.3f}'.replace('-', '−')


def grid_row(root: pathlib.Path) -> Row:
  """Claim 3 from the LR x batch grid (and the H100's robustness runs)."""
  cells = _robustness_cells(root)
  adam = cells['adam']
  keys = sorted(adam, key=lambda k: (k[1], k[0]))
  diffs = {opt: [cells[opt][k]['test_loss'] - adam[k]['test_loss']
                 for k in keys]
           for opt in ('adam_sgg_update', 'adam_sgg_momentum')}
  runs = [r for c in cells.values() for r in c.values()]
  diverged = {opt: sum(r['diverged'] for r in c.values())
              for opt, c in cells.items()}
  adam_seeds = pick(root, 'main_job_cpu', optimizer='adam')
  sd = float(np.std([r['test_loss'] for r in adam_seeds], ddof=1))
  gpu = 'h100_60m/robustness'
  gpu_lines, gpu_diffs = [], []
  for lr in sorted({_field(r, 'lr') for r in _runs(root, gpu)}):
    a = pick(root, gpu, seeds=(0,), optimizer='adam', lr=lr)[0]
    s = pick(root, gpu, seeds=(0,), optimizer='adam_sgg_update', lr=lr)[0]
    d = s['test_loss'] - a['test_loss']
    gpu_diffs.append((lr, d))
    gpu_lines.append(f'LR {lr:.3g}: Adam {a["test_loss"]:.3f}, update '
                     f'{s["test_loss"]:.3f} ({_nats(d)})')
  gpu_best = min(gpu_diffs, key=lambda x: x[1])
  lrs = sorted({k[0] for k in keys})
  best = min(min(d) for d in diffs.values())   # most in SGG's favour
  if diverged['adam'] == 0:
    verdict = '**untested** as claimed: no run diverged, with or without SGG'
    verdict += ('; no CPU cell favours SGG by more than Adam\'s seed sd'
                if -best < sd else
                f'; SGG better by {-best:.3f} nats in one cell (1 seed)')
    if -gpu_best[1] > GPU_REPEAT_NATS:
      verdict += (f'; on the H100 the update form ended {-gpu_best[1]:.3f} '
                  f'nats below Adam at LR {gpu_best[0]:.3g} (1 seed), more '
                  f'than the {GPU_REPEAT_NATS}-nat spread of repeats')
  elif diverged['adam'] > max(diverged['adam_sgg_update'],
                              diverged['adam_sgg_momentum']):
    verdict = 'SGG diverged less often than Adam: the paper\'s direction'
  else:
    verdict = '**not reproduced** at this scale: SGG diverged as often'
  scale = scale_of(3, 'cpu_tiny_robustness_ablations', adam_seeds,
                   '`tiny`', seeds='1 per cell')
  update, mom = diffs['adam_sgg_update'], diffs['adam_sgg_momentum']
  header = ' | '.join(f'{lr:g}, {b}' for lr, b in keys)
  extra = '\n'.join([
      f'Claim 3, robustness (`{scale.folder}`, with the main job\'s runs '
      'as its 1x cells at batch 16): SGG − Adam, final test loss in nats, '
      'seed 0, by LR and batch at equal tokens. Runs that diverged: '
      f'{sum(diverged.values())} of {len(runs)}. Adam\'s own seed sd at 1x '
      f'(seeds 0-2): {sd:.3f} nats. On the H100 (`{gpu}`, seed 0): '
      + '; '.join(gpu_lines) + f'; repeats of these runs ended up to '
      f'{GPU_REPEAT_NATS} nats apart.',
      '',
      f'| SGG − Adam (LR, batch) | {header} |',
      '|---|' + '---:|' * len(keys),
      '| update | ' + ' | '.join(map(_nats, update)) + ' |',
      '| momentum | ' + ' | '.join(map(_nats, mom)) + ' |'])
  return Row(
      claim='Robustness to learning rate and batch size',
      paper=('Qwen2.5-0.5B, LoRA SFT on Alpaca, batch ≤ 4096, LR ≤ 0.1; '
             'a plot only (Fig. 5)'),
      test=(f'{scale.short()}; LR {lrs[0]:g}–{lrs[-1]:g} '
            f'({lrs[-1] / lrs[0]:.0f}x) × batch 16, 64'),
      result=[f'update: {_nats(min(update))} to {_nats(max(update))} nats per '
              'cell',
              f'momentum: {_nats(min(mom))} to {_nats(max(mom))}',
              'H100 update: ' + ', '.join(f'{_nats(d)} at LR {lr:.3g}'
                                          for lr, d in gpu_diffs),
              f'diverged: {sum(diverged.values())} of {len(runs)} runs'],
      verdict=verdict, scales=[scale], extra=extra)


# --- Where Adam breaks -----------------------------------------------------


def sign_test(k: int, n: int) -> float:
  """Exact two-sided sign test: P(a split of ``n`` discordant pairs at
  least as uneven as ``k`` against ``n - k``) when each way is 1/2."""
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
  return min(1.0, 2 * tail)


@dataclasses.dataclass(frozen=True)
class Discordance:
  """One SGG optimizer against its base, over every cell and seed both ran.

  Attributes:
    sgg, base: the optimizers.
    pairs: seeds paired (same cell, same seed).
    only_base: pairs where the base diverged and SGG did not.
    only_sgg: pairs where SGG diverged and the base did not.
    both: pairs where both diverged.
    finished: (SGG - base final test loss) where both finished.
  """
  sgg: str
  base: str
  pairs: int
  only_base: int
  only_sgg: int
  both: int
  finished: tuple[float, ...]

  @property
  def p(self) -> float:
    return sign_test(self.only_base, self.only_base + self.only_sgg)

  @property
  def outcome(self) -> str:
    """'sgg' when SGG diverged alone significantly less often than its
    base did alone, 'base' the other way, else 'tie'."""
    if self.p >= ALPHA or self.only_base == self.only_sgg:
      return 'tie'
    return 'sgg' if self.only_base > self.only_sgg else 'base'

  def text(self) -> str:
    lower = sum(d < 0 for d in self.finished)
    return (f'{_label(self.sgg)}: {_label(self.base)} alone diverged on '
            f'{self.only_base}, SGG alone on {self.only_sgg} of {self.pairs} '
            f'seeds (p = {self.p:.2g}); SGG ended lower on {lower} of '
            f'{len(self.finished)} both finished')


def _label(opt: str) -> str:
  return LABELS.get(opt, ft_breaking.LABELS.get(opt, opt))


def discordance(result: dict[str, Any], sgg: str, base: str) -> Discordance:
  """``sgg`` against ``base`` over the cells of a breaking result."""
  counts = dict(pairs=0, only_base=0, only_sgg=0, both=0)
  finished = []
  for cell in result['cells']:
    base_runs = {r['seed']: r for r in cell['runs'][base]}
    for r in cell['runs'][sgg]:
      b = base_runs.get(r['seed'])
      if b is None:
        continue
      counts['pairs'] += 1
      key = {(True, True): 'both', (True, False): 'only_sgg',
             (False, True): 'only_base'}.get((r['diverged'], b['diverged']))
      if key:
        counts[key] += 1
      elif r['test_loss'] is not None and b['test_loss'] is not None:
        finished.append(r['test_loss'] - b['test_loss'])
  return Discordance(sgg, base, finished=tuple(finished), **counts)


def how_far(result: dict[str, Any], opt: str) -> str:
  """'1000x the tuned LR 0.0025 (2.5) at batch 4, 16 and 64': the largest
  multiplier ``opt`` ran at each batch size."""
  top: dict[int, float] = {}
  for cell in result['cells']:
    if cell['runs'].get(opt):
      bs = cell['batch_size']
      top[bs] = max(top.get(bs, 0.0), cell['multiplier'])
  by_mult: dict[float, list[int]] = {}
  for bs, m in sorted(top.items()):
    by_mult.setdefault(m, []).append(bs)
  lr = result['base_lr']
  return '; '.join(
    f'{m:g}x the tuned LR {lr:.3g} ({m * lr:.3g}) at batch '
    + _and([str(b) for b in batches]) for m, batches in by_mult.items())


def _and(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else (
    ', '.join(items[:-1]) + ' and ' + items[-1])


def _regime(result: dict[str, Any]) -> str:
  clip = result['clip_norm']
  return (f'clipping {"off" if not clip else f"at {clip:g}"}, warm-up '
          f'{result["warmup_frac"]:.0%}, {result["steps"]} steps per cell')


def _scale(root: pathlib.Path, result: dict[str, Any]) -> Any:
  """The grid's scale: tokens of a finished run at the largest batch."""
  runs = sorted(_runs(root, FOLDER), key=lambda r: (
    not r['diverged'], r['tokens_seen']))
  seeds = [len(rs) for c in result['cells'] for rs in c['runs'].values()]
  text = (f'{min(seeds)} per cell' if min(seeds) == max(seeds)
          else f'{min(seeds)}–{max(seeds)} per cell')
  preset = runs[-1]['config']['preset']
  return scale_of(3, FOLDER, runs[-1:], f'`{preset}`', seeds=text)


def breaking_row(root: pathlib.Path, old: Row) -> Row:
  """Claim 3 from the breaking grid; ``old`` (the LR x batch grid) without
  it, and in the details beside it."""
  path = root / FOLDER / 'breaking.json'
  if not path.is_file():
    return old
  result = json.loads(path.read_text())
  opts, cells = result['optimizers'], result['cells']
  ref = opts[0]
  runs = {o: [r for c in cells for r in c['runs'].get(o, [])] for o in opts}
  div = {o: sum(r['diverged'] for r in rs) for o, rs in runs.items()}
  found = [discordance(result, o, SGG_BASE[o]) for o in opts
           if SGG_BASE.get(o) in opts]
  tuning = root / FINETUNE_FOLDER / ft_breaking.FILE
  tuned = json.loads(tuning.read_text()) if tuning.is_file() else None
  # AdamW+SGG against AdamW over the fine-tuning grid's learning rates.
  ft = discordance(tuned, 'adamw_sgg', 'adamw') if tuned else None
  split = [c for c in cells if c['split']]
  split_seeds = min((len(rs) for c in split for rs in c['runs'].values()),
                    default=0)
  far = how_far(result, ref)
  everyone = [*found, ft] if ft else found
  if (not any(div[d.base] for d in found) and not div[ref]
      and not (ft and ft.only_base + ft.both)):
    verdict = (f'**no instability to fix at this scale**: {_label(ref)} '
               f'never diverged, pushed to {far}, {_regime(result)}')
    alone = sum(d.only_sgg for d in everyone)
    if alone:
      verdict += f'; SGG diverged alone on {alone} paired seeds'
  else:
    better = [_label(d.sgg) for d in everyone if d.outcome == 'sgg']
    worse = [_label(d.sgg) for d in everyone if d.outcome == 'base']
    if better:
      verdict = (f'{_and(better)} diverged less often than the base: the '
                 'paper\'s direction')
    elif worse:
      verdict = (f'**not reproduced** at this scale: {_and(worse)} '
                 'diverged more often than the base')
    else:
      verdict = ('**tie within noise**: no SGG optimizer diverged alone '
                 'significantly less or more often than its base')
    verdict += (f' (sign test on the seeds where exactly one diverged, '
                f'p < {ALPHA})')
    if not div[ref]:
      verdict += f'; {_label(ref)} itself never diverged, pushed to {far}'
  if split and split_seeds < SPLIT_SEEDS:
    verdict += (f'; a split cell has only {split_seeds} seeds (fewer than '
                f'{SPLIT_SEEDS})')
  scale = _scale(root, result)
  batches = ', '.join(map(str, result['batch_sizes']))
  mults = result['multipliers']
  lines = ['diverged runs: ' + ', '.join(
    f'{_label(o)} {div[o]}/{len(runs[o])}' for o in opts)]
  lines += [d.text() for d in found]
  lines.append(f'{len(split)} split cells' + (
    f', {split_seeds}+ seeds each' if split else ''))
  ft_extra = []
  if tuned and ft:
    ft_runs = {o: [j for c in tuned['cells'] for j in c['runs'][o]]
               for o in tuned['optimizers']}
    lrs = [c['lr'] for c in tuned['cells']]
    lines.append(
        f'LoRA fine-tuning (`{FINETUNE_FOLDER}`, SmolLM2-135M, LR '
        f'{lrs[0]:g}–{lrs[-1]:g}): diverged runs ' + ', '.join(
            f'{_label(o)} {sum(j["diverged"] for j in js)}/{len(js)}'
            for o, js in ft_runs.items()) + '; ' + ft.text())
    ft_extra = [f'Claim 3 in LoRA fine-tuning (`{FINETUNE_FOLDER}`): '
                + ft_breaking.title(tuned) + '.', '',
                ft_breaking.table(tuned)]
  extra = '\n'.join([
    f'Claim 3, where {_label(ref)} breaks (`{FOLDER}`, {_regime(result)}; '
    'per cell: diverged seeds / seeds, the largest loss spike in nats over '
    'the running minimum, the mean final test loss of the seeds that '
    f'finished). {_label(ref)} was pushed to {far}.', '',
    breaking_table(result), '', *ft_extra, old.extra])
  return Row(
    claim=old.claim, paper=old.paper,
    test=(f'{scale.short()}; LR {mults[0]:g}–{mults[-1]:g}x Adam\'s tuned '
          f'{result["base_lr"]:.3g} × batch {batches}, {_regime(result)}'),
    result=lines, verdict=verdict, pairs=old.pairs,
    scales=[scale, *old.scales], extra=extra)
