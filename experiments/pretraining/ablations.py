"""Experiment 4: Adam+SGG's ablations (K, T, beta3, rule, 1-D, |m|, b2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.pretraining.config import LABELS, SGG_OPTIMIZERS, TrainConfig
from experiments.pretraining.runner import (
  Runner,
  _fmt,
  _mean_of,
  _recluster,
  _stats,
  tune_lr,
)


def ablation_variants(steps: int, beta3: float, t_frac: float,
                      smoke: bool = False) -> dict[str, dict[str, Any]]:
  """SGG settings to compare (overrides of the chain-form default)."""
  t = max(1, round(t_frac * steps))
  variants = {
    f'default: K=3, T={t} ({t_frac:.1%}), beta3={beta3:g}': {},
    'K=2': {'num_clusters': 2},
    f'T={max(1, round(steps / 40))} (2.5%)': {
      'recluster_interval': max(1, round(steps / 40))},
    f'T={max(1, round(steps / 10))} (10%)': {
      'recluster_interval': max(1, round(steps / 10))},
    'beta3=0.99 (paper), T relative': {'beta3': 0.99},
    'paper absolute: T=500, beta3=0.99': {'recluster_interval': 500,
                                          'beta3': 0.99},
    "scale rule 'reference' (public code)": {'scale_rule': 'reference'},
    'SGG on 1-D params too': {'sgg_1d': True},
    'cluster |m| (abs)': {'cluster_stat': 'abs'},
    'momentum form (with_sgg)': {'optimizer': 'adam_sgg_momentum'},
  }
  if smoke:
    keep = list(variants)[:2]
    variants = {k: variants[k] for k in keep}
  return variants


def _variant_row(results: list[dict[str, Any]], adam_ppl: list[Any],
                 cfg: TrainConfig, over: dict[str, Any]) -> dict[str, Any]:
  """One ablation row: test PPL, paired difference to Adam, scale movement."""
  ppl = [r['test_ppl'] for r in results]
  diffs = [a - b for a, b in zip(ppl, adam_ppl)
           if a is not None and b is not None]
  diag = [r['curves']['sgg'] for r in results if r['curves']['sgg']]
  mean_last = lambda key: (float(np.mean([d[-1][key] for d in diag]))
                           if diag else None)
  sgg = cfg.optimizer in SGG_OPTIMIZERS
  return {
    **_stats(ppl), 'lr': cfg.lr, 'overrides': over,
    'recluster_interval': cfg.recluster_interval if sgg else None,
    'beta3': cfg.beta3 if sgg else None,
    'n_refreshes': cfg.steps // cfg.recluster_interval if sgg else None,
    'paired_diff_vs_adam': _stats(diffs),
    'final_max_abs_dev': mean_last('max_abs_dev'),
    'final_mean_abs_dev': mean_last('mean_abs_dev'),
    'clamped_fraction': _mean_of(results, 'clamped_fraction'),
  }


def b2_rows(base: TrainConfig, runner: Runner, lrs: Sequence[float],
            seeds: int, t_frac: float, tune_seed: int, max_extensions: int,
            smoke: bool = False
            ) -> dict[str, tuple[TrainConfig, list[dict[str, Any]]]]:
  """Adam (and Adam+SGG, update form) with b2 = 0.999, each with its own
  dev-tuned LR.

  Returns:
    Per row name, the configuration at the chosen LR and its seeds' results.
  """
  rows = {}
  for opt in ('adam',) if smoke else ('adam', 'adam_sgg_update'):
    cfg = _recluster(base.replace(optimizer=opt, b2=0.999), t_frac)
    best, _ = tune_lr(cfg, runner, lrs, [tune_seed], max_extensions,
                      final_eval_only=True)
    cfg = cfg.replace(lr=best)
    rows[f'{LABELS[opt]}, b2=0.999 (own tuned LR)'] = (
      cfg, [runner.run(cfg.replace(seed=s)) for s in range(seeds)])
  return rows


def ablations(base: TrainConfig, runner: Runner, lr: float, seeds: int,
              t_frac: float, smoke: bool = False,
              baseline_lr: float | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Adam+SGG variants at one LR, with Adam at its own LR for reference.

  Args:
    base: shared configuration.
    runner: the run cache.
    lr: Adam+SGG's tuned learning rate.
    seeds: seeds per variant.
    t_frac: the default T as a fraction of the run.
    smoke: only two variants.
    baseline_lr: Adam's tuned learning rate (default `lr`).
    extra: more rows, name -> (config, results) (`b2_rows`).

  Returns:
    Per variant: test PPL statistics and how far the scales moved.
  """
  cfg0 = _recluster(base.replace(optimizer='adam_sgg_update', lr=lr),
                    t_frac)
  adam = [runner.run(base.replace(optimizer='adam', lr=baseline_lr or lr,
                                  seed=s)) for s in range(seeds)]
  adam_ppl = [r['test_ppl'] for r in adam]
  out: dict[str, Any] = {
    'Adam (no SGG)': {**_stats(adam_ppl), 'lr': baseline_lr or lr}}
  movement = {}
  rows = {name: (cfg0.replace(**over), over) for name, over in
          ablation_variants(base.steps, base.beta3, t_frac, smoke).items()}
  for name, (cfg, over) in rows.items():
    results = [runner.run(cfg.replace(seed=s)) for s in range(seeds)]
    out[name] = _variant_row(results, adam_ppl, cfg, over)
    diag = results[0]['curves']['sgg']
    if diag:
      movement[name] = {
        'steps': [d['step'] for d in diag],
        'max_abs_dev': [d['max_abs_dev'] for d in diag],
        'mean_abs_dev': [d['mean_abs_dev'] for d in diag]}
  for name, (cfg, results) in (extra or {}).items():
    out[name] = _variant_row(results, adam_ppl, cfg, {'b2': cfg.b2})
  return {'experiment': 'ablations', 'lr': lr, 'seeds': seeds,
          'steps': base.steps, 'variants': out, 'movement': movement}


def ablation_table(result: dict[str, Any]) -> str:
  """The ablation results, as Markdown."""
  lines = ['| variant | refreshes | test PPL, mean ± std | Δ vs Adam, '
           'paired | max \\|S-1\\| | mean \\|S-1\\| |',
           '|---|---|---|---|---|---|']
  for name, v in result['variants'].items():
    diff = v.get('paired_diff_vs_adam')
    dtext = '' if not diff or diff['mean'] is None else (
      f'{diff["mean"]:+.2f} ± {diff["std"]:.2f}')
    dev = ('' if v.get('final_max_abs_dev') is None
           else f'{v["final_max_abs_dev"]:.4f}')
    mdev = ('' if v.get('final_mean_abs_dev') is None
            else f'{v["final_mean_abs_dev"]:.4f}')
    refreshes = '' if v.get('n_refreshes') is None else v['n_refreshes']
    ppl = _fmt(v['mean'], v['std']).strip()
    lines.append(f'| {name} | {refreshes} | {ppl} | {dtext} | {dev} '
                 f'| {mdev} |')
  return '\n'.join(lines)
