"""Pre-training experiments: Adam/Adafactor with and without SGG, tuned."""

# Run `python -m experiments.pretrain --help`. With no flags it runs the
# reduced experiment 1 (five optimizers, each with its own learning rate
# tuned on dev, then three seeds reported on test) on the ~0.6M-parameter
# `tiny` LLaMA and BBC News, prints a perplexity table and writes JSON,
# tables and PNGs to runs/pretrain/. Experiments (`--experiment`):
#
#   compare      1: every optimizer, LR tuned per optimizer, mean ± std PPL
#   robustness   3: the Adam-family arms of --optimizers (Adam, Adam+SGG in
#                   both forms) on an LR grid up to 30x Adam's tuned LR and
#                   two batch sizes at equal tokens: final loss / divergence
#   ablations    4: K, T and beta3 (relative to the run, and the paper's
#                   absolute T=500/beta3=0.99), MDA vs reference rule, SGG on
#                   1-D parameters, |m|, Adam's b2 = 0.999; with how far the
#                   scales move
#   scales       5: per-layer cluster scales over training (from `compare`)
#   all          all of the above, in that order
#
# Tuning and reporting use different data and seeds (evaluation.py): the
# learning rate is chosen on **dev** (held out of the training stream) with
# the tuning seed (`--tune-seed`, 100, not a reported seed); the chosen LR
# then runs for seeds 0..N-1, reported on **test** (data.py's held-out
# documents). A best LR at the edge of the grid extends the grid by the
# grid's own ratio, up to `--max-extensions` times per edge.
#
# Every run's full results go to <out>/runs/<tag>.json; a rerun reuses a run
# there only when its configuration and its code (both source hashes,
# `records.code_key()`) match, so a long sweep resumes and a stale run is
# never reused. <out>/COMMAND.txt records the commands that filled <out>.
# Experiment 2 (LoRA pre-training) is `compare` with `--lora-rank R`: LoRA
# adapters (experiments/lora.py) on frozen random attention/MLP kernels.

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import cli, plots, records
from experiments import train as train_lib
from experiments.train import LABELS, SGG_OPTIMIZERS, TrainConfig

PAPER_LRS = (1e-2, 5e-3, 1e-3, 5e-4)
# The main job's grid: factors of 2 around the optimum of earlier runs at
# this scale; an optimum at either end extends it (`tune_lr`).
DEFAULT_LRS = (2.5e-3, 5e-3, 1e-2)
TUNE_SEED = 100  # never one of the reported seeds 0..N-1
BASELINE_OF = {'adam_sgg': 'adam', 'adam_sgg_momentum': 'adam',
               'adafactor_sgg': 'adafactor'}

# The main job's model and budget (see the module comment and --help).
DEFAULTS = TrainConfig(
  preset='tiny', corpus='bbc_news', tokenizer='bpe', vocab_size=2048,
  seq_len=128, batch_size=16, steps=100, beta3=0.9, eval_windows=256,
  log_every=5)

SMOKE = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, seq_len=32,
             batch_size=8, steps=6, eval_windows=16, log_every=2,
             eval_every=3)


def _recluster(cfg: TrainConfig, t_frac: float) -> TrainConfig:
  """Sets T to `t_frac` of the run (when > 0)."""
  if t_frac > 0:
    return cfg.replace(recluster_interval=max(1, round(t_frac * cfg.steps)))
  return cfg


def _tag(cfg: TrainConfig) -> str:
  """A readable run name plus a hash of the configuration and the code."""
  key = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + records.code_key()
  digest = hashlib.sha1(key.encode()).hexdigest()[:8]
  return (f'{cfg.optimizer}_lr{cfg.lr:g}_bs{cfg.batch_size}_s{cfg.seed}_'
          f'{digest}')


def _same_code(result: dict[str, Any]) -> bool:
  prov = result.get('provenance') or {}
  return (prov.get('sgg_optax_source_sha256') == records.SGG_OPTAX_SOURCE
          and prov.get('experiments_source_sha256')
          == records.EXPERIMENTS_SOURCE)


