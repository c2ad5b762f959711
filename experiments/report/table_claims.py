"""Claims 2 and 5 from the paper's C4 table at our scale (``c4_table/``).

`C4Table` reads ``c4_table/c4_table.json`` (what ``python -m
experiments.pretrain --experiment c4_table`` writes when every row has
run) and, for each row, the run JSONs of its reported seeds at its tuned
learning rate (``c4_table/runs``), paired by seed as every other claim
is. `other_bases` (claim 5) pairs each SGG row with its base: LAMB, CAME,
APOLLO and Adafactor. `lora_pretrain` (claim 2) sets LoRA+SGG beside the
other low-rank rows, LoRA, ReLoRA and GaLore: each row's gap to full-rank
Adam on the same seeds, and LoRA+SGG against each of them (the difference
of two gaps, since both are paired with the same Adam runs). Without the
folder's table, each claim keeps its earlier evidence (`verdicts.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

from experiments.report import rows as wording
from experiments.report.evidence import (
  PAPER_TOKENS_60M,
  PPL,
  Paired,
  paired,
  pick,
  scale_of,
)
from experiments.report.rows import Row

FOLDER = 'c4_table'
# Claim 5: (the base's name, the SGG row) in the paper's order; each SGG
# row names its base in the table.
OTHER_BASES = (('LAMB', 'lamb_sgg_momentum'), ('CAME', 'came_sgg_momentum'),
               ('APOLLO', 'apollo_sgg_update'),
               ('Adafactor', 'adafactor_sgg_update'))
# Claim 2: the low-rank rows LoRA+SGG is set against, and its two forms.
LOW_RANK = (('LoRA', 'lora'), ('ReLoRA', 'relora'), ('GaLore', 'galore'))
LORA_SGG = (('momentum', 'lora_sgg_momentum'), ('update', 'lora_sgg_update'))
FULL_RANK = 'adam'


def _finite(x: float | None) -> bool:
  return x is not None and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class C4Table:
  """The folder's table and its runs."""
  root: pathlib.Path
  result: dict[str, Any]

  @classmethod
  def load(cls, root: pathlib.Path) -> C4Table | None:
    """The table of ``root/c4_table``; None until its c4_table.json exists."""
    path = root / FOLDER / 'c4_table.json'
    if not path.is_file():
      return None
    return cls(root, json.loads(path.read_text()))

  @property
  def rows(self) -> dict[str, dict[str, Any]]:
    return {r['key']: r for r in self.result['rows']}

  def why_not(self, key: str) -> str:
    """Why row ``key`` has no runs ('' when it has)."""
    row = self.rows.get(key)
    if row is None:
      return 'not in the table'
    if row['summary'] is None:
      return f'unavailable: {row["status"]}'
    return ''

  def runs(self, key: str) -> list[dict[str, Any]]:
    """Row ``key``'s reported seeds, at its tuned learning rate."""
    if self.why_not(key):
      raise ValueError(f'{FOLDER}: row {key} {self.why_not(key)}')
    row = self.rows[key]
    runs = pick(self.root, FOLDER, seeds=tuple(range(self.result['seeds'])),
                optimizer=row['optimizer'], lr=row['summary']['lr'],
                lora_rank=row['lora_rank'])
    table = row['summary']['ppl']
    ours = [r['test_ppl'] for r in runs]
    if not all(a == b or not (_finite(a) or _finite(b))
               for a, b in zip(ours, table, strict=True)):
      raise ValueError(f'{FOLDER}: row {key}: c4_table.json says test PPL '
                       f'{table}, its runs {ours}; rerun the table')
    return runs

  def pair(self, claim: int, key: str, base: str, label: str
           ) -> Paired | str:
    """``key`` - ``base`` (test PPL) on the seeds both finished, or why
    there is no comparison."""
    for k in (key, base):
      if self.why_not(k):
        return f'{k} {self.why_not(k)}'
    both = [(b, s) for b, s in zip(self.runs(base), self.runs(key))
            if _finite(b['test_ppl']) and _finite(s['test_ppl'])]
    lost = self.result['seeds'] - len(both)
    if len(both) < 2:
      return f'{len(both)} of {self.result["seeds"]} seeds finished on both'
    if lost:
      label += f' ({lost} seed{"s" * (lost > 1)} diverged)'
    return paired(claim, FOLDER, label, PPL, [b for b, _ in both],
                  [s for _, s in both])

  def scale(self, claim: int) -> Any:
    preset = self.result['base_config']['preset']
    return scale_of(claim, FOLDER, self.runs(FULL_RANK), f'`{preset}`',
                    paper_tokens=PAPER_TOKENS_60M)

  def paper(self, key: str) -> str:
    value = self.rows.get(key, {}).get('paper_60m')
    return '—' if value is None else f'{value:.2f}'


def _skipped(missing: list[tuple[str, str]]) -> str:
  """The details' note on rows without a comparison."""
  if not missing:
    return ''
  return ('`c4_table` rows without a comparison: ' + '; '.join(
    f'{name}: {why}' for name, why in missing) + '.')


