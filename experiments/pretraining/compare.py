"""Experiment 1: every optimizer at its own dev-tuned LR, seeds on test."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.common import records
from experiments.pretraining.config import (
  DEPRECATED,
  LABELS,
  SGG_OPTIMIZERS,
  TrainConfig,
)
from experiments.pretraining.runner import (
  Runner,
  _fmt,
  _mean_of,
  _recluster,
  _stats,
  tune_lr,
)

TUNE_SEED = 100  # never one of the reported seeds 0..N-1
BASELINE_OF = {'adam_sgg_update': 'adam', 'adam_sgg_momentum': 'adam',
               'adafactor_sgg_update': 'adafactor'}
BASELINE_OF.update({old: BASELINE_OF[new] for old, new in DEPRECATED.items()})


def _arm_summary(opt: str, cfg: TrainConfig, best: float,
                 tuning: dict[str, Any], results: list[dict[str, Any]]
                 ) -> dict[str, Any]:
  """One optimizer's row: test PPL of the reported seeds and what tuned it."""
  ppl = _stats([r['test_ppl'] for r in results])
  loss = _stats([r['test_loss'] for r in results])
  sgg = opt in SGG_OPTIMIZERS
  # The scales' largest distance from 1 at the end, mean over the seeds
  # (as the ablation table's rows).
  diags = [r['curves']['sgg'] for r in results if r['curves']['sgg']]
  max_dev = (float(np.mean([d[-1]['max_abs_dev'] for d in diags]))
             if diags else None)
  return {
    'label': LABELS.get(opt, opt), 'lr': best, 'lrs_tried': tuning['lrs'],
    'lr_at_grid_edge': tuning['lr_at_grid_edge'],
    'tune_dev_loss': float(np.mean([
      x for x in tuning['by_lr'][f'{best:g}']['dev_loss'] if x is not None]
      or [math.nan])),
    'ppl_mean': ppl['mean'], 'ppl_std': ppl['std'], 'ppl': ppl['values'],
    'loss_mean': loss['mean'], 'loss_std': loss['std'],
    'dev_loss_mean': _mean_of(results, 'dev_loss'),
    'n_diverged': ppl['n_diverged'],
    'recluster_interval': cfg.recluster_interval if sgg else None,
    'beta3': cfg.beta3 if sgg else None, 'b2': cfg.b2,
    'tokens_per_run': results[0]['tokens_seen'],
    'tokens_per_s': float(np.mean([r['tokens_per_s'] for r in results])),
    'final_max_abs_dev': max_dev,
    'clamped_fraction': _mean_of(results, 'clamped_fraction'),
    'eval_span': min(r['eval_span'] for r in results),
  }


