"""Fine-tuning results: choices on dev, test aggregates, tables, plots."""

from __future__ import annotations

import glob
import json
import pathlib
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import records

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
  """Run JSONs of `out/runs` made by this code (`records.code_key()`)."""
  runs = []
  for f in sorted(glob.glob(str(out / 'runs' / '*.json'))):
    r = json.loads(pathlib.Path(f).read_text())
    if 'method' in r and r.get('code_key') == records.code_key():
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


def summarize(out: pathlib.Path, runs: list[dict[str, Any]],
              zero_shot: list[dict[str, Any]], tune_seed: int,
              seeds: Sequence[int]) -> dict[str, Any]:
  """Writes `summary.json`, `summary.md` and one PNG per task."""
  keys = sorted({(r['task'], r['method'], r['optimizer']) for r in runs},
                key=lambda k: (TASKS.index(k[0]), METHODS.index(k[1]),
                               OPTIMIZERS.index(k[2])))
  groups = [group([r for r in runs if (r['task'], r['method'],
                                       r['optimizer']) == k],
                  tune_seed, seeds) for k in keys]
  summary = {'groups': groups, 'paired': paired(groups),
             'zero_shot': zero_shot, 'tune_seed': tune_seed,
             'seeds': list(seeds)}
  records.write_json(out / 'summary.json', summary)
  (out / 'summary.md').write_text(markdown(summary))
  from experiments import finetune_plots
  for task in {g['task'] for g in groups}:
    finetune_plots.plot(task, runs, summary, out / f'finetune_{task}.png')
  return summary


def _cell(g: dict[str, Any]) -> str:
  scale, unit = (100, '%') if g['metric'] == 'accuracy' else (1, '')
  if 'mean' not in g:
    return 'no seed runs'
  return (f'{scale * g["mean"]:.2f}{unit} ± {scale * g["std"]:.2f} '
          f'({len(g["values"])})')


def _sgg_cell(g: dict[str, Any]) -> str:
  if g['optimizer'] != 'adamw_sgg':
    return '–'
  raw = g.get('raw_clamped_fraction') or [0.0]
  stored = g.get('clamped_fraction') or [0.0]
  return (f'T={g["sgg_interval"]}, β3={g["sgg_beta3"]:g}; clamped '
          f'{100 * np.mean(stored):.0f}% (raw {100 * np.mean(raw):.0f}%)')


def markdown(summary: dict[str, Any]) -> str:
  """The tables of `summary.md`."""
  lines = ['| task | method | optimizer | lr | SGG (dev choice; at clamp) | '
           'test metric | mean ± std (seeds) | test loss | s/step | '
           'opt-state MiB (SGG part) |', '|---|---|---|---|---|---|---|---|'
           '---|---|']
  for g in summary['groups']:
    edge = ' (grid edge)' if g['lr_at_grid_edge'] else ''
    lines.append(
      f'| {g["task"]} | {g["method"]} | {g["optimizer"]} | {g["lr"]:g}{edge}'
      f' | {_sgg_cell(g)} | {g["metric"]} | {_cell(g)} | '
      f'{g.get("test_loss_mean", float("nan")):.4f} ± '
      f'{g.get("test_loss_std", float("nan")):.4f} | '
      f'{g.get("step_seconds_median", float("nan")):.3f} | '
      f'{g.get("opt_state_bytes", 0) / 2**20:.2f} '
      f'({g.get("sgg_state_bytes", 0) / 2**20:.2f}) |')
  if summary['paired']:
    lines += ['', '| task | method | SGG − AdamW per seed (test) | '
              'mean ± std |', '|---|---|---|---|']
    for p in summary['paired']:
      scale = 100 if p['metric'] == 'accuracy' else 1
      vals = ', '.join(f'{scale * d:+.2f}' for d in p['sgg_minus_adamw'])
      lines.append(f'| {p["task"]} | {p["method"]} | {vals} | '
                   f'{scale * p["mean"]:+.2f} ± {scale * p["std"]:.2f} |')
  if summary['zero_shot']:
    lines += ['', '| zero-shot task | precision | dev | test |',
              '|---|---|---|---|']
    for z in summary['zero_shot']:
      key = 'ppl' if z['task'] == 'lm' else 'accuracy'
      lines.append(f'| {z["task"]} | {z["precision"]} | '
                   f'{key} {z[f"dev_{key}"]:.4g} | {key} '
                   f'{z[f"test_{key}"]:.4g} |')
  return '\n'.join(lines) + '\n'


def write_command(out: pathlib.Path, command: Sequence[str]) -> None:
  """`COMMAND.txt`: the one command that rebuilds this folder."""
  prov = records.provenance(command)
  line = ' '.join(shlex.quote(a) for a in prov['command'])
  (out / 'COMMAND.txt').write_text(
    '# Rebuilds this folder (run from the repository root):\n'
    f'PYTHONPATH=. {line}\n'
    f'# code: commit {prov["git_commit"]}, dirty={prov["dirty"]}\n')
