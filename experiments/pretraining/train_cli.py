"""One LLaMA pre-training loop for every experiment, from one CPU to a pod."""

# `python -m experiments.train` runs `main`: the flags of every `TrainConfig`
# field (experiments.pretraining.config), the multi-process ones
# (`add_distributed_args`, experiments.pretraining.distributed), and
# `check_config`, which turns what cannot run (a mesh the batch does not
# divide, a missing corpus, a foreign checkpoint) into a usage error before
# anything is written. The loop itself is experiments.pretraining.loop.

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax

from experiments.common import cli, corpora
from experiments.pretraining import checkpointing, optim_rows
from experiments.pretraining.config import (
  SMOKE,
  TrainConfig,
  add_config_args,
  config_from_args,
  never_refreshes,
  warn_deprecated,
)
from experiments.pretraining.distributed import (
  batch_axes,
  batch_shards,
  init_distributed,
  parse_mesh,
)
from experiments.pretraining.loop import train
from experiments.pretraining.streams import exported_streams


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
  """Flags of `init_distributed`."""
  group = parser.add_argument_group('multi-process')
  group.add_argument('--coordinator', default='',
                     help="host:port of process 0 (explicit multi-process "
                          "launch)")
  group.add_argument('--num-processes', type=cli.non_negative_int, default=0,
                     help='number of processes (explicit launch)')
  group.add_argument('--process-id', type=cli.int_at_least(-1), default=-1,
                     help="this process's index (explicit launch)")
  group.add_argument('--distributed', choices=('auto', 'off'), default='auto',
                     help='auto: initialise on SLURM / Open MPI / multi-host '
                          'TPU jobs; off: never')


def check_config(parser: argparse.ArgumentParser, cfg: TrainConfig,
                 batch_sizes: Sequence[int] = ()) -> None:
  """Cross-argument checks, as usage errors, before anything is written.

  Call after `init_distributed` (it reads the device and process counts).

  Args:
    parser: reports the error (exit status 2).
    cfg: the configuration.
    batch_sizes: more global batch sizes the command will use.
  """
  if (why := optim_rows.check(cfg)) is not None:
    parser.error(f'argument --optimizer: {why}')
  try:
    axes = parse_mesh(cfg.mesh)
  except ValueError as e:
    parser.error(f'argument --mesh: {e}')
  data = batch_shards(axes)
  for flag, size in [('--batch-size', cfg.batch_size),
                     ('--eval-batch-size', cfg.eval_batch_size)] + [
                       ('--batch-sizes', b) for b in batch_sizes]:
    if size and (size % data or size % jax.process_count()):
      split = ' x '.join(repr(a) for a in batch_axes(axes))
      parser.error(f'argument {flag}: {size} is not divisible by the mesh '
                   f'{split} axis ({data}) and the {jax.process_count()} '
                   'process(es)')
  if cfg.data_glob or cfg.eval_glob or cfg.tokenizer_file:
    from experiments.pretraining import c4

    for flag, error in c4.config_errors(cfg.data_glob, cfg.eval_glob,
                                        cfg.tokenizer_file):
      parser.error(f'argument {flag}: {error}')
  elif exported_streams(cfg) is None:
    try:
      corpora.load_corpus(cfg.corpus)
    except corpora.CorpusUnavailableError as e:
      parser.error(f'argument --corpus: {e}')
  if cfg.ckpt_dir:
    try:
      checkpointing.check_compatible(cfg.ckpt_dir, cfg)
    except checkpointing.CheckpointMismatchError as e:
      parser.error(f'argument --ckpt-dir: {e}')


# The command's defaults: SGG's scales move within the default run (T is
# 5% of it, `T_FRAC`, and beta3 0.9, as in the committed experiments).
DEFAULTS = TrainConfig(beta3=0.9)
T_FRAC = 0.05


def add_interval_args(parser: argparse.ArgumentParser) -> None:
  """SGG's T, in steps or as a fraction of the run (`resolve_interval`)."""
  parser.add_argument(
    '--recluster-interval', type=cli.positive_int, default=None,
    help="SGG's T in steps: clusters and scales refresh at steps T, 2T, "
         '...; before step T every scale is 1 (default: '
         '--recluster-interval-frac of --steps)')
  parser.add_argument(
    '--recluster-interval-frac', type=cli.float_in(0.0, 1.0, low_open=True),
    default=None,
    help=f"SGG's T as a fraction of --steps, rounded, at least 1 (default "
         f"{T_FRAC:g}: the paper's '5%% of the total iterations'); not with "
         '--recluster-interval')


def resolve_interval(parser: argparse.ArgumentParser,
                     args: argparse.Namespace, cfg: TrainConfig
                     ) -> TrainConfig:
  """``cfg`` with T from `add_interval_args`'s flags."""
  if args.recluster_interval is not None:
    if args.recluster_interval_frac is not None:
      parser.error('argument --recluster-interval-frac: not allowed with '
                   '--recluster-interval (give T one way)')
    return cfg.replace(recluster_interval=args.recluster_interval)
  frac = args.recluster_interval_frac or T_FRAC
  return cfg.replace(recluster_interval=max(1, round(frac * cfg.steps)))


def default_out(cfg: TrainConfig) -> pathlib.Path:
  """The results JSON's default path, named after the run."""
  return pathlib.Path('runs/train') / (
    f'{cfg.preset}_{cfg.optimizer}_lr{cfg.lr:g}_steps{cfg.steps}_'
    f's{cfg.seed}.json')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.train', description=__doc__,
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  add_config_args(parser, DEFAULTS, skip=('recluster_interval',))
  add_interval_args(parser)
  add_distributed_args(parser)
  parser.add_argument('--out', default=None,
                      help='results JSON path (default: runs/train/'
                           '<preset>_<optimizer>_lr<lr>_steps<steps>_'
                           's<seed>.json)')
  parser.add_argument('--smoke', action='store_true',
                      help='a few steps of a tiny model (CI)')
  parser.add_argument('--progress', action=argparse.BooleanOptionalAction,
                      default=True, help='show a progress bar')
  return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = build_parser()
  args = parser.parse_args(argv)
  warn_deprecated(parser.prog, sys.argv[1:] if argv is None else argv)
  init_distributed(args.coordinator, args.num_processes, args.process_id,
                   args.distributed)
  cfg = resolve_interval(parser, args, config_from_args(args, DEFAULTS))
  if args.smoke:
    cfg = cfg.replace(**SMOKE)
  check_config(parser, cfg)
  warning = never_refreshes(cfg)
  if warning and jax.process_index() == 0:
    print(f'{parser.prog}: warning: {warning}', file=sys.stderr)
  out = pathlib.Path(args.out) if args.out else default_out(cfg)
  if out.is_dir():
    parser.error(f'argument --out: {out} is a directory; give a file path')
  result = train(cfg, out=out, progress=args.progress,
                 argv=['python', '-m', 'experiments.train',
                       *(sys.argv[1:] if argv is None else argv)])
  if jax.process_index() == 0:
    ppl, dev = result['test_ppl'], result['dev_loss']
    diag = result['curves']['sgg']
    sgg = (f', SGG max |S-1| {diag[-1]["max_abs_dev"]:.3f} at the end'
           if diag else '')
    print(f'{cfg.optimizer} lr={cfg.lr:g}: dev loss '
          f'{"-" if dev is None else f"{dev:.4f}"}, '
          f'test ppl {"diverged" if ppl is None else f"{ppl:.2f}"}{sgg} '
          f'({result["tokens_per_s"]:,.0f} tok/s, '
          f'{result["wall_time_s"]:.0f} s) -> {out}')
  return result
