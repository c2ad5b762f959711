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
from experiments.pretraining import checkpointing
from experiments.pretraining.config import (
  SMOKE,
  TrainConfig,
  add_config_args,
  config_from_args,
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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  add_config_args(parser)
  add_distributed_args(parser)
  parser.add_argument('--out', default='runs/train/result.json',
                      help='results JSON path')
  parser.add_argument('--smoke', action='store_true',
                      help='a few steps of a tiny model (CI)')
  parser.add_argument('--progress', action=argparse.BooleanOptionalAction,
                      default=True, help='show a progress bar')
  return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = build_parser()
  args = parser.parse_args(argv)
  init_distributed(args.coordinator, args.num_processes, args.process_id,
                   args.distributed)
  cfg = config_from_args(args)
  if args.smoke:
    cfg = cfg.replace(**SMOKE)
  check_config(parser, cfg)
  out = pathlib.Path(args.out)
  if out.is_dir():
    parser.error(f'argument --out: {out} is a directory; give a file path')
  result = train(cfg, out=out, progress=args.progress,
                 argv=['python', '-m', 'experiments.train',
                       *(sys.argv[1:] if argv is None else argv)])
  if jax.process_index() == 0:
    ppl, dev = result['test_ppl'], result['dev_loss']
    print(f'{cfg.optimizer} lr={cfg.lr:g}: dev loss '
          f'{"-" if dev is None else f"{dev:.4f}"}, '
          f'test ppl {"diverged" if ppl is None else f"{ppl:.2f}"} '
          f'({result["tokens_per_s"]:,.0f} tok/s, '
          f'{result["wall_time_s"]:.0f} s) -> {args.out}')
  return result
