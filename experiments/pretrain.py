"""Pre-training experiments: Adam/Adafactor with and without SGG, tuned."""

# Run `python -m experiments.pretrain --help`. With no flags it runs the
# reduced experiment 1 (five optimizers, the paper's LR grid tuned on seed 0,
# the best LR for three seeds) on the ~0.6M-parameter `tiny` LLaMA and BBC
# News, prints a perplexity table and writes JSON, tables and PNGs to
# runs/pretrain/. Experiments (`--experiment`):
#
#   compare      1: every optimizer, LR tuned per optimizer, mean ± std PPL
#   robustness   3: Adam vs Adam+SGG on an LR grid up to 30x the tuned LR and
#                   two batch sizes at equal tokens: final loss / divergence
#   ablations    4: K, T and beta3 (relative to the run, and the paper's
#                   absolute T=500/beta3=0.99), MDA vs reference rule, SGG on
#                   1-D parameters, |m|; with how far the scales move
#   scales       5: per-layer cluster scales over training (from `compare`)
#   all          all of the above, in that order
#
# Every run's full results go to <out>/runs/<tag>.json; a rerun reuses the
# runs already there (delete them or pass --fresh), so a long sweep resumes.
# Experiment 2 (LoRA pre-training) is `compare` with `--lora-rank R`: LoRA
# adapters (experiments/lora.py) on frozen random attention/MLP kernels.

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import plots
from experiments import train as train_lib
from experiments.train import LABELS, SGG_OPTIMIZERS, TrainConfig

PAPER_LRS = (1e-2, 5e-3, 1e-3, 5e-4)
BASELINE_OF = {'adam_sgg': 'adam', 'adam_sgg_momentum': 'adam',
               'adafactor_sgg': 'adafactor'}

# The main job's model and budget (see the module comment and --help).
DEFAULTS = TrainConfig(
  preset='tiny', corpus='bbc_news', tokenizer='bpe', vocab_size=2048,
  seq_len=128, batch_size=16, steps=100, beta3=0.9, eval_batches=16,
  log_every=5)

SMOKE = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, seq_len=32,
             batch_size=8, steps=6, eval_batches=2, log_every=2, eval_every=3)


def _recluster(cfg: TrainConfig, t_frac: float) -> TrainConfig:
  """Sets T to `t_frac` of the run (when > 0)."""
  if t_frac > 0:
    return cfg.replace(recluster_interval=max(1, round(t_frac * cfg.steps)))
  return cfg


def _tag(cfg: TrainConfig) -> str:
  """A readable run name plus a hash of the whole configuration."""
  digest = hashlib.sha1(json.dumps(dataclasses.asdict(cfg), sort_keys=True)
                        .encode()).hexdigest()[:8]
  return (f'{cfg.optimizer}_lr{cfg.lr:g}_bs{cfg.batch_size}_s{cfg.seed}_'
          f'{digest}')


class Runner:
  """Runs (or reloads) training runs and keeps their results."""

  def __init__(self, out: pathlib.Path, fresh: bool, progress: bool):
    self.out = out
    self.fresh = fresh
    self.progress = progress
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
      if result['config'] == dataclasses.asdict(cfg):
        self.n_reused += 1
        return result
    result = train_lib.train(cfg, out=path, progress=self.progress, desc=tag,
                             streams=self.streams(cfg))
    self.n_run += 1
    return result


def _score(result: dict[str, Any]) -> float:
  loss = result['final_val_loss']
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


# ------------------------------------------------------------------------------
# Experiment 1: the tuned comparison
# ------------------------------------------------------------------------------