class Runner:
  """Runs (or reloads) training runs and keeps their results.

  A run JSON is reused only when its configuration and both source hashes
  match this process's (`records.code_key()` is part of the file name, and
  the stored provenance is checked again on load).
  """

  def __init__(self, out: pathlib.Path, fresh: bool, progress: bool,
               argv: Sequence[str] | None = None):
    self.out = out
    self.fresh = fresh
    self.progress = progress
    self.argv = argv
    self._streams: dict[tuple[Any, ...], Any] = {}
    self.n_run = 0
    self.n_reused = 0

  def streams(self, cfg: TrainConfig) -> Any:
    key = (cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.data_dir)
    if key not in self._streams:
      self._streams[key] = train_lib.load_streams(cfg)
    return self._streams[key]

  def run(self, cfg: TrainConfig) -> dict[str, Any]:
    tag = _tag(cfg)
    path = self.out / 'runs' / f'{tag}.json'
    if path.exists() and not self.fresh:
      result = json.loads(path.read_text())
      if result['config'] == dataclasses.asdict(cfg) and _same_code(result):
        self.n_reused += 1
        return result
    result = train_lib.train(cfg, out=path, progress=self.progress, desc=tag,
                             streams=self.streams(cfg), argv=self.argv)
    self.n_run += 1
    return result


class StoredRuns(Runner):
  """A `Runner` that trains nothing: it returns the run JSONs in ``out/runs``.

  A run is found by its configuration (the stored one's fields), whatever
  code wrote it, so `compare` rebuilds a committed folder's table from its
  run JSONs (`--from-runs`); a configuration with no run JSON is an error.
  """

  def __init__(self, out: pathlib.Path):
    super().__init__(out, fresh=False, progress=False, argv=[])
    self._stored = [json.loads(p.read_text())
                    for p in sorted((out / 'runs').glob('*.json'))]

  def run(self, cfg: TrainConfig) -> dict[str, Any]:
    want = dataclasses.asdict(cfg)
    for result in self._stored:
      if all(want.get(k) == v for k, v in result['config'].items()):
        self.n_reused += 1
        return result
    raise LookupError(f'no run JSON in {self.out}/runs for {_tag(cfg)}')


def _score(result: dict[str, Any], split: str = 'dev') -> float:
  loss = result[f'{split}_loss']
  return math.inf if result['diverged'] or loss is None else loss


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
  ok = [v for v in values if v is not None and math.isfinite(v)]
  return {
    'values': list(values),
    'mean': float(np.mean(ok)) if ok else None,
    # Sample standard deviation (ddof=1) over the finished seeds.
    'std': float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0,
    'n': len(ok), 'n_diverged': len(values) - len(ok),
  }


def _fmt(mean: float | None, std: float) -> str:
  return 'diverged' if mean is None else f'{mean:8.2f} ± {std:5.2f}'


def _mean_of(results: Sequence[dict[str, Any]], key: str) -> float | None:
  values = [r[key] for r in results if r.get(key) is not None]
  return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------
# Experiment 1: the tuned comparison
# ------------------------------------------------------------------------------


def next_lr(grid: Sequence[float], upward: bool) -> float:
  """The grid's next LR beyond one end, at the ratio of its two end points.

  ``(2.5e-3, 5e-3, 1e-2)`` extends to 2e-2 upwards and 1.25e-3 downwards;
  the paper's ``(5e-4, 1e-3, 5e-3, 1e-2)`` to 2e-2 and 2.5e-4. A one-point
  grid extends by a factor of 2.
  """
  g = sorted(grid)
  if upward:
    return g[-1] * (g[-1] / g[-2] if len(g) > 1 else 2.0)
  return g[0] / (g[1] / g[0] if len(g) > 1 else 2.0)


