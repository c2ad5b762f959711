"""The flags and the drivers of ``--experiment c4_table`` and ``breaking``.

`add_args` adds their flags to ``python -m experiments.pretrain``;
`run_c4_table` and `run_breaking` run them (through the shared run cache,
so a ``--max-minutes`` chunk stops between runs and the same command
continues) and write their JSON, Markdown table and command.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from experiments.common import cli, records
from experiments.pretraining.c4_table import (
  TABLE,
  c4_markdown,
  c4_table,
  c4_title,
  default_rank,
)
from experiments.pretraining.config import TrainConfig, optimizer_name
from experiments.pretraining.robustness import (
  breaking,
  breaking_table,
  breaking_title,
)
from experiments.pretraining.runner import Runner, StoredRuns

Show = Callable[[str, str], None]


BREAKING_OPTIMIZERS = ('adam', 'adam_sgg_update', 'adam_sgg_momentum',
                       'lamb', 'lamb_sgg_momentum')


def add_args(parser: argparse.ArgumentParser) -> None:
  """The flags of the two experiments."""
  g = parser.add_argument_group(
    'c4_table (every row of the paper\'s C4 table) and breaking (where Adam '
    'breaks)')
  g.add_argument('--table-rows', default=[],
                 type=cli.comma_list(cli.choice([r.key for r in TABLE]),
                                     allowed_empty=True),
                 help='c4_table: only these rows (and the bases they pair '
                      "with); '': every row")
  g.add_argument('--table-rank', type=cli.non_negative_int, default=0,
                 help='c4_table: rank of the low-rank rows (LoRA, ReLoRA, '
                      'GaLore, Low-Rank); 0: a quarter of the width, the '
                      "paper's ratio")
  g.add_argument('--breaking-optimizers',
                 default=list(BREAKING_OPTIMIZERS),
                 type=cli.comma_list(optimizer_name),
                 help='breaking: the optimizers; the first (Adam) decides '
                      'how far the learning rate goes')
  g.add_argument('--breaking-multipliers',
                 default=[1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0],
                 type=cli.comma_list(cli.positive_float),
                 help="breaking: multiples of Adam's tuned LR, tried upward")
  g.add_argument('--breaking-batch-sizes', default=[4, 16, 64],
                 type=cli.comma_list(cli.positive_int),
                 help='breaking: batch sizes (each cell runs --steps steps)')
  g.add_argument('--breaking-warmup', type=cli.float_in(0, 1, high_open=True),
                 default=0.0,
                 help='breaking: warm-up fraction of the run (0: none)')
  g.add_argument('--breaking-clip', type=cli.non_negative_float, default=0.0,
                 help='breaking: gradient clipping norm (0: off)')
  g.add_argument('--breaking-seeds', type=cli.positive_int, default=1,
                 help='breaking: seeds per cell')
  g.add_argument('--split-seeds', type=cli.positive_int, default=3,
                 help='breaking: seeds of a cell where one optimizer '
                      'diverged and another did not')
  g.add_argument('--breaking-past', type=cli.non_negative_int, default=1,
                 help='breaking: multipliers run after Adam diverged on '
                      'every seed')


def _write(out: pathlib.Path, name: str, result: dict[str, Any],
           title: str, table: str, show: Show) -> None:
  records.write_json(out / f'{name}.json', result)
  (out / f'{name}.md').write_text(f'## {title}\n\n{table}\n')
  show(title, table)


def run_c4_table(args: argparse.Namespace, base: TrainConfig,
                 s: dict[str, Any], runner: Runner, out: pathlib.Path,
                 show: Show) -> dict[str, Any]:
  """Every row of the table, tuned and reported; c4_table.{json,md}."""
  rank = args.table_rank or default_rank(base)
  res = c4_table(base, runner, s['lrs'], s['seeds'], s['t_frac'],
                 args.tune_seed, s['max_extensions'], rank, args.table_rows)
  _write(out, 'c4_table', res, c4_title(res), c4_markdown(res), show)
  return res


def stored_c4_table(args: argparse.Namespace, base: TrainConfig,
                    s: dict[str, Any]) -> str:
  """c4_table's heading and table from the run JSONs in ``--out/runs``."""
  res = c4_table(base, StoredRuns(pathlib.Path(args.out)), s['lrs'],
                 s['seeds'], s['t_frac'], args.tune_seed, s['max_extensions'],
                 args.table_rank or default_rank(base), args.table_rows)
  return f'{c4_title(res)}\n\n{c4_markdown(res)}'


def tuned_adam_lr(out: pathlib.Path, fallback: float) -> float:
  """Adam's tuned LR from this folder's c4_table.json or compare.json."""
  path = out / 'c4_table.json'
  if path.exists():
    for row in json.loads(path.read_text())['rows']:
      if row['key'] == 'adam' and row['summary']:
        return row['summary']['lr']
  path = out / 'compare.json'
  if path.exists():
    summary = json.loads(path.read_text())['summary']
    if 'adam' in summary:
      return summary['adam']['lr']
  return fallback


def run_breaking(args: argparse.Namespace, base: TrainConfig,
                 s: dict[str, Any], runner: Runner, out: pathlib.Path,
                 show: Show, default_lr: float) -> dict[str, Any]:
  """The breaking grid; breaking.{json,md}."""
  lr = tuned_adam_lr(out, args.base_lr or default_lr)
  regime = base.replace(clip_norm=args.breaking_clip,
                        warmup_frac=args.breaking_warmup)
  res = breaking(regime, runner, args.breaking_optimizers, lr,
                 args.breaking_multipliers, args.breaking_batch_sizes,
                 args.breaking_seeds, max(args.split_seeds,
                                          args.breaking_seeds),
                 args.breaking_past, s['t_frac'])
  _write(out, 'breaking', res, breaking_title(res), breaking_table(res),
         show)
  return res


def batch_sizes(args: argparse.Namespace) -> Sequence[int]:
  """The batch sizes the chosen experiment trains (checked against the
  mesh before anything runs)."""
  return args.breaking_batch_sizes if args.experiment == 'breaking' else ()
