"""Matplotlib (Agg) figures of the pre-training experiments' results."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = {
  'adam': 'tab:blue', 'adam_sgg_update': 'tab:orange',
  'adam_sgg_momentum': 'tab:red', 'adafactor': 'tab:green',
  'adafactor_sgg_update': 'tab:olive',
}
_COLORS.update(adam_sgg=_COLORS['adam_sgg_update'],  # deprecated names
               adafactor_sgg=_COLORS['adafactor_sgg_update'])


def _save(fig: plt.Figure, path: str | pathlib.Path) -> str:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return str(path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
  if window <= 1 or len(y) < window:
    return y
  kernel = np.ones(window) / window
  padded = np.concatenate([np.full(window - 1, y[0]), y])
  return np.convolve(padded, kernel, mode='valid')


def plot_compare(summary: Mapping[str, Any], runs: Mapping[str, Sequence[
    Mapping[str, Any]]], path: str | pathlib.Path,
                 labels: Mapping[str, str]) -> str:
  """Training loss and test perplexity curves, mean ± std over seeds.

  Args:
    summary: per optimizer ``{'lr', 'ppl_mean', 'ppl_std', ...}``.
    runs: per optimizer, the results of its seeds at the chosen LR.
    path: PNG path.
    labels: display names.

  Returns:
    The path written.
  """
  fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, results in runs.items():
    ok = [r for r in results if not r['diverged']]
    if not ok:
      continue
    color = _COLORS.get(name)
    s = summary[name]
    label = (f'{labels.get(name, name)} lr={s["lr"]:g}: '
             f'{s["ppl_mean"]:.2f} ± {s["ppl_std"]:.2f}')
    evals = [r['curves']['test'] for r in ok]
    n = min(len(r['curves']['train']) for r in ok)
    steps = np.array([p[0] for p in ok[0]['curves']['train'][:n]])
    loss = np.array([[p[1] for p in r['curves']['train'][:n]] for r in ok])
    window = max(1, n // 25)
    loss = np.stack([_smooth(x, window) for x in loss])
    mean, std = loss.mean(0), loss.std(0)
    ax_loss.plot(steps, mean, color=color, label=label, lw=1.3)
    ax_loss.fill_between(steps, mean - std, mean + std, color=color,
                         alpha=0.2)
    m = min(len(e) for e in evals)
    if m:
      esteps = np.array([p[0] for p in evals[0][:m]])
      ppl = np.array([[p[2] for p in e[:m]] for e in evals], float)
      ax_ppl.errorbar(esteps, ppl.mean(0), yerr=ppl.std(0), color=color,
                      marker='o', ms=3, capsize=2, label=label)
  ax_loss.set(xlabel='step', ylabel='training loss (smoothed)',
              title='training loss, mean ± std over seeds')
  lows = [np.min([p[1] for p in r['curves']['train']])
          for rs in runs.values() for r in rs if not r['diverged']]
  if lows:
    ax_loss.set_ylim(min(lows) - 0.2, min(lows) + 2.5)
  ax_ppl.set(xlabel='step', ylabel='test perplexity', yscale='log',
             title='test perplexity, mean ± std over seeds')
  ax_ppl.legend(fontsize=7)
  ax_loss.legend(fontsize=7)
  return _save(fig, path)


def plot_lr_sweep(sweep: Mapping[str, Mapping[str, Any]],
                  path: str | pathlib.Path, labels: Mapping[str, str]) -> str:
  """Final dev perplexity of the tuning runs against the learning rate.

  Args:
    sweep: per optimizer ``{'by_lr': {lr: {'dev_ppl': [..] (None when
      diverged)}}}`` (runner.tune_lr).
    path: PNG path.
    labels: display names.

  Returns:
    The path written.
  """
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for name, tuning in sweep.items():
    by_lr = tuning['by_lr']
    lrs = sorted(by_lr, key=float)
    x, y, div = [], [], []
    for lr in lrs:
      ppls = [p for p in by_lr[lr]['dev_ppl'] if p is not None]
      if ppls:
        x.append(float(lr))
        y.append(float(np.mean(ppls)))
      else:
        div.append(float(lr))
    color = _COLORS.get(name)
    ax.plot(x, y, marker='o', color=color, label=labels.get(name, name))
    if div and y:
      ax.scatter(div, [max(y)] * len(div), marker='x', color=color, s=60)
  ax.set(xscale='log', yscale='log', xlabel='peak learning rate',
         ylabel='final dev perplexity (tuning runs)',
         title='learning-rate tuning on dev (x: diverged)')
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_heatmaps(grid: Mapping[str, Any], path: str | pathlib.Path,
                  labels: Mapping[str, str]) -> str:
  """Final test loss per (batch size, LR) for each optimizer.

  Args:
    grid: ``{'batch_sizes': [..], 'lrs': [..], 'loss': {opt: 2-D list with
      None for diverged runs}}``.
    path: PNG path.
    labels: display names.

  Returns:
    The path written.
  """
  opts = list(grid['loss'])
  bss, lrs = grid['batch_sizes'], grid['lrs']
  values = [np.array([[np.nan if v is None else v for v in row]
                      for row in grid['loss'][o]], float) for o in opts]
  finite = np.concatenate([v[np.isfinite(v)] for v in values] + [[0.0]])
  vmin, vmax = float(finite.min()), float(finite.max())
  if len(finite) > 1:
    vmin = float(np.min(finite[:-1]))
  fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.8),
                           squeeze=False)
  fig.subplots_adjust(wspace=0.35)
  cmap = plt.get_cmap('viridis_r').with_extremes(bad='lightgray')
  for ax, name, val in zip(axes[0], opts, values):
    im = ax.imshow(np.ma.masked_invalid(val), cmap=cmap, vmin=vmin,
                   vmax=vmax, aspect='auto')
    for i in range(len(bss)):
      for j in range(len(lrs)):
        v = val[i, j]
        text = 'div' if not math.isfinite(v) else f'{v:.2f}'
        # Dark text on the light (low-loss, yellow) end of the colour map.
        light = not math.isfinite(v) or (
          vmax > vmin and (v - vmin) / (vmax - vmin) < 0.5)
        ax.text(j, i, text, ha='center', va='center', fontsize=8,
                color='black' if light else 'white')
    ax.set_xticks(range(len(lrs)), [f'{lr:g}' for lr in lrs], rotation=45)
    ax.set_yticks(range(len(bss)), [str(b) for b in bss])
    ax.set(xlabel='peak learning rate', ylabel='batch size',
           title=labels.get(name, name))
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8,
               label='final test loss')
  fig.savefig(pathlib.Path(path), dpi=120, bbox_inches='tight')
  plt.close(fig)
  return str(path)


def plot_scales(result: Mapping[str, Any], path: str | pathlib.Path,
                title: str = '') -> str:
  """Per-layer SGG cluster scales over training (one panel per layer).

  Args:
    result: a `loop.train` results dictionary with SGG diagnostics.
    path: PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  diags = result['curves']['sgg']
  names = result['curves']['sgg_names']
  steps = np.array([d['step'] for d in diags])
  scales = np.array([d['scales'] for d in diags])  # (time, G, K)
  fracs = np.array([d['fractions'] for d in diags])
  g, k = scales.shape[1:]
  cols = min(5, g)
  rows = math.ceil(g / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows),
                           squeeze=False, sharex=True)
  for i in range(rows * cols):
    ax = axes[i // cols][i % cols]
    if i >= g:
      ax.axis('off')
      continue
    for c in range(k):
      ax.plot(steps, scales[:, i, c], marker='.', ms=3,
              label=f'c{c} ({fracs[-1, i, c]:.0%})')
    ax.axhline(1.0, color='gray', lw=0.6, ls='--')
    ax.set_yscale('log')
    short = names[i].replace('/kernel', '').replace('layers/', 'L')
    ax.set_title(short, fontsize=8)
    ax.legend(fontsize=6, loc='best')
    ax.tick_params(labelsize=7)
  fig.suptitle(title or 'SGG cluster scales over training '
               '(legend: share of elements at the end)', fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)
  return str(path)


def plot_scale_movement(series: Mapping[str, Mapping[str, Any]],
                        path: str | pathlib.Path) -> str:
  """max |S - 1| over training for several SGG settings.

  Args:
    series: per label ``{'steps': [...], 'max_abs_dev': [...],
      'mean_abs_dev': [...]}``.
    path: PNG path.

  Returns:
    The path written.
  """
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for label, s in series.items():
    ax1.plot(s['steps'], s['max_abs_dev'], marker='.', label=label)
    ax2.plot(s['steps'], s['mean_abs_dev'], marker='.', label=label)
  ax1.set(xlabel='step', ylabel='max |S - 1|', title='largest scale change')
  ax2.set(xlabel='step', ylabel='mean |S - 1| (element-weighted)',
          title='typical scale change')
  for ax in (ax1, ax2):
    ax.set_yscale('symlog', linthresh=1e-3)
  ax2.legend(fontsize=7)
  return _save(fig, path)