def tune_lr(cfg: TrainConfig, runner: Runner, lrs: Sequence[float],
            seeds: Sequence[int], max_extensions: int,
            final_eval_only: bool = False) -> tuple[float, dict[str, Any]]:
  """The LR of lowest mean dev loss over ``seeds``, extending the grid.

  While the best LR is the smallest or the largest tried (and the grid has
  more than one point), the next LR beyond that end (`next_lr`) runs too,
  at most ``max_extensions`` times per end. With ``final_eval_only`` (tuning
  seeds that are not reported) the runs evaluate dev and test only at
  their end: the choice reads only the final dev loss, and no curve of
  theirs is plotted.

  Returns:
    The chosen LR and, per LR tried, the dev/test losses of its runs plus
    ``'lr_at_grid_edge'`` (still at an end after the extensions).
  """
  grid, sweep, extended = sorted(lrs), {}, {True: 0, False: 0}
  if final_eval_only:
    cfg = cfg.replace(eval_every=0)

  def run(lr: float) -> float:
    results = [runner.run(cfg.replace(lr=lr, seed=s)) for s in seeds]
    sweep[f'{lr:g}'] = {
      'lr': lr, 'seeds': list(seeds),
      'dev_loss': [r['dev_loss'] for r in results],
      'dev_ppl': [r['dev_ppl'] for r in results],
      'test_loss': [r['test_loss'] for r in results]}
    return float(np.mean([_score(r) for r in results]))

  scores = {lr: run(lr) for lr in grid}
  while True:
    best = min(grid, key=lambda lr: (scores[lr], lr))
    at_edge = len(grid) > 1 and best in (grid[0], grid[-1])
    upward = best == grid[-1]
    if not at_edge or extended[upward] >= max_extensions:
      break
    lr = next_lr(grid, upward)
    extended[upward] += 1
    scores[lr] = run(lr)
    grid = sorted(grid + [lr])
  return best, {'lrs': grid, 'by_lr': sweep, 'lr_at_grid_edge': at_edge,
                'extensions': extended[True] + extended[False]}


def _arm_summary(opt: str, cfg: TrainConfig, best: float,
                 tuning: dict[str, Any], results: list[dict[str, Any]]
                 ) -> dict[str, Any]:
  """One optimizer's row: test PPL of the reported seeds and what tuned it."""
  ppl = _stats([r['test_ppl'] for r in results])
  loss = _stats([r['test_loss'] for r in results])
  sgg = opt in SGG_OPTIMIZERS
  diag = results[0]['curves']['sgg']
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
    'final_max_abs_dev': diag[-1]['max_abs_dev'] if diag else None,
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
    'vs its base, paired | max \\|S-1\\| at end | clamped |',
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
  return (f'Experiment 1: tuned comparison ({result["n_params"]:,} '
          f'parameters, {first["tokens_per_run"]:,} training tokens per run, '
          f'{base.corpus}, seq {base.seq_len}, batch {base.batch_size}, '
          f'{base.steps} steps, Adam b2 {base.b2}, initial LR grid '
          f'{list(lrs)}; test = {base.eval_windows or "all"} windows spanning '
          f'{result["eval_span"]:.0%} of the held-out split)')


