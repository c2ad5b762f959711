"""Fine-tuning results: summary JSON, Markdown tables, figures, command.

The choices and aggregates they report are `experiments.finetuning.aggregate`;
the figures are `experiments.finetuning.plots`.
"""

from __future__ import annotations

import pathlib
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.common import records
from experiments.finetuning import plots
from experiments.finetuning.aggregate import (
  METHODS,
  OPTIMIZERS,
  TASKS,
  group,
  paired,
)


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
  for task in {g['task'] for g in groups}:
    plots.plot(task, runs, summary, out / f'finetune_{task}.png')
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
  """Adds `command` to `COMMAND.txt`, the commands that built this folder.

  Each distinct command is listed once, in the order first run: a resumed
  `--max-minutes` chunk or a second process of the same command adds
  nothing. Every run JSON records its own command line and commit.
  """
  prov = records.provenance(command)
  line = 'PYTHONPATH=. ' + ' '.join(shlex.quote(a) for a in prov['command'])
  path = out / 'COMMAND.txt'
  text = path.read_text() if path.exists() else (
    '# The commands that built this folder, run from the repository root in\n'
    '# order (each run JSON records its own command line and commit):\n')
  if line not in text.splitlines():
    path.write_text(text + line + '\n')