def compare(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
            lrs: Sequence[float], seeds: int, tune: str, t_frac: float,
            tune_seed: int = TUNE_SEED, max_extensions: int = 2
            ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
  """Tunes each optimizer's LR on dev, then reports its seeds on test.

  Args:
    base: shared configuration.
    runner: the run cache.
    optimizers: optimizer names.
    lrs: the initial learning-rate grid (extended at an optimal end).
    seeds: reported seeds (0..seeds-1).
    tune: 'seed' (tune on `tune_seed`, then the best LR for every reported
      seed) or 'full' (grid x the reported seeds, the best mean dev loss).
    t_frac: SGG's T as a fraction of the run (0: `base.recluster_interval`).
    tune_seed: the seed of the tuning runs for ``tune='seed'``.
    max_extensions: grid extensions allowed per end.

  Returns:
    The experiment's summary (JSON-able) and, per optimizer, the results of
    its reported seeds at the chosen learning rate.
  """
  sweep: dict[str, Any] = {}
  summary: dict[str, Any] = {}
  runs: dict[str, list[dict[str, Any]]] = {}
  tune_seeds = list(range(seeds)) if tune == 'full' else [tune_seed]
  for opt in optimizers:
    cfg = _recluster(base.replace(optimizer=opt), t_frac)
    best, sweep[opt] = tune_lr(cfg, runner, lrs, tune_seeds, max_extensions,
                               final_eval_only=tune != 'full')
    runs[opt] = [runner.run(cfg.replace(lr=best, seed=s))
                 for s in range(seeds)]
    summary[opt] = _arm_summary(opt, cfg, best, sweep[opt], runs[opt])
  _paired(summary)
  first = runs[optimizers[0]][0]
  return {
    'experiment': 'compare', 'tune': tune,
    'tune_seeds': tune_seeds, 'report_seeds': list(range(seeds)),
    'selection': 'mean dev loss of the tuning runs',
    'reported': 'test (data.py held-out split)',
    'lr_grid': list(lrs), 'max_extensions': max_extensions,
    'seeds': seeds, 't_frac': t_frac, 'base_config': dataclasses.asdict(base),
    'n_params': first['model']['n_params'],
    'splits': first['splits'], 'eval_span': first['eval_span'],
    'provenance': records.provenance(runner.argv),
    'summary': summary, 'sweep': sweep,
  }, runs


def _paired(summary: dict[str, Any]) -> None:
  """Adds each SGG arm's paired (same seed) test-PPL difference to its base."""
  for opt, base_opt in BASELINE_OF.items():
    if opt in summary and base_opt in summary:
      diffs = [a - b for a, b in zip(summary[opt]['ppl'],
                                     summary[base_opt]['ppl'])
               if a is not None and b is not None]
      summary[opt]['paired_ppl_diff_vs'] = base_opt
      summary[opt]['paired_ppl_diff'] = _stats(diffs)


def compare_table(result: dict[str, Any]) -> str:
  """The test-PPL table of `compare`, as Markdown."""
  tuned_on = (f'dev, seed {result["tune_seeds"][0]}'
              if result['tune'] == 'seed' else 'dev, mean of the seeds')
  lines = [
    f'| optimizer | LR (tuned on {tuned_on}) | LRs tried | dev loss '
    f'(tuning) | test PPL, mean ± std (n={result["seeds"]}) | Δ test PPL '
    'vs its base, paired | max \\|S-1\\| at end, mean of seeds | clamped |',
    '|---|---|---|---|---|---|---|---|']
  for s in result['summary'].values():
    diff = s.get('paired_ppl_diff')
    dtext = '' if not diff or diff['mean'] is None else (
      f'{diff["mean"]:+.2f} ± {diff["std"]:.2f}')
    edge = ' (grid edge)' if s['lr_at_grid_edge'] else ''
    dev = '' if s['final_max_abs_dev'] is None else (
      f'{s["final_max_abs_dev"]:.3f}')
    clamped = ('' if s['clamped_fraction'] is None
               else f'{s["clamped_fraction"]:.0%}')
    div = f', {s["n_diverged"]} diverged' if s['n_diverged'] else ''
    tried = ', '.join(f'{x:g}' for x in s['lrs_tried'])
    lines.append(f'| {s["label"]} | {s["lr"]:g}{edge} | {tried} | '
                 f'{s["tune_dev_loss"]:.4f} | '
                 f'{_fmt(s["ppl_mean"], s["ppl_std"]).strip()}{div} | '
                 f'{dtext} | {dev} | {clamped} |')
  return '\n'.join(lines)


def compare_title(result: dict[str, Any], base: TrainConfig,
                  lrs: Sequence[float]) -> str:
  """The heading of `compare_table`: the model, the data and the budget."""
  first = next(iter(result['summary'].values()))
  what = (f'Experiment 2: LoRA pre-training, rank {base.lora_rank}, tuned '
          'comparison' if base.lora_rank else
          'Experiment 1: tuned comparison')
  return (f'{what} ({result["n_params"]:,} '
          f'parameters, {first["tokens_per_run"]:,} training tokens per run, '
          f'{base.corpus}, seq {base.seq_len}, batch {base.batch_size}, '
          f'{base.steps} steps, Adam b2 {base.b2}, initial LR grid '
          f'{list(lrs)}; test = {base.eval_windows or "all"} windows spanning '
          f'{result["eval_span"]:.0%} of the held-out split)')
