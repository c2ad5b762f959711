"""Fine-tuning results: each arm's choice on dev and its seeds' test scores.

An arm is one (task, method, optimizer); `group` picks its configuration
on dev with the tuning seed and aggregates its reported seeds on test, and
`paired` takes SGG - AdamW seed by seed. `experiments.finetuning.report`
writes them out.
"""

from __future__ import annotations

import glob
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

TASKS = ('lm', 'cls')
METHODS = ('full', 'lora', 'qlora')
OPTIMIZERS = ('adamw', 'adamw_sgg')


def dev_key(run: dict[str, Any]) -> tuple[float, ...]:
  """Larger is better on dev: lm -loss (= -log ppl); cls accuracy, -loss."""
  if run['task'] == 'lm':
    return (-run['dev_loss'],)
  return (run['dev_accuracy'], -run['dev_loss'])


def best_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The run with the best dev score (the first one on ties)."""
  return max(runs, key=dev_key)


def config(run: dict[str, Any]) -> tuple[float, int | None, float | None]:
  """What tuning chooses: (lr, SGG's T, SGG's beta3)."""
  if run['optimizer'] != 'adamw_sgg':
    return (run['lr'], None, None)
  return (run['lr'], run['sgg_interval'], run['sgg_beta3'])


def load_runs(out: pathlib.Path) -> list[dict[str, Any]]:
  """Run JSONs of `out/runs` made by this code (`run.CODE_KEY`)."""
  from experiments.finetuning.run import CODE_KEY
  runs = []
  for f in sorted(glob.glob(str(out / 'runs' / '*.json'))):
    r = json.loads(pathlib.Path(f).read_text())
    if 'method' in r and r.get('code_key') == CODE_KEY:
      runs.append(r)
  return runs


def _mean_std(x: Sequence[float]) -> tuple[float, float]:
  x = np.asarray(x, np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def group(runs: list[dict[str, Any]], tune_seed: int,
          seeds: Sequence[int]) -> dict[str, Any]:
  """One arm: its dev choice (tuning seed) and its seeds' test results."""
  r0 = runs[0]
  tune = [r for r in runs if r['seed'] == tune_seed]
  best = best_of(tune)
  chosen = sorted([r for r in runs if config(r) == config(best)
                   and r['seed'] in seeds], key=lambda r: r['seed'])
  metric = 'ppl' if r0['task'] == 'lm' else 'accuracy'
  vals = [r[f'test_{metric}'] for r in chosen]
  lrs = sorted({r['lr'] for r in tune})
  g = {
    'task': r0['task'], 'method': r0['method'], 'optimizer': r0['optimizer'],
    'lr': best['lr'], 'sgg_interval': config(best)[1],
    'sgg_beta3': config(best)[2], 'lr_at_grid_edge': best['lr'] in (
      lrs[0], lrs[-1]) and len(lrs) > 1, 'metric': metric,
    'seeds': [r['seed'] for r in chosen], 'values': vals,
    'dev_values': [r[f'dev_{metric}'] for r in chosen],
    'tuning': [{'lr': r['lr'], 'sgg_interval': config(r)[1],
                'sgg_beta3': config(r)[2], 'dev': r[f'dev_{metric}'],
                'dev_loss': r['dev_loss']}
               for r in sorted(tune, key=config_sort)],
    'eval_span': min(r['eval_span'] for r in chosen) if chosen else None,
  }
  if chosen:
    g.update(_aggregate(chosen, vals))
  return g


def config_sort(r: dict[str, Any]) -> tuple[float, int, float]:
  lr, t, b = config(r)
  return (lr, t or 0, b or 0.0)


def _aggregate(chosen: list[dict[str, Any]], vals: list[float]
               ) -> dict[str, Any]:
  mean, std = _mean_std(vals)
  loss_mean, loss_std = _mean_std([r['test_loss'] for r in chosen])
  out = {
    'mean': mean, 'std': std, 'test_loss_mean': loss_mean,
    'test_loss_std': loss_std,
    'step_seconds_median': float(np.median(
      [r['step_seconds_median'] for r in chosen])),
    'opt_state_bytes': chosen[0]['opt_state_bytes'],
    'sgg_state_bytes': chosen[0]['sgg_state_bytes'],
    'trainable_params': chosen[0]['trainable_params'],
    'steps': chosen[0]['steps'], 'train_tokens': chosen[0]['train_tokens'],
  }
  if chosen[0]['optimizer'] == 'adamw_sgg':
    out['clamped_fraction'] = [r['clamped_fraction'] for r in chosen]
    out['raw_clamped_fraction'] = [r['raw_clamped_fraction'] for r in chosen]
    out['sgg_scales'] = [r['sgg_scales'] for r in chosen]
  return out


def paired(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """SGG - AdamW per seed (same seed: same data order and adapter init)."""
  by = {(g['task'], g['method'], g['optimizer']): g for g in groups}
  out = []
  for (task, method, opt), g in by.items():
    base = by.get((task, method, 'adamw'))
    if opt != 'adamw_sgg' or base is None:
      continue
    common = sorted(set(g['seeds']) & set(base['seeds']))
    diff = [g['values'][g['seeds'].index(s)]
            - base['values'][base['seeds'].index(s)] for s in common]
    if diff:
      mean, std = _mean_std(diff)
      out.append({'task': task, 'method': method, 'metric': g['metric'],
                  'seeds': common, 'sgg_minus_adamw': diff, 'mean': mean,
                  'std': std})
  return out
