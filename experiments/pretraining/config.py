"""What defines a pre-training run: `TrainConfig`, its presets and its flags.

Every `TrainConfig` field is one validated flag of ``python -m
experiments.train`` and ``python -m experiments.pretrain``
(`add_config_args`), whose help is the field's entry in the class docstring
(`_field_docs`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from experiments.common import cli, corpora, model_config
from experiments.pretraining import deprecation, optim_rows

# SGG's two forms, in sgg_optax's words: the momentum form clusters the base
# optimizer's first moment (`with_sgg(base)`, `adamw_sgg`'s default, the
# paper's Algorithm 1); the update form clusters the base's finished update
# (`chain(base, sgg(), lr)`, `cluster_momentum=False`). An SGG optimizer's
# name ends in its form.
OPTIMIZERS = ('adam', 'adam_sgg_update', 'adam_sgg_momentum', 'adafactor',
              'adafactor_sgg_update')
MAIN_OPTIMIZERS = OPTIMIZERS  # the main job's arms
OPTIMIZERS += optim_rows.NAMES  # the paper's other C4 rows (optim_rows.py)
# Earlier spellings -> the same optimizer's name. Still accepted (committed
# commands and run JSONs use them); the command lines say they are
# deprecated (`deprecation_notes`).
DEPRECATED = {'adam_sgg': 'adam_sgg_update',
              'adafactor_sgg': 'adafactor_sgg_update'}
SGG_OPTIMIZERS = tuple(o for o in OPTIMIZERS + tuple(DEPRECATED)
                       if '_sgg' in o)
LABELS = {
  'adam': 'Adam',
  'adam_sgg_update': 'Adam+SGG (update)',
  'adam_sgg_momentum': 'Adam+SGG (momentum)',
  'adafactor': 'Adafactor',
  'adafactor_sgg_update': 'Adafactor+SGG (update)',
}
LABELS.update(optim_rows.LABELS)
LABELS.update({old: LABELS[new] for old, new in DEPRECATED.items()})
SGG_CLAMP = (0.1, 10.0)  # passed to every SGG optimizer; clamped_fraction


def canonical(name: str) -> str:
  """The optimizer's name, for a deprecated spelling too."""
  return DEPRECATED.get(name, name)


def optimizer_name(text: str) -> str:
  """argparse ``type=`` of an optimizer: its name (deprecated spellings
  mean the same optimizer)."""
  if text not in OPTIMIZERS and text not in DEPRECATED:
    raise argparse.ArgumentTypeError(
      f'must be one of {", ".join(OPTIMIZERS)}; got {text!r}')
  return canonical(text)


optimizer_name.__name__ = 'optimizer'


def warn_deprecated(prog: str, argv: Sequence[str]) -> None:
  """Prints one warning line per deprecated optimizer name in ``argv``
  (flags: `deprecation.deprecated_flag` says so itself)."""
  deprecation.warn_deprecated_values(prog, argv, {
    old: f'{new} (the same optimizer)' for old, new in DEPRECATED.items()})


