"""The paper's C4 table, row for row, at our scale (``--experiment c4_table``).

Every row of the paper's table (seed 002: three sections, full-rank,
memory-efficient and low-rank pre-training) that runs here, each tuned as
the main job tunes (`compare.compare`: the learning rate of lowest dev loss
with the tuning seed, from one shared grid extended at an optimal end),
then its reported seeds on test. Each SGG row is paired seed by seed with
its base (SGG - base test PPL, with the 95% Student t interval of the mean
over seeds), and the paper's LLaMA-60M number stands beside ours, for
orientation only (another model, data and budget).

A row whose optimizer the installed sgg_optax lacks (the CAME, APOLLO and
Adam-mini bases) is listed with the reason instead of numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from experiments.common import model_config, records
from experiments.pretraining import optim_rows
from experiments.pretraining.compare import compare
from experiments.pretraining.config import LABELS, TrainConfig
from experiments.pretraining.runner import Runner
from experiments.report.evidence import t_interval


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of the table.

  Attributes:
    key: its name in the results (unique).
    optimizer: its `--optimizer` name.
    section: an `optim_rows.SECTIONS` key.
    paper: the paper's LLaMA-60M test PPL (None: not in its C4 table).
    low_rank: runs with the table's rank (``--lora-rank``): LoRA adapters,
      ReLoRA's, GaLore's projection or the factorisation.
    base: the key of the row an SGG row is paired with.
    label: the table's name (default: the optimizer's label).
  """

  key: str
  optimizer: str
  section: str
  paper: float | None
  low_rank: bool = False
  base: str | None = None
  label: str = ''


def _row(key: str, section: str, paper: float | None, optimizer: str = '',
         **kw: Any) -> TableRow:
  return TableRow(key, optimizer or key, section, paper, **kw)


# The paper's table (seed 002), in its order, plus LAMB+SGG and
# Adafactor+SGG (its LLaVA table). Adam+SGG's 30.31 and LoRA+SGG's 30.62
# stand beside both of our forms.
TABLE = (
  _row('adam', 'full', 34.06),
  _row('nadam', 'full', 35.86),
  _row('radam', 'full', 30.43),
  _row('lamb', 'full', 33.04),
  _row('adan', 'full', 32.01),
  _row('adam_sgg_update', 'full', 30.31, base='adam'),
  _row('adam_sgg_momentum', 'full', 30.31, base='adam'),
  _row('lamb_sgg_momentum', 'full', None, base='lamb'),
  _row('adam_mini', 'memory', 34.10),
  _row('adafactor', 'memory', 32.57),
  _row('adafactor_sgg_update', 'memory', None, base='adafactor'),
  _row('lowrank', 'memory', 78.18, low_rank=True),
  _row('came', 'memory', 31.37),
  _row('came_sgg_momentum', 'memory', 30.15, base='came'),
  _row('apollo', 'memory', 31.55),
  _row('apollo_sgg_update', 'memory', 30.18, base='apollo'),
  _row('lora', 'lowrank', 34.99, 'adam', low_rank=True, label='LoRA'),
  _row('relora', 'lowrank', 37.04, low_rank=True),
  _row('galore', 'lowrank', 34.88, low_rank=True),
  _row('lora_sgg_update', 'lowrank', 30.62, 'adam_sgg_update',
       low_rank=True, base='lora', label='LoRA+SGG (update)'),
  _row('lora_sgg_momentum', 'lowrank', 30.62, 'adam_sgg_momentum',
       low_rank=True, base='lora', label='LoRA+SGG (momentum)'),
)
PAPER = {r.key: r.paper for r in TABLE}
# The main job's own rows: what their hyperparameters are (optim.py).
CORE_HYPERPARAMETERS = {
  'adam': ('b1', 'b2', 'eps', 'weight_decay'),
  'adafactor': ('decay_rate 0.8, update clipping 1.0, no parameter scale, '
                'no momentum'),
}


def default_rank(base: TrainConfig) -> int:
  """A quarter of the model's width (the paper's rank 128 at width 512)."""
  return max(1, (base.dim or model_config.get_config(base.preset).dim) // 4)


def _hyperparameters(opt: str, cfg: TrainConfig) -> str:
  if opt in optim_rows.ROWS:
    values = optim_rows.hyperparameters(opt, cfg)
  elif opt.startswith('adafactor'):
    return CORE_HYPERPARAMETERS['adafactor']
  else:
    values = {k: getattr(cfg, k) for k in CORE_HYPERPARAMETERS['adam']}
  return ', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}'
                   for k, v in values.items())


def _status(opt: str) -> str:
  return optim_rows.unavailable(opt) or 'ok'


