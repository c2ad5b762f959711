"""A row of the claims table and the words of its verdict.

`Row` is what each ``claim_*`` returns; `verdict` and `tally` word the
outcome of paired comparisons (`evidence.Paired.outcome`) the same way
for every claim, and `by_outcome` names which comparison went which way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from experiments.report.evidence import OTHER_CPU_MEAN_PPL, Paired, Scale, _pct


@dataclasses.dataclass
class Row:
  claim: str        # the paper's claim, short
  paper: str        # the paper's evidence: scale, seeds, gain
  test: str         # our closest test and its scale
  result: list[str]  # SGG - base lines
  verdict: str
  pairs: list[Paired] = dataclasses.field(default_factory=list)
  scales: list[Scale] = dataclasses.field(default_factory=list)
  extra: str = ''   # Markdown for the details file


def seeds_against(p: Paired) -> int:
  """The seeds on which SGG did worse than its base."""
  sign = -1 if p.metric.higher_is_better else 1
  return sum(sign * d > 0 for d in p.diffs)


def tally(pairs: Sequence[Paired]) -> str:
  """'SGG worse in 1 of 4 comparisons, tied in 3'; for one comparison,
  how its seeds went."""
  n = len(pairs)
  worse = sum(p.outcome == 'base' for p in pairs)
  tied = sum(p.outcome == 'tie' for p in pairs)
  if n == 1:
    (p,) = pairs
    k = seeds_against(p)
    n = len(p.diffs)
    seeds = (f'SGG worse on all {n} seeds' if k == n
             else f'SGG worse on {k} of {n} seeds')
    return seeds if worse else f'{seeds}, but the interval includes 0'
  if not worse:
    return f'tied in {tied} of {n}'
  return f'SGG worse in {worse} of {n}' + (f', tied in {tied}' if tied else '')


def verdict(pairs: Sequence[Paired]) -> str:
  """A one-line verdict for comparisons of SGG against its base."""
  better = sum(p.outcome == 'sgg' for p in pairs)
  if better:
    return (f'SGG better in {better} of {len(pairs)}: the paper\'s '
            'direction')
  if any(p.outcome == 'base' for p in pairs):
    return f'**not reproduced** at this scale ({tally(pairs)})'
  return f'**tie within noise** ({tally(pairs)})'


OUTCOME_WORDS = {'sgg': 'better', 'base': 'worse', 'tie': 'tied'}


def by_outcome(pairs: Sequence[Paired], names: Sequence[str]) -> str:
  """'SGG better for CAME; worse for LAMB, APOLLO; tied for Adafactor'."""
  groups = {o: [n for p, n in zip(pairs, names, strict=True)
                if p.outcome == o] for o in OUTCOME_WORDS}
  return 'SGG ' + '; '.join(f'{OUTCOME_WORDS[o]} for {", ".join(g)}'
                            for o, g in groups.items() if g)


def result(p: Paired, prefix: str = '') -> str:
  return f'{prefix or p.label}: {p.interval(relative=False)}'


def cross_cpu(base: str, sgg: str, p: Paired) -> Paired:
  """``p`` with how far its paired mean moved on the second CPU."""
  ours_base, ours_sgg = float(np.mean(p.base)), float(np.mean(p.sgg))
  other = (OTHER_CPU_MEAN_PPL.get(sgg, ours_sgg)
           - OTHER_CPU_MEAN_PPL.get(base, ours_base))
  shift = abs(other - (ours_sgg - ours_base))
  text = 'cross-CPU: 0 (bitwise)' if shift == 0 else f'cross-CPU: {shift:.1f}'
  return dataclasses.replace(p, noise_floor=text, cross_cpu=shift)


def gain(base: float, sgg: float) -> str:
  return f'{sgg - base:+.2f} ({_pct(sgg / base - 1)})'.replace('-', '−')