def stored_compare(argv: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
  """Experiment 1's heading and table, rebuilt from committed run JSONs.

  Args:
    argv: the command line that produced the folder (its ``COMMAND.txt``),
      plus ``--out`` naming the folder; nothing is trained or written.

  Returns:
    What ``--from-runs`` prints (the heading, a blank line, the table), and
    `compare`'s result (its summary holds every arm's test PPL per seed).
  """
  parser = build_parser()
  args = parser.parse_args(list(argv))
  base, s = _settings(parser, args, check=False)
  res, _ = compare(base, StoredRuns(pathlib.Path(args.out)), s['optimizers'],
                   s['lrs'], s['seeds'], args.tune, s['t_frac'],
                   args.tune_seed, s['max_extensions'])
  return f'{compare_title(res, base, s["lrs"])}\n\n{compare_table(res)}', res


# ------------------------------------------------------------------------------
# Experiment 3: LR and batch-size robustness
# ------------------------------------------------------------------------------


def robustness(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
               base_lr: float, multipliers: Sequence[float],
               batch_sizes: Sequence[int], seeds: int, t_frac: float
               ) -> dict[str, Any]:
  """Final test loss on an (LR x batch size) grid, at equal tokens.

  Args:
    base: shared configuration (its steps x batch size fix the tokens).
    runner: the run cache.
    optimizers: optimizer names (e.g. adam, adam_sgg).
    base_lr: the tuned learning rate the grid multiplies.
    multipliers: LR multiples.
    batch_sizes: global batch sizes.
    seeds: seeds per cell (the mean is reported).
    t_frac: SGG's T as a fraction of each run.

  Returns:
    The grid (JSON-able).
  """
  tokens = base.steps * base.batch_size
  lrs = [base_lr * m for m in multipliers]
  loss: dict[str, list[list[float | None]]] = {o: [] for o in optimizers}
  diverged: dict[str, list[list[int]]] = {o: [] for o in optimizers}
  for bs in batch_sizes:
    steps = max(1, tokens // bs)
    for opt in optimizers:
      row, drow = [], []
      for lr in lrs:
        cfg = _recluster(base.replace(optimizer=opt, lr=lr, batch_size=bs,
                                      steps=steps), t_frac)
        results = [runner.run(cfg.replace(seed=s)) for s in range(seeds)]
        st = _stats([r['test_loss'] for r in results])
        row.append(st['mean'] if st['n_diverged'] == 0 else None)
        drow.append(st['n_diverged'])
      loss[opt].append(row)
      diverged[opt].append(drow)
  return {'experiment': 'robustness', 'base_lr': base_lr,
          'multipliers': list(multipliers), 'lrs': lrs,
          'batch_sizes': list(batch_sizes), 'seeds': seeds,
          'tokens_per_run': tokens * base.seq_len, 'loss': loss,
          'n_diverged': diverged}


def robustness_table(result: dict[str, Any]) -> str:
  """The robustness grid, as Markdown."""
  lrs = result['lrs']
  lines = ['| optimizer | batch | ' + ' | '.join(
    f'lr {lr:.3g} ({m:g}x)' for lr, m in zip(lrs, result['multipliers']))
    + ' |', '|---|---|' + '---|' * len(lrs)]
  for opt, rows in result['loss'].items():
    for bs, row in zip(result['batch_sizes'], rows):
      cells = ['div' if v is None else f'{v:.3f}' for v in row]
      lines.append(f'| {LABELS[opt]} | {bs} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------
# Experiment 4: ablations
# ------------------------------------------------------------------------------


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
  """Adam (and Adam+SGG chain) with b2 = 0.999, each with its own dev-tuned LR.

  Returns:
    Per row name, the configuration at the chosen LR and its seeds' results.
  """
  rows = {}
  for opt in ('adam',) if smoke else ('adam', 'adam_sgg'):
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
  cfg0 = _recluster(base.replace(optimizer='adam_sgg', lr=lr), t_frac)
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


# ------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    description=__doc__,
    epilog='Model, data and optimizer flags set the shared configuration; '
           'the defaults are the ~10-15 minute CPU main job.',
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--experiment', default='compare',
                      choices=('compare', 'robustness', 'ablations', 'scales',
                               'all'),
                      help='which experiment(s) to run')
  parser.add_argument('--out', default='runs/pretrain',
                      help='results directory')
  parser.add_argument('--optimizers', default=','.join(train_lib.OPTIMIZERS),
                      type=cli.comma_list(cli.choice(train_lib.OPTIMIZERS)),
                      help='comma-separated optimizers for `compare` '
                           '(their Adam-family ones for `robustness`)')
  parser.add_argument('--lrs', default=list(DEFAULT_LRS),
                      type=cli.comma_list(cli.positive_float),
                      help='the initial LR grid (extended at an optimal '
                           "end); the paper's is "
                           + ','.join(f'{x:g}' for x in PAPER_LRS))
  parser.add_argument('--max-extensions', type=cli.non_negative_int,
                      default=2, help='grid extensions allowed per end')
  parser.add_argument('--seeds', type=cli.positive_int, default=3,
                      help='reported seeds per optimizer (0..N-1)')
  parser.add_argument('--tune', choices=('seed', 'full'), default='seed',
                      help='seed: tune the LR on dev with --tune-seed, then '
                           'report the best LR for seeds 0..N-1 on test; '
                           'full: grid x the reported seeds, best mean dev')
  parser.add_argument('--tune-seed', type=cli.non_negative_int,
                      default=TUNE_SEED,
                      help='seed of the tuning runs (--tune seed); must not '
                           'be a reported seed')
  parser.add_argument('--t-frac', type=cli.unit_interval, default=0.05,
                      help="SGG's T as a fraction of the run (the paper's "
                           "'5%% of the total iterations'); 0: use "
                           '--recluster-interval')
  parser.add_argument('--lr-multipliers', default=[1.0, 3.0, 10.0, 30.0],
                      type=cli.comma_list(cli.positive_float),
                      help='robustness: multiples of the tuned Adam LR')
  parser.add_argument('--batch-sizes', default=[],
                      type=cli.comma_list(cli.positive_int,
                                          allowed_empty=True),
                      help='robustness: comma-separated batch sizes at equal '
                           "tokens; '': B and 4B, B the --batch-size")
  parser.add_argument('--robustness-seeds', type=cli.positive_int, default=1,
                      help='robustness: seeds per cell')
  parser.add_argument('--ablation-seeds', type=cli.non_negative_int,
                      default=0,
                      help='ablations: seeds per variant (0: --seeds)')
  parser.add_argument('--base-lr', type=cli.non_negative_float, default=0.0,
                      help='robustness/ablations LR when no `compare` '
                           'result exists (0: the grid middle)')
  parser.add_argument('--fresh', action='store_true',
                      help='rerun runs whose JSON already exists')
  parser.add_argument('--from-runs', action='store_true',
                      help="print experiment 1's table from the run JSONs "
                           'in --out/runs (any code version), training and '
                           'writing nothing')
  parser.add_argument('--smoke', action='store_true',
                      help='seconds-long runs of a 1-layer model (CI)')
  parser.add_argument('--progress', action=argparse.BooleanOptionalAction,
                      default=True, help='progress bars')
  train_lib.add_config_args(parser, DEFAULTS,
                            skip=('optimizer', 'lr', 'seed', 'ckpt_dir',
                                  'ckpt_every'))
  train_lib.add_distributed_args(parser)
  return parser


def _write(out: pathlib.Path, name: str, obj: Any) -> None:
  records.write_json(out / name, obj)


def write_command(out: pathlib.Path, command: str) -> None:
  """Appends ``command`` to ``out/COMMAND.txt`` (once: reruns reuse runs)."""
  path = out / 'COMMAND.txt'
  lines = path.read_text().splitlines() if path.exists() else []
  if command not in lines:
    header = [] if lines else [
      '# The command(s) that produced this folder, in order; each reuses '
      'the runs of the ones before.']
    path.write_text('\n'.join(lines + header + [command]) + '\n')


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace,
              check: bool = True) -> tuple[TrainConfig, dict[str, Any]]:
  """The shared configuration and the experiments' settings, validated
  (``check``: also against the devices and the corpus)."""
  base = train_lib.config_from_args(args, DEFAULTS)
  s = dict(optimizers=args.optimizers, lrs=args.lrs, seeds=args.seeds,
           mults=args.lr_multipliers, t_frac=args.t_frac,
           batch_sizes=args.batch_sizes or [base.batch_size,
                                            4 * base.batch_size],
           robust_seeds=args.robustness_seeds,
           ablation_seeds=args.ablation_seeds or args.seeds,
           max_extensions=args.max_extensions)
  if args.smoke:
    base = base.replace(**SMOKE, recluster_interval=2, beta3=0.5)
    s.update(optimizers=[o for o in s['optimizers'] if o in (
               'adam', 'adam_sgg')] or ['adam', 'adam_sgg'],
             lrs=[1e-3, 3e-3], seeds=2, mults=[1.0, 30.0], t_frac=0.3,
             batch_sizes=[base.batch_size, 2 * base.batch_size],
             robust_seeds=1, ablation_seeds=1, max_extensions=0)
  if base.eval_every == 0:  # four dev/test points per run
    base = base.replace(eval_every=max(1, base.steps // 4))
  if args.tune == 'seed' and args.tune_seed < s['seeds']:
    parser.error(f'argument --tune-seed: {args.tune_seed} is one of the '
                 f'reported seeds 0..{s["seeds"] - 1}; use one >= '
                 f'{s["seeds"]}')
  if check:
    train_lib.check_config(parser, base, s['batch_sizes'])
  return base, s


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.from_runs:
    print(stored_compare(sys.argv[1:] if argv is None else argv)[0])
    return {}
  train_lib.init_distributed(args.coordinator, args.num_processes,
                             args.process_id, args.distributed)
  base, s = _settings(parser, args)
  t0 = time.time()
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    parser.error(f'argument --out: {out} exists and is not a directory')
  command = cli.command_line(argv, 'experiments.pretrain')
  out.mkdir(parents=True, exist_ok=True)
  write_command(out, command)
  runner = Runner(out, args.fresh, args.progress, argv=[
    'python', '-m', 'experiments.pretrain',
    *(sys.argv[1:] if argv is None else argv)])
  printed: list[str] = []

  def show(title: str, table: str) -> None:
    text = f'\n## {title}\n\n{table}\n'
    print(text)
    printed.append(text)

  results = _run_experiments(args, base, s, runner, out, show)
  footer = (f'\n{runner.n_run} runs trained, {runner.n_reused} reused, '
            f'{(time.time() - t0) / 60:.1f} min wall time; results in '
            f'{out}/')
  print(footer)
  printed.append(footer)
  (out / f'tables_{args.experiment}.md').write_text(''.join(printed))
  return results


def _run_experiments(args: argparse.Namespace, base: TrainConfig,
                     s: dict[str, Any], runner: Runner, out: pathlib.Path,
                     show: Any) -> dict[str, Any]:
  """Runs the chosen experiments in order; returns their summaries."""
  which, results = args.experiment, {}
  compare_path = out / 'compare.json'
  if which in ('compare', 'all', 'scales') and not (
      which == 'scales' and compare_path.exists()):
    results['compare'] = _compare(args, base, s, runner, out, show)
  tuned = {}
  if compare_path.exists():
    summary = json.loads(compare_path.read_text())['summary']
    tuned = {opt: v['lr'] for opt, v in summary.items()}
  default_lr = args.base_lr or sorted(s['lrs'])[len(s['lrs']) // 2]
  if which in ('scales', 'all', 'compare'):
    _scale_plots(base, runner, out, tuned, s['t_frac'])
  if which in ('robustness', 'all'):
    lr = tuned.get('adam', default_lr)
    # The grid multiplies Adam's tuned LR: the Adam family's arms only.
    arms = [o for o in s['optimizers'] if o.startswith('adam')]
    res = robustness(base, runner, arms, lr, s['mults'], s['batch_sizes'],
                     s['robust_seeds'], s['t_frac'])
    _write(out, 'robustness.json', res)
    results['robustness'] = res
    show(f'Experiment 3: final test loss, LR x batch size at equal tokens '
         f'(tuned Adam LR {lr:g}; div = diverged)', robustness_table(res))
    plots.plot_heatmaps(res, out / 'robustness_heatmap.png', LABELS)
  if which in ('ablations', 'all'):
    results['ablations'] = _ablations(args, base, s, runner, out, show,
                                      tuned, default_lr)
  return results


def _compare(args: argparse.Namespace, base: TrainConfig, s: dict[str, Any],
             runner: Runner, out: pathlib.Path, show: Any) -> dict[str, Any]:
  res, runs = compare(base, runner, s['optimizers'], s['lrs'], s['seeds'],
                      args.tune, s['t_frac'], args.tune_seed,
                      s['max_extensions'])
  _write(out, 'compare.json', res)
  show(compare_title(res, base, s['lrs']), compare_table(res))
  plots.plot_compare(res['summary'], runs, out / 'compare_curves.png',
                     LABELS)
  plots.plot_lr_sweep(res['sweep'], out / 'compare_lr_sweep.png', LABELS)
  return res


def _scale_plots(base: TrainConfig, runner: Runner, out: pathlib.Path,
                 tuned: dict[str, float], t_frac: float) -> None:
  for opt in SGG_OPTIMIZERS:
    if opt not in tuned:
      continue
    cfg = _recluster(base.replace(optimizer=opt, lr=tuned[opt], seed=0),
                     t_frac)
    result = runner.run(cfg)
    if result['curves']['sgg']:
      plots.plot_scales(result, out / f'scales_{opt}.png',
                        f'{LABELS[opt]}, lr {tuned[opt]:g}, seed 0: '
                        'cluster scales per layer (legend: share of '
                        'elements at the end)')


def _ablations(args: argparse.Namespace, base: TrainConfig,
               s: dict[str, Any], runner: Runner, out: pathlib.Path,
               show: Any, tuned: dict[str, float], default_lr: float
               ) -> dict[str, Any]:
  lr = tuned.get('adam_sgg', default_lr)
  extra = b2_rows(base, runner, s['lrs'], s['ablation_seeds'], s['t_frac'],
                  args.tune_seed, s['max_extensions'], smoke=args.smoke)
  res = ablations(base, runner, lr, s['ablation_seeds'], s['t_frac'],
                  smoke=args.smoke, baseline_lr=tuned.get('adam', lr),
                  extra=extra)
  _write(out, 'ablations.json', res)
  show(f'Experiment 4: Adam+SGG ablations at lr {lr:g} '
       f'({s["ablation_seeds"]} seeds, test PPL; Adam at its tuned lr '
       f'{tuned.get("adam", lr):g}, b2 {base.b2})', ablation_table(res))
  if res['movement']:
    plots.plot_scale_movement(res['movement'],
                              out / 'ablations_scale_movement.png')
  return res


if __name__ == '__main__':
  main()