def other_bases(root: pathlib.Path, old: Row) -> Row:
  """Claim 5 from the C4 table; ``old`` (the main job's Adafactor pair)
  without the table, and in the details beside it."""
  table = C4Table.load(root)
  if table is None:
    return old
  pairs, names, missing = [], [], []
  for name, key in OTHER_BASES:
    base = table.rows.get(key, {}).get('base') or ''
    p = table.pair(5, key, base, f'{name}+SGG − {name}')
    if isinstance(p, str):
      missing.append((name, p))
    else:
      pairs.append(p)
      names.append(name)
  if not pairs:
    return dataclasses.replace(old, extra=_skipped(missing))
  verdict = wording.verdict(pairs)
  if any(p.outcome != 'tie' for p in pairs):
    verdict += f'; {wording.by_outcome(pairs, names)}'
  if missing:
    verdict += f'; {", ".join(n for n, _ in missing)} not run'
  scale = table.scale(5)
  return Row(
    claim=old.claim, paper=old.paper,
    test=f'{scale.short()}; {", ".join(names)}',
    result=[wording.result(p, n) for p, n in zip(pairs, names)]
    + [f'{n}: not run' for n, _ in missing],
    verdict=verdict, pairs=pairs + old.pairs, scales=[scale, *old.scales],
    extra=_skipped(missing))


def _lora_sgg(table: C4Table) -> tuple[str, str] | None:
  """LoRA+SGG's form (form, row) of lowest dev loss on the tuning seed."""
  done = [(table.rows[k]['summary']['tune_dev_loss'], form, k)
          for form, k in LORA_SGG if not table.why_not(k)]
  return min(done)[1:] if done else None


def _gaps(pairs: list[Paired], names: list[str]) -> str:
  return 'gap to full rank: ' + ', '.join(
    f'{n} {p.fmt(float(np.mean(p.diffs)))}' for p, n in zip(pairs, names)
  ) + ' PPL'


def lora_pretrain(root: pathlib.Path, old: Row) -> Row:
  """Claim 2 from the C4 table: does LoRA+SGG close the gap to full rank
  better than LoRA, ReLoRA and GaLore? ``old`` without the table, and in
  the details beside it."""
  table = C4Table.load(root)
  chosen = table and _lora_sgg(table)
  if table is None or not chosen or table.why_not(FULL_RANK):
    return old
  form, sgg = chosen
  missing, gaps, gap_names, versus, names = [], [], [], [], []
  for name, key in (*LOW_RANK, ('LoRA+SGG', sgg)):
    p = table.pair(2, key, FULL_RANK, f'{name} − full rank'.replace(
      'SGG', f'SGG ({form})'))
    if isinstance(p, str):
      missing.append((name, p))
      continue
    gaps.append(p)
    gap_names.append(name)
    if key != sgg:
      v = table.pair(2, sgg, key, f'LoRA+SGG ({form}, dev choice) − {name}')
      if not isinstance(v, str):
        versus.append(v)
        names.append(name)
  if not versus or gap_names[-1] != 'LoRA+SGG':
    return dataclasses.replace(old, extra=_skipped(missing))
  other = [k for f, k in LORA_SGG if f != form][0]
  extra_pairs = [p for p in [table.pair(
    2, other, 'lora', f'LoRA+SGG ({other.split("_")[-1]}) − LoRA')]
    if not isinstance(p, str)]
  groups = {o: [n for p, n in zip(versus, names) if p.outcome == o]
            for o in ('sgg', 'base', 'tie')}
  if groups['base']:
    verdict = ('**not reproduced** at this scale: LoRA+SGG worse than '
               + ', '.join(groups['base']))
  elif groups['sgg']:
    verdict = ('LoRA+SGG closer to full rank than '
               + ', '.join(groups['sgg']) + ': the paper\'s direction')
  else:
    verdict = ('**tie within noise**: LoRA+SGG not separable from '
               + ', '.join(names))
  if groups['tie'] and (groups['base'] or groups['sgg']):
    verdict += '; tied with ' + ', '.join(groups['tie'])
  full = gaps[-1]
  verdict += '; ' + {'sgg': 'below full rank', 'base': 'worse than full rank',
                     'tie': 'within noise of full rank'}[full.outcome]
  if missing:
    verdict += f'; {", ".join(n for n, _ in missing)} not run'
  scale = table.scale(2)
  rank = table.result['rank']
  paper = ('as above; at 60M: ' + ', '.join(
    f'{n} {table.paper(k)}' for n, k in (*LOW_RANK, ('LoRA+SGG', sgg))
  ) + f', full-rank Adam {table.paper(FULL_RANK)} PPL (Table 4)')
  return Row(
    claim=old.claim, paper=paper,
    test=(f'{scale.short()}; rank {rank}; LoRA+SGG: the {form} form '
          '(its lower dev loss on the tuning seed)'),
    result=[wording.result(full, 'LoRA+SGG − full rank')]
    + [wording.result(p, f'LoRA+SGG − {n}') for p, n in zip(versus, names)]
    + [_gaps(gaps[:-1], gap_names[:-1])],
    verdict=verdict, pairs=gaps + versus + extra_pairs + old.pairs,
    scales=[scale, *old.scales], extra=_skipped(missing))