def c4_table(base: TrainConfig, runner: Runner, lrs: Sequence[float],
             seeds: int, t_frac: float, tune_seed: int, max_extensions: int,
             rank: int, keys: Sequence[str] = ()) -> dict[str, Any]:
  """Tunes and reports every row of `TABLE` that runs here.

  Args:
    base: the shared configuration (the main job's).
    runner: the run cache (a `--max-minutes` chunk raises
      `runner.BudgetSpent` from here; the same call continues).
    lrs: the shared initial learning-rate grid.
    seeds: reported seeds (0..seeds-1), on test.
    t_frac: SGG's T as a fraction of the run.
    tune_seed: the tuning runs' seed, on dev.
    max_extensions: grid extensions per end.
    rank: the low-rank rows' rank.
    keys: only these rows (and the bases they pair with); all if empty.

  Returns:
    The table (JSON-able): one entry per row, in the paper's order.
  """
  wanted = set(keys) | {r.base for r in TABLE if r.key in keys and r.base}
  rows = []
  for row in TABLE:
    if keys and row.key not in wanted:
      continue
    opt = row.optimizer
    cfg = base.replace(optimizer=opt, lora_rank=rank if row.low_rank else 0)
    entry: dict[str, Any] = {
      'key': row.key, 'section': row.section, 'optimizer': opt,
      'label': row.label or LABELS[opt], 'lora_rank': cfg.lora_rank,
      'paper_60m': row.paper, 'base': row.base, 'status': _status(opt),
      'summary': None, 'paired': None}
    if entry['status'] == 'ok':
      entry['hyperparameters'] = _hyperparameters(opt, cfg)
      res, _ = compare(cfg, runner, [opt], lrs, seeds, 'seed', t_frac,
                       tune_seed, max_extensions)
      entry['summary'] = res['summary'][opt]
      entry['n_params'] = res['n_params']
    rows.append(entry)
  _pair(rows)
  return {
    'experiment': 'c4_table', 'rank': rank, 'lr_grid': list(lrs),
    'max_extensions': max_extensions, 'seeds': seeds,
    'tune_seed': tune_seed, 't_frac': t_frac,
    'selection': 'dev loss of the tuning seed',
    'reported': 'test PPL of seeds 0..N-1',
    'base_config': dataclasses.asdict(base),
    'provenance': records.provenance(runner.argv), 'rows': rows}


def _pair(rows: list[dict[str, Any]]) -> None:
  """Each SGG row's paired (same seed) test-PPL difference to its base."""
  by_key = {r['key']: r for r in rows}
  for r in rows:
    base = by_key.get(r['base'] or '')
    if not (r['summary'] and base and base['summary']):
      continue
    diffs = [a - b for a, b in zip(r['summary']['ppl'], base['summary']['ppl'])
             if _finite(a) and _finite(b)]
    paired: dict[str, Any] = {'vs': base['key'], 'diffs': diffs,
                              'n': len(diffs)}
    if len(diffs) >= 2:
      mean, sd, low, high = t_interval(diffs)
      paired.update(mean=mean, sd=sd, low=low, high=high)
    r['paired'] = paired


def _finite(x: float | None) -> bool:
  return x is not None and math.isfinite(x)


def _paper_text(row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
  if row['paper_60m'] is None:
    return '— (LLaVA table only)' if row['base'] else '—'
  text = f'{row["paper_60m"]:.2f}'
  base = rows.get(row['base'] or '')
  if base and base['paper_60m'] is not None:
    text += f' ({row["paper_60m"] - base["paper_60m"]:+.2f})'
  return text


def _paired_text(paired: dict[str, Any] | None) -> str:
  if not paired:
    return ''
  if 'mean' not in paired:
    return f'n={paired["n"]}: too few finished pairs'
  return (f'{paired["mean"]:+.2f} [{paired["low"]:+.2f}, '
          f'{paired["high"]:+.2f}]')


def c4_markdown(result: dict[str, Any]) -> str:
  """The table in the paper's layout: three sections, SGG rows paired."""
  n = result['seeds']
  lines = [
    f'| method | LR (dev, seed {result["tune_seed"]}) | test PPL, mean ± '
    f'sd (n={n}) | SGG − base, paired: mean [95% t interval] | paper, '
    'LLaMA-60M (Δ) | parameters | hyperparameters |',
    '|---|---|---|---|---|---|---|']
  by_key = {r['key']: r for r in result['rows']}
  for section, title in optim_rows.SECTIONS.items():
    rows = [r for r in result['rows'] if r['section'] == section]
    if not rows:
      continue
    lines.append(f'| *{title}* | | | | | | |')
    for r in rows:
      s = r['summary']
      paper = _paper_text(r, by_key)
      if s is None:
        lines.append(f'| {r["label"]} | | unavailable: {r["status"]} | | '
                     f'{paper} | | |')
        continue
      edge = ' (grid edge)' if s['lr_at_grid_edge'] else ''
      ppl = ('diverged' if s['ppl_mean'] is None
             else f'{s["ppl_mean"]:.2f} ± {s["ppl_std"]:.2f}')
      if s['n_diverged']:
        ppl += f', {s["n_diverged"]} diverged'
      rank = f', rank {r["lora_rank"]}' if r['lora_rank'] else ''
      lines.append(
        f'| {r["label"]} | {s["lr"]:g}{edge} | {ppl} | '
        f'{_paired_text(r["paired"])} | {paper} | {r["n_params"]:,}{rank} '
        f'| {r["hyperparameters"]} |')
  return '\n'.join(lines)


def c4_title(result: dict[str, Any]) -> str:
  """The table's heading: the set-up every row shares."""
  cfg = result['base_config']
  grid = ', '.join(f'{x:g}' for x in result['lr_grid'])
  return (f'The paper\'s C4 table at our scale ({cfg["preset"]} LLaMA, '
          f'{cfg["corpus"]}, seq {cfg["seq_len"]}, batch '
          f'{cfg["batch_size"]}, {cfg["steps"]} steps; LR grid [{grid}] '
          f'extended up to {result["max_extensions"]}x per end; SGG T = '
          f'{result["t_frac"]:.0%} of the run, beta3 {cfg["beta3"]}; '
          f'low-rank rows at rank {result["rank"]}; the paper\'s column is '
          'its LLaMA-60M on C4, for orientation only)')
