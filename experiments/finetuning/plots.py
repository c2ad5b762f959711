"""The fine-tuning figure of one task: losses, tuning, test results, clamp."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from experiments.finetuning.aggregate import config

COLORS = {'full': 'C0', 'lora': 'C1', 'qlora': 'C2'}


def _chosen_runs(runs, g) -> list[dict[str, Any]]:
  return [r for r in runs if r['task'] == g['task']
          and r['method'] == g['method'] and r['optimizer'] == g['optimizer']
          and config(r) == (g['lr'], g['sgg_interval'], g['sgg_beta3'])
          and r['seed'] in g['seeds']]


def _style(g) -> tuple[str, str, str]:
  return ('-' if g['optimizer'] == 'adamw' else '--', COLORS[g['method']],
          f'{g["method"]} {g["optimizer"]}')


def _losses(ax, runs, groups) -> None:
  for g in groups:
    curves = np.array([r['train_loss'] for r in _chosen_runs(runs, g)])
    if not curves.size:
      continue
    k = max(1, curves.shape[1] // 20)
    smooth = np.array([np.convolve(c, np.ones(k) / k, 'valid')
                       for c in curves])
    x, m, s = np.arange(smooth.shape[1]) + k, smooth.mean(0), smooth.std(0)
    style, color, label = _style(g)
    ax.plot(x, m, style, color=color, label=label)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.1)
  ax.set(xlabel='step', ylabel='train loss (moving average)',
         title='training loss, mean ± std over seeds')


def _tuning(ax, groups, metric) -> None:
  for g in groups:
    style, color, label = _style(g)
    t0 = g['tuning'][0] if g['tuning'] else None
    first = [t for t in g['tuning'] if (t['sgg_interval'], t['sgg_beta3'])
             == ((t0['sgg_interval'], t0['sgg_beta3']) if t0 else None)]
    others = [t for t in g['tuning'] if t not in first]
    ax.plot([t['lr'] for t in first], [t['dev'] for t in first],
            style + 'o', color=color, label=label)
    ax.scatter([t['lr'] for t in others], [t['dev'] for t in others],
               marker='x', color=color)
  ax.set(xscale='log', xlabel='peak learning rate',
         ylabel=f'dev {metric} (tuning seed)',
         title='tuning on dev (x: other SGG T / beta3)')


def _test(ax, groups, metric) -> None:
  groups = [g for g in groups if 'mean' in g]
  ax.bar(range(len(groups)), [g['mean'] for g in groups],
         yerr=[g['std'] for g in groups], capsize=4,
         color=[COLORS[g['method']] for g in groups], alpha=0.8)
  for i, g in enumerate(groups):
    ax.scatter([i] * len(g['values']), g['values'], color='k', s=8, zorder=3)
  ax.set_ylim(0, 1.0 if metric == 'accuracy' else None)  # axis from 0
  ax.set_xticks(range(len(groups)),
                [f'{g["method"]}\n{g["optimizer"]}' for g in groups],
                fontsize=8)
  ax.set(ylabel=f'test {metric}', title='test, mean ± std (dots: seeds)')


def _clamp(ax, runs, groups) -> None:
  for g in groups:
    if g['optimizer'] != 'adamw_sgg':
      continue
    hist = [r['sgg_history'] for r in _chosen_runs(runs, g)]
    if not hist or not hist[0]['step']:
      continue
    x = hist[0]['step']
    raw = np.mean([h['raw_clamped_fraction'] for h in hist], 0)
    stored = np.mean([h['clamped_fraction'] for h in hist], 0)
    _, color, label = _style(g)
    ax.plot(x, raw, '-o', ms=3, color=color, label=f'{label}: raw ratio')
    ax.plot(x, stored, ':', color=color, label=f'{label}: stored scale')
  ax.set_ylim(-0.02, 1.02)
  ax.set(xlabel='step (SGG refreshes)', ylabel='share of scales at clamp',
         title='SGG (layer, cluster) scales at [0.1, 10]')


def plot(task: str, runs: list[dict[str, Any]], summary: dict[str, Any],
         path: pathlib.Path) -> None:
  """Writes the 4-panel figure of `task` to `path`."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  groups = [g for g in summary['groups'] if g['task'] == task]
  metric = 'perplexity' if task == 'lm' else 'accuracy'
  fig, axes = plt.subplots(2, 2, figsize=(13, 9))
  _losses(axes[0, 0], runs, groups)
  _tuning(axes[0, 1], groups, metric)
  _test(axes[1, 0], groups, metric)
  _clamp(axes[1, 1], runs, groups)
  for ax in (axes[0, 0], axes[0, 1], axes[1, 1]):
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(f'{task}: fine-tuning SmolLM2-135M-Instruct')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
