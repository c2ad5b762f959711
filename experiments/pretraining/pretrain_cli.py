"""Pre-training experiments: Adam/Adafactor with and without SGG, tuned."""

# Run `python -m experiments.pretrain --help`. With no flags it runs the
# reduced experiment 1 (five optimizers: Adam, Adam+SGG in the update and the
# momentum form, Adafactor, Adafactor+SGG in the update form, each with its
# own learning rate
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
#   c4_table     every row of the paper's C4 table that runs here, tuned as
#                   `compare`, SGG rows paired with their base (c4_table.py)
#   breaking     where Adam breaks: no clipping, no warm-up, LRs upward
#                   until Adam diverges, batch 4 to 64, per-seed divergence,
#                   spikes and final loss, for Adam(+SGG) and LAMB(+SGG)
#
# `--max-minutes M` makes any of them a chunk: no run starts that would end
# past M minutes (judged by the longest run so far); the command then exits
# with status 3, and the same command continues from the run JSONs.
#
# Tuning and reporting use different data and seeds (evaluation.py): the
# learning rate is chosen on **dev** (held out of the training stream) with
# the tuning seed (`--tune-seed`, 100, not a reported seed); the chosen LR
# then runs for seeds 0..N-1, reported on **test** (the corpus's held-out
# documents). A best LR at the edge of the grid extends the grid by the
# grid's own ratio, up to `--max-extensions` times per edge.
#
# Every run's full results go to <out>/runs/<tag>.json; a rerun reuses a run
# there only when its configuration and its code (both source hashes,
# `records.code_key()`) match, so a long sweep resumes and a stale run is
# never reused. <out>/COMMAND.txt records the commands that filled <out>.
# Experiment 2 (LoRA pre-training) is `compare` with `--lora-rank R`: LoRA
# adapters (experiments/common/lora.py) on frozen random attention/MLP
# kernels.
#
# The code: the run cache and LR tuning (runner.py), one module per
# experiment (compare.py, robustness.py, ablations.py), the figures
# (plots.py) and, here, the command line that ties them together.

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments.common import cli, records
from experiments.pretraining import plots, table_cli
from experiments.pretraining.ablations import (
  ablation_table,
  ablations,
  b2_rows,
)
from experiments.pretraining.compare import (
  TUNE_SEED,
  compare,
  compare_table,
  compare_title,
)
from experiments.pretraining.config import (
  LABELS,
  MAIN_OPTIMIZERS,
  SGG_OPTIMIZERS,
  TrainConfig,
  add_config_args,
  canonical,
  config_from_args,
  never_refreshes,
  optimizer_name,
  warn_deprecated,
)
from experiments.pretraining.deprecation import deprecated_flag
from experiments.pretraining.distributed import init_distributed
from experiments.pretraining.robustness import robustness, robustness_table
from experiments.pretraining.runner import (
  BudgetSpent,
  Runner,
  StoredRuns,
  _recluster,
)
from experiments.pretraining.train_cli import (
  add_distributed_args,
  check_config,
)

PAPER_LRS = (1e-2, 5e-3, 1e-3, 5e-4)
T_FRAC = 0.05  # SGG's default T, as a fraction of the run
# The main job's grid: factors of 2 around the optimum of earlier runs at
# this scale; an optimum at either end extends it (`tune_lr`).
DEFAULT_LRS = (2.5e-3, 5e-3, 1e-2)

# The main job's model and budget (see the module comment and --help).
DEFAULTS = TrainConfig(
  preset='tiny', corpus='bbc_news', tokenizer='bpe', vocab_size=2048,
  seq_len=128, batch_size=16, steps=100, beta3=0.9, eval_windows=256,
  log_every=5)

CHUNK_OVER = 3  # exit status of a --max-minutes chunk that stopped early