def never_refreshes(cfg: TrainConfig) -> str | None:
  """A warning when ``cfg`` is an SGG run that ends before step T."""
  if cfg.optimizer not in SGG_OPTIMIZERS or (
      cfg.recluster_interval < cfg.steps):
    return None
  return (f'SGG never refreshes in this run (T = --recluster-interval '
          f'{cfg.recluster_interval} >= --steps {cfg.steps}): every scale '
          'stays 1 and the run is its base optimizer\'s; set T below the '
          'number of steps, e.g. --recluster-interval-frac 0.05')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines one training run.

  Attributes:
    preset: the model's shape, a model_config.py preset (the choices).
    n_layers: override of the preset's depth (0: keep).
    dim: override of the preset's width (0: keep); ffn_dim follows as
      ``8/3 * dim`` rounded up to a multiple of 32.
    corpus: corpora.py corpus name.
    tokenizer: 'bpe' or 'bytes'.
    vocab_size: BPE vocabulary size; the model's vocabulary is the
      tokenizer's.
    seq_len: predicted tokens per row.
    batch_size: global batch size (rows).
    steps: optimizer steps.
    optimizer: Adam or Adafactor, alone or with SGG in the update form
      (`*_sgg_update`: SGG clusters the base's finished update) or the
      momentum form (`adam_sgg_momentum`: it clusters Adam's first moment,
      the paper's Algorithm 1); `adam_sgg` and `adafactor_sgg` are
      deprecated spellings of the `*_sgg_update` ones.
    lr: peak learning rate.
    warmup_frac: linear warm-up, as a fraction of `steps`.
    final_lr_frac: the cosine decays to this fraction of the peak.
    b1: Adam's first-moment decay (also Adafactor's momentum when
      `adafactor_momentum`).
    b2: Adam's second-moment decay (0.95, as modern LLaMA recipes).
    eps: Adam's epsilon.
    weight_decay: decoupled weight decay (times the learning rate).
    clip_norm: global-norm gradient clipping (0: off).
    adafactor_momentum: give Adafactor a first moment (b1).
    num_clusters: SGG's K, clusters per layer.
    recluster_interval: SGG's T: the clusters and scales are refreshed at
      steps T, 2T, ...; before step T every scale is 1 (the base
      optimizer's run).
    beta3: SGG's scale EMA decay (the scales move 1 - beta3**n of the way
      to their targets in n refreshes).
    scale_rule: SGG's 'mda' (paper) or 'reference' (public code) rule.
    cluster_stat: SGG clusters the 'signed' statistic or its 'abs'.
    sgg_1d: also group and scale 1-D parameters (the paper excludes them).
    bf16: bfloat16 matmuls (parameters and optimizer stay float32).
    seed: initialisation and data-order seed.
    eval_every: dev and test evaluation every this many steps (0: only at
      the end).
    eval_windows: windows scored per split, evenly spaced over the whole
      split (0: every non-overlapping window).
    eval_batch_size: evaluation batch size (0: `batch_size`).
    log_every: training-loss readback and progress-bar period.
    diag_every: SGG diagnostics period (0: at every refresh and the end).
    divergence_factor: stop when the training loss exceeds this multiple of
      the first step's loss (NaN/Inf always stops).
    mesh: 'data=N,model=M' ('' : every device on 'data'), or
      'data=D,fsdp=F,model=M' (parameters sharded over 'fsdp' only).
    ckpt_dir: orbax checkpoint directory ('' : none).
    ckpt_every: checkpoint period in steps (0: only at the end).
    data_dir: directory of pre-tokenized `<name>-{train,validation}.npy`
      streams, read instead of (and written after) tokenizing.
    lora_rank: LoRA pre-training rank (0: full-rank): adapters on every
      attention/MLP kernel, which stay frozen at their random init; the
      adapters, embeddings, head and norms train. Also the rank of the
      optimizers relora (its adapters), galore (its projection; no
      adapters) and lowrank (the factorised kernels; no adapters).
    data_glob: glob of training shards in C4's format (``*.json.gz`` or
      ``*.jsonl``, one JSON object with a ``text`` field per line), read
      instead of `corpus` with grain, each process its share, the position
      saved in checkpoints (experiments/pretraining/c4.py); needs
      `eval_glob` and `tokenizer_file`.
    eval_glob: glob of the validation shards of `data_glob` (dev: every
      tenth document of their first 10M tokens; test: the rest).
    tokenizer_file: a ``tokenizers`` JSON file (e.g. T5's) for `data_glob`.
  """

  preset: str = 'tiny'
  n_layers: int = 0
  dim: int = 0
  corpus: str = 'bbc_news'
  tokenizer: str = 'bpe'
  vocab_size: int = 4096
  seq_len: int = 128
  batch_size: int = 16
  steps: int = 200
  optimizer: str = 'adam'
  lr: float = 1e-3
  warmup_frac: float = 0.1
  final_lr_frac: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  adafactor_momentum: bool = False
  num_clusters: int = 3
  recluster_interval: int = 500
  beta3: float = 0.99
  scale_rule: str = 'mda'
  cluster_stat: str = 'signed'
  sgg_1d: bool = False
  bf16: bool = False
  seed: int = 0
  eval_every: int = 0
  eval_windows: int = 256
  eval_batch_size: int = 0
  log_every: int = 10
  diag_every: int = 0
  divergence_factor: float = 1.5
  mesh: str = ''
  ckpt_dir: str = ''
  ckpt_every: int = 0
  data_dir: str = ''
  lora_rank: int = 0
  data_glob: str = ''
  eval_glob: str = ''
  tokenizer_file: str = ''

  def replace(self, **changes: Any) -> TrainConfig:
    """Returns a copy with some fields changed."""
    return dataclasses.replace(self, **changes)


# What each field accepts on the command line (argparse `type=`/`choices`).
FIELD_TYPES: dict[str, Any] = {
  'n_layers': cli.non_negative_int, 'dim': cli.non_negative_int,
  'vocab_size': cli.int_at_least(258), 'seq_len': cli.positive_int,
  'batch_size': cli.positive_int, 'steps': cli.positive_int,
  'lr': cli.positive_float, 'warmup_frac': cli.float_in(0, 1, high_open=True),
  'final_lr_frac': cli.unit_interval, 'b1': cli.decay, 'b2': cli.decay,
  'eps': cli.non_negative_float, 'weight_decay': cli.non_negative_float,
  'clip_norm': cli.non_negative_float, 'num_clusters': cli.positive_int,
  'recluster_interval': cli.positive_int, 'beta3': cli.decay,
  'seed': cli.non_negative_int, 'eval_every': cli.non_negative_int,
  'eval_windows': cli.non_negative_int,
  'eval_batch_size': cli.non_negative_int, 'log_every': cli.positive_int,
  'diag_every': cli.non_negative_int,
  'divergence_factor': cli.float_in(1.0, low_open=True),
  'mesh': cli.mesh_spec, 'ckpt_every': cli.non_negative_int,
  'lora_rank': cli.non_negative_int, 'optimizer': optimizer_name,
}
FIELD_CHOICES: dict[str, Sequence[str]] = {
  'preset': tuple(model_config.PRESETS),
  'corpus': corpora.corpus_names(),
  'tokenizer': ('bpe', 'bytes'), 'optimizer': OPTIMIZERS,
  'scale_rule': ('mda', 'reference'), 'cluster_stat': ('signed', 'abs'),
}

# `--smoke` of `python -m experiments.train`: a few steps of a tiny model (CI).
SMOKE = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, seq_len=32,
             batch_size=8, steps=6, eval_windows=16, log_every=2,
             recluster_interval=2, beta3=0.5)


def add_config_args(parser: argparse.ArgumentParser,
                    defaults: TrainConfig = TrainConfig(),
                    skip: Sequence[str] = ()) -> None:
  """Adds one validated flag per `TrainConfig` field (help from its doc)."""
  docs = _field_docs()
  for field in dataclasses.fields(TrainConfig):
    if field.name in skip:
      continue
    flag = '--' + field.name.replace('_', '-')
    default = getattr(defaults, field.name)
    help_ = docs.get(field.name, '')  # the formatter adds the default
    if isinstance(default, bool):
      parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                          default=default, help=help_)
    else:
      parser.add_argument(
        flag, type=FIELD_TYPES.get(field.name, type(default)),
        choices=FIELD_CHOICES.get(field.name), default=default, help=help_)


def config_from_args(args: argparse.Namespace,
                     base: TrainConfig = TrainConfig()) -> TrainConfig:
  """The `TrainConfig` of parsed `add_config_args` flags (a flag left at
  ``None`` keeps ``base``'s value)."""
  names = {f.name for f in dataclasses.fields(TrainConfig)}
  return base.replace(**{k: v for k, v in vars(args).items()
                         if k in names and v is not None})


def _field_docs() -> dict[str, str]:
  docs, current = {}, None
  text = TrainConfig.__doc__ or ''
  for line in text.split('Attributes:')[-1].splitlines():
    stripped = line.strip()
    if not stripped:
      continue
    name, sep, rest = stripped.partition(':')
    if sep and name.isidentifier() and line.startswith('    ') and not (
        line.startswith('      ')):
      current = name
      docs[name] = rest.strip()
    elif current:
      docs[current] += ' ' + stripped
  return docs