def compare(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
            lrs: Sequence[float], seeds: int, tune: str, t_frac: float
            ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
  """Tunes each optimizer's LR on the grid, then runs the best for all seeds.

  Args:
    base: shared configuration.
    runner: the run cache.
    optimizers: optimizer names.
    lrs: the learning-rate grid.
    seeds: number of seeds (0..seeds-1).
    tune: 'seed0' (tune on seed 0, then the best LR for every seed) or
      'full' (grid x seeds, the best mean).
    t_frac: SGG's T as a fraction of the run (0: `base.recluster_interval`).

  Returns:
    The experiment's summary (JSON-able) and, per optimizer, the results of
    its seeds at the chosen learning rate.
  """
  sweep: dict[str, dict[str, Any]] = {}
  summary: dict[str, Any] = {}
  runs: dict[str, list[dict[str, Any]]] = {}
  tune_seeds = range(seeds) if tune == 'full' else range(1)
  for opt in optimizers:
    cfg = _recluster(base.replace(optimizer=opt), t_frac)
    sweep[opt] = {}
    scores = {}
    for lr in lrs:
      results = [runner.run(cfg.replace(lr=lr, seed=s)) for s in tune_seeds]
      sweep[opt][f'{lr:g}'] = {
        'ppl': [r['final_val_ppl'] for r in results],
        'loss': [r['final_val_loss'] for r in results]}
      scores[lr] = float(np.mean([_score(r) for r in results]))
    best = min(lrs, key=lambda lr: (scores[lr], lr))
    results = [runner.run(cfg.replace(lr=best, seed=s)) for s in range(seeds)]
    runs[opt] = results
    ppl = _stats([r['final_val_ppl'] for r in results])
    loss = _stats([r['final_val_loss'] for r in results])
    summary[opt] = {
      'label': LABELS[opt], 'lr': best,
      'lr_at_grid_edge': best in (min(lrs), max(lrs)) and len(lrs) > 1,
      'ppl_mean': ppl['mean'], 'ppl_std': ppl['std'], 'ppl': ppl['values'],
      'loss_mean': loss['mean'], 'loss_std': loss['std'],
      'n_diverged': ppl['n_diverged'],
      'recluster_interval': cfg.recluster_interval
      if opt in SGG_OPTIMIZERS else None,
      'beta3': cfg.beta3 if opt in SGG_OPTIMIZERS else None,
      'tokens_per_run': results[0]['tokens_seen'],
      'tokens_per_s': float(np.mean([r['tokens_per_s'] for r in results])),
      'final_max_abs_dev': (results[0]['curves']['sgg'][-1]['max_abs_dev']
                            if results[0]['curves']['sgg'] else None),
    }
  for opt, base_opt in BASELINE_OF.items():
    if opt in summary and base_opt in summary:
      diffs = [a - b for a, b in zip(summary[opt]['ppl'],
                                     summary[base_opt]['ppl'])
               if a is not None and b is not None]
      summary[opt]['paired_ppl_diff_vs'] = base_opt
      summary[opt]['paired_ppl_diff'] = _stats(diffs)
  first = runs[optimizers[0]][0]
  return {
    'experiment': 'compare', 'tune': tune, 'lr_grid': list(lrs),
    'seeds': seeds, 't_frac': t_frac, 'base_config': dataclasses.asdict(base),
    'n_params': first['model']['n_params'], 'device': first['device'],
    'summary': summary, 'sweep': sweep,
  }, runs


def compare_table(result: dict[str, Any]) -> str:
  """The PPL table of `compare`, as Markdown."""
  tuned_on = 'seed 0' if result['tune'] == 'seed0' else 'all seeds'
  lines = [
    f'| optimizer | LR (tuned on {tuned_on}) '
    f'| final val PPL, mean ± std (n={result["seeds"]}) | Δ PPL vs its base, '
    'paired mean ± std | max \\|S-1\\| at end |',
    '|---|---|---|---|---|']
  for s in result['summary'].values():
    diff = s.get('paired_ppl_diff')
    dtext = '' if not diff or diff['mean'] is None else (
      f'{diff["mean"]:+.2f} ± {diff["std"]:.2f}')
    edge = ' (grid edge)' if s['lr_at_grid_edge'] else ''
    dev = '' if s['final_max_abs_dev'] is None else (
      f'{s["final_max_abs_dev"]:.3f}')
    div = f', {s["n_diverged"]} diverged' if s['n_diverged'] else ''
    lines.append(f'| {s["label"]} | {s["lr"]:g}{edge} | '
                 f'{_fmt(s["ppl_mean"], s["ppl_std"]).strip()}{div} | {dtext} '
                 f'| {dev} |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------
# Experiment 3: LR and batch-size robustness
# ------------------------------------------------------------------------------


def robustness(base: TrainConfig, runner: Runner, optimizers: Sequence[str],
               base_lr: float, multipliers: Sequence[float],
               batch_sizes: Sequence[int], seeds: int, t_frac: float
               ) -> dict[str, Any]:
  """Final validation loss on an (LR x batch size) grid, at equal tokens.

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
        st = _stats([r['final_val_loss'] for r in results])
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


def ablations(base: TrainConfig, runner: Runner, lr: float, seeds: int,
              t_frac: float, smoke: bool = False,
              baseline_lr: float | None = None) -> dict[str, Any]:
  """Adam+SGG variants at one LR, with Adam at its own LR for reference.

  Args:
    base: shared configuration.
    runner: the run cache.
    lr: Adam+SGG's tuned learning rate.
    seeds: seeds per variant.
    t_frac: the default T as a fraction of the run.
    smoke: only two variants.
    baseline_lr: Adam's tuned learning rate (default `lr`).

  Returns:
    Per variant: PPL statistics and how far the scales moved.
  """
  cfg0 = _recluster(base.replace(optimizer='adam_sgg', lr=lr), t_frac)
  adam = [runner.run(base.replace(optimizer='adam', lr=baseline_lr or lr,
                                  seed=s)) for s in range(seeds)]
  adam_ppl = [r['final_val_ppl'] for r in adam]
  out: dict[str, Any] = {
    'Adam (no SGG)': {**_stats(adam_ppl), 'lr': baseline_lr or lr}}
  movement = {}
  for name, over in ablation_variants(base.steps, base.beta3, t_frac,
                                      smoke).items():
    cfg = cfg0.replace(**over)
    results = [runner.run(cfg.replace(seed=s)) for s in range(seeds)]
    ppl = [r['final_val_ppl'] for r in results]
    diffs = [a - b for a, b in zip(ppl, adam_ppl)
             if a is not None and b is not None]
    diag = [r['curves']['sgg'] for r in results if r['curves']['sgg']]
    out[name] = {
      **_stats(ppl), 'lr': lr, 'overrides': over,
      'recluster_interval': cfg.recluster_interval, 'beta3': cfg.beta3,
      'n_refreshes': cfg.steps // cfg.recluster_interval,
      'paired_diff_vs_adam': _stats(diffs),
      'final_max_abs_dev': (float(np.mean([d[-1]['max_abs_dev']
                                           for d in diag])) if diag else None),
      'final_mean_abs_dev': (float(np.mean([d[-1]['mean_abs_dev']
                                            for d in diag]))
                             if diag else None),
    }
    if diag:
      movement[name] = {
        'steps': [d['step'] for d in diag[0]],
        'max_abs_dev': [d['max_abs_dev'] for d in diag[0]],
        'mean_abs_dev': [d['mean_abs_dev'] for d in diag[0]]}
  return {'experiment': 'ablations', 'lr': lr, 'seeds': seeds,
          'steps': base.steps, 'variants': out, 'movement': movement}


def ablation_table(result: dict[str, Any]) -> str:
  """The ablation results, as Markdown."""
  lines = ['| variant | refreshes | final val PPL, mean ± std | Δ vs Adam, '
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
    refreshes = v.get('n_refreshes', '')
    ppl = _fmt(v['mean'], v['std']).strip()
    lines.append(f'| {name} | {refreshes} | {ppl} | {dtext} | {dev} '
                 f'| {mdev} |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(',') if x.strip()]


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x.strip()]


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
                      help='comma-separated optimizers for `compare`')
  parser.add_argument('--lrs', default=','.join(f'{x:g}' for x in PAPER_LRS),
                      help="the LR grid (the paper's)")
  parser.add_argument('--seeds', type=int, default=3,
                      help='seeds per optimizer (0..N-1)')
  parser.add_argument('--tune', choices=('seed0', 'full'), default='seed0',
                      help='seed0: tune the LR on seed 0 then run the best '
                           'for every seed; full: grid x seeds')
  parser.add_argument('--t-frac', type=float, default=0.05,
                      help="SGG's T as a fraction of the run (the paper's "
                           "'5%% of the total iterations'); 0: use "
                           '--recluster-interval')
  parser.add_argument('--lr-multipliers', default='1,3,10,30',
                      help='robustness: multiples of the tuned Adam LR')
  parser.add_argument('--batch-sizes', default='',
                      help='robustness: comma-separated batch sizes at equal '
                           "tokens; '': B and 4B, B the --batch-size")
  parser.add_argument('--robustness-seeds', type=int, default=1,
                      help='robustness: seeds per cell')
  parser.add_argument('--ablation-seeds', type=int, default=0,
                      help='ablations: seeds per variant (0: --seeds)')
  parser.add_argument('--base-lr', type=float, default=0.0,
                      help='robustness/ablations LR when no `compare` '
                           'result exists (0: the grid middle)')
  parser.add_argument('--fresh', action='store_true',
                      help='rerun runs whose JSON already exists')
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
  (out / name).write_text(json.dumps(obj, indent=1,
                                     default=train_lib._json_default))  # pylint: disable=protected-access


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  train_lib.init_distributed(args.coordinator, args.num_processes,
                             args.process_id, args.distributed)
  t0 = time.time()
  base = train_lib.config_from_args(args, DEFAULTS)
  optimizers = [o.strip() for o in args.optimizers.split(',') if o.strip()]
  lrs = _floats(args.lrs)
  seeds = args.seeds
  mults = _floats(args.lr_multipliers)
  batch_sizes = _ints(args.batch_sizes) or [base.batch_size,
                                            4 * base.batch_size]
  robust_seeds, ablation_seeds = args.robustness_seeds, (
    args.ablation_seeds or seeds)
  if args.smoke:
    base = base.replace(**SMOKE, recluster_interval=2, beta3=0.5)
    optimizers = [o for o in optimizers if o in ('adam', 'adam_sgg')] or [
      'adam', 'adam_sgg']
    lrs, seeds, mults = [1e-3, 3e-3], 2, [1.0, 30.0]
    args.t_frac = 0.3
    batch_sizes = [base.batch_size, 2 * base.batch_size]
    robust_seeds, ablation_seeds = 1, 1
  if base.eval_every == 0:  # five validation points per run
    base = base.replace(eval_every=max(1, base.steps // 5))
  for opt in optimizers:
    if opt not in train_lib.OPTIMIZERS:
      raise SystemExit(f'unknown optimizer {opt!r}')
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runner = Runner(out, args.fresh, args.progress)
  which = args.experiment
  results: dict[str, Any] = {}
  printed: list[str] = []

  def show(title: str, table: str) -> None:
    text = f'\n## {title}\n\n{table}\n'
    print(text)
    printed.append(text)

  compare_path = out / 'compare.json'
  if which in ('compare', 'all', 'scales') and not (
      which == 'scales' and compare_path.exists()):
    res, runs = compare(base, runner, optimizers, lrs, seeds, args.tune,
                        args.t_frac)
    _write(out, 'compare.json', res)
    results['compare'] = res
    info = (f'{res["n_params"]:,} parameters, '
            f'{res["summary"][optimizers[0]]["tokens_per_run"]:,} training '
            f'tokens per run, {base.corpus}, seq {base.seq_len}, batch '
            f'{base.batch_size}, {base.steps} steps, LR grid {lrs}')
    show(f'Experiment 1: tuned comparison ({info})', compare_table(res))
    plots.plot_compare(res['summary'], runs, out / 'compare_curves.png',
                       LABELS)
    plots.plot_lr_sweep(res['sweep'], out / 'compare_lr_sweep.png', LABELS)
  tuned = {}
  if compare_path.exists():
    summary = json.loads(compare_path.read_text())['summary']
    tuned = {opt: s['lr'] for opt, s in summary.items()}
  default_lr = args.base_lr or sorted(lrs)[len(lrs) // 2]

  if which in ('scales', 'all', 'compare'):
    for opt in SGG_OPTIMIZERS:
      if opt not in tuned:
        continue
      cfg = _recluster(base.replace(optimizer=opt, lr=tuned[opt], seed=0),
                       args.t_frac)
      result = runner.run(cfg)
      if result['curves']['sgg']:
        plots.plot_scales(result, out / f'scales_{opt}.png',
                          f'{LABELS[opt]}, lr {tuned[opt]:g}, seed 0: '
                          'cluster scales per layer (legend: share of '
                          'elements at the end)')

  if which in ('robustness', 'all'):
    lr = tuned.get('adam', default_lr)
    res = robustness(base, runner, ['adam', 'adam_sgg'], lr, mults,
                     batch_sizes, robust_seeds, args.t_frac)
    _write(out, 'robustness.json', res)
    results['robustness'] = res
    show(f'Experiment 3: final validation loss, LR x batch size at equal '
         f'tokens (tuned Adam LR {lr:g}; div = diverged)',
         robustness_table(res))
    plots.plot_heatmaps(res, out / 'robustness_heatmap.png', LABELS)

  if which in ('ablations', 'all'):
    lr = tuned.get('adam_sgg', default_lr)
    res = ablations(base, runner, lr, ablation_seeds, args.t_frac,
                    smoke=args.smoke, baseline_lr=tuned.get('adam', lr))
    _write(out, 'ablations.json', res)
    results['ablations'] = res
    show(f'Experiment 4: Adam+SGG ablations at lr {lr:g} '
         f'({ablation_seeds} seeds; Adam at its tuned lr '
         f'{tuned.get("adam", lr):g})', ablation_table(res))
    if res['movement']:
      plots.plot_scale_movement(res['movement'],
                                out / 'ablations_scale_movement.png')

  wall = time.time() - t0
  footer = (f'\n{runner.n_run} runs trained, {runner.n_reused} reused, '
            f'{wall / 60:.1f} min wall time; results in {out}/')
  print(footer)
  printed.append(footer)
  with open(out / f'tables_{which}.md', 'w') as f:
    f.write(''.join(printed))
  return results


if __name__ == '__main__':
  main()