SMOKE = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, seq_len=32,
             batch_size=8, steps=6, eval_windows=16, log_every=2,
             eval_every=3)


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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.pretrain',
    description=__doc__,
    epilog='Model, data and optimizer flags set the shared configuration; '
           'the defaults are the CPU main job (its run time on several CPUs: '
           'docs/pretraining.md).',
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--experiment', default='compare',
                      choices=('compare', 'robustness', 'ablations', 'scales',
                               'all', 'c4_table', 'breaking'),
                      help='which experiment(s) to run')
  parser.add_argument('--out', default='runs/pretrain',
                      help='results directory')
  parser.add_argument('--optimizers', default=','.join(MAIN_OPTIMIZERS),
                      type=cli.comma_list(optimizer_name),
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
  parser.add_argument('--recluster-interval-frac', type=cli.unit_interval,
                      default=None, dest='t_frac',
                      help=f"SGG's T as a fraction of the run (default "
                           f"{T_FRAC:g}: the paper's '5%% of the total "
                           "iterations'); 0: T = --recluster-interval")
  parser.add_argument('--recluster-interval', type=cli.positive_int,
                      default=None,
                      help="SGG's T in steps, the same for every run (not "
                           'with --recluster-interval-frac); before step T '
                           'every scale is 1 (default: '
                           '--recluster-interval-frac of each run)')
  deprecated_flag(parser, '--t-frac', '--recluster-interval-frac',
                  dest='t_frac', type=cli.unit_interval)
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
                      help="print experiment 1's table (or c4_table's) "
                           'from the run JSONs in --out/runs (any code '
                           'version), training and writing nothing')
  parser.add_argument('--smoke', action='store_true',
                      help='seconds-long runs of a 1-layer model (CI)')
  parser.add_argument('--max-minutes', type=cli.positive_float, default=None,
                      help='run as a chunk of about this many minutes: start '
                           'no run that would end past them (judged by the '
                           'longest run so far), then exit with status 3; '
                           'the same command continues from the run JSONs')
  parser.add_argument('--progress', action=argparse.BooleanOptionalAction,
                      default=True, help='progress bars')
  add_config_args(parser, DEFAULTS,
                  skip=('optimizer', 'lr', 'seed', 'ckpt_dir', 'ckpt_every',
                        'recluster_interval'))
  add_distributed_args(parser)
  table_cli.add_args(parser)
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
  base = config_from_args(args, DEFAULTS)
  t_frac = T_FRAC if args.t_frac is None else args.t_frac
  if args.recluster_interval is not None:
    if t_frac and args.t_frac is not None:
      parser.error('argument --recluster-interval: not allowed with '
                   '--recluster-interval-frac above 0 (give T one way)')
    base, t_frac = base.replace(
      recluster_interval=args.recluster_interval), 0.0
  s = dict(optimizers=args.optimizers, lrs=args.lrs, seeds=args.seeds,
           mults=args.lr_multipliers, t_frac=t_frac,
           batch_sizes=args.batch_sizes or [base.batch_size,
                                            4 * base.batch_size],
           robust_seeds=args.robustness_seeds,
           ablation_seeds=args.ablation_seeds or args.seeds,
           max_extensions=args.max_extensions)
  if args.smoke:
    base = base.replace(**SMOKE, recluster_interval=2, beta3=0.5)
    s.update(optimizers=[o for o in s['optimizers'] if o in (
               'adam', 'adam_sgg_update')] or ['adam', 'adam_sgg_update'],
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
    check_config(parser, base, [*s['batch_sizes'],
                                *table_cli.batch_sizes(args)])
  return base, s


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = build_parser()
  args = parser.parse_args(argv)
  warn_deprecated(parser.prog, sys.argv[1:] if argv is None else argv)
  if args.from_runs:
    if args.experiment == 'c4_table':
      base, s = _settings(parser, args, check=False)
      print(table_cli.stored_c4_table(args, base, s))
    else:
      print(stored_compare(sys.argv[1:] if argv is None else argv)[0])
    return {}
  init_distributed(args.coordinator, args.num_processes, args.process_id,
                   args.distributed)
  base, s = _settings(parser, args)
  if s['t_frac'] == 0:
    warning = never_refreshes(base.replace(optimizer='adam_sgg_update'))
    if warning and any(o in SGG_OPTIMIZERS for o in s['optimizers']):
      print(f'{parser.prog}: warning: {warning}', file=sys.stderr)
  t0 = time.time()
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    parser.error(f'argument --out: {out} exists and is not a directory')
  command = cli.command_line(argv, 'experiments.pretrain')
  out.mkdir(parents=True, exist_ok=True)
  write_command(out, command)
  runner = Runner(out, args.fresh, args.progress, argv=[
    'python', '-m', 'experiments.pretrain',
    *(sys.argv[1:] if argv is None else argv)], max_minutes=args.max_minutes)
  printed: list[str] = []

  def show(title: str, table: str) -> None:
    text = f'\n## {title}\n\n{table}\n'
    print(text)
    printed.append(text)

  try:
    results = _run_experiments(args, base, s, runner, out, show)
  except BudgetSpent as e:
    print(f'chunk over after {(time.time() - t0) / 60:.1f} min and '
          f'{runner.n_run} new run(s): {e} would end past --max-minutes '
          f'{args.max_minutes:g}. Run the same command again to continue '
          'from the run JSONs.', flush=True)
    raise SystemExit(CHUNK_OVER) from None
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
    tuned = {canonical(opt): v['lr'] for opt, v in summary.items()}
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
  if which == 'c4_table':
    results['c4_table'] = table_cli.run_c4_table(args, base, s, runner, out,
                                                 show)
  if which == 'breaking':
    results['breaking'] = table_cli.run_breaking(args, base, s, runner, out,
                                                 show, default_lr)
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
  lr = tuned.get('adam_sgg_update', default_lr)
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
