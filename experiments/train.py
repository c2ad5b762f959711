"""One LLaMA pre-training loop for every experiment, from one CPU to a pod."""

# Run `python -m experiments.train --help`. The same code runs single-process
# on a CPU or one GPU and multi-process on a pod slice or a cluster:
#
#   * `--mesh data=N,model=M` builds a mesh of `AxisType.Auto` axes (the NNX
#     model's activations carry no sharding annotations, so sharding is left
#     to propagation). Parameters are sharded with model.py's FSDP rules
#     (`FSDP_TP_RULES` when `model > 1`), and so is the optimizer state:
#     Adam's moments and SGG's per-element cluster ids inherit their
#     parameter's logical axes (nnx.Optimizer copies the metadata), SGG's
#     small per-layer statistics and the counters are replicated.
#   * `jax.distributed.initialize()` runs when `--coordinator` /
#     `--num-processes` / `--process-id` are given, or automatically on a
#     SLURM, Open MPI or multi-host TPU job (`--distributed auto`).
#   * Each process builds only its rows of every batch (data.py's
#     process_index/process_count) and `jax.make_array_from_process_local_data`
#     assembles the global batch, sharded over `data`.
#
# Where each part lives: data (`load_streams`; the dev/test split and the
# evaluation windows in evaluation.py), the step (`build_optimizer`,
# `_train_step`, `_Stepper`, which decides SGG's refreshes), evaluation
# (evaluation.py, `_evaluate_all`), checkpoints (checkpointing.py), logging
# (`_TrainLog`, `_Clock`, `_result`), and the loop that ties them (`_loop`,
# `train`).
#
# The learning-rate peak lives in the optimizer state (an injected `scale`
# after the normalised schedule), so a sweep over learning rates and seeds
# compiles the train step once per optimizer, not once per run.

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import sgg_optax
from experiments import checkpointing, cli, evaluation, records
from experiments import data as data_lib
from experiments import model as model_lib

logger = logging.getLogger(__name__)

OPTIMIZERS = ('adam', 'adam_sgg', 'adam_sgg_momentum', 'adafactor',
              'adafactor_sgg')
SGG_OPTIMIZERS = tuple(o for o in OPTIMIZERS if o.endswith(('_sgg',
                                                            '_momentum')))
LABELS = {
  'adam': 'Adam',
  'adam_sgg': 'Adam+SGG (chain)',
  'adam_sgg_momentum': 'Adam+SGG (momentum)',
  'adafactor': 'Adafactor',
  'adafactor_sgg': 'Adafactor+SGG',
}
SGG_CLAMP = (0.1, 10.0)  # passed to every SGG optimizer; clamped_fraction


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines one training run.

  Attributes:
    preset: model.py preset ('tiny', 'small', '60m', '130m').
    n_layers: override of the preset's depth (0: keep).
    dim: override of the preset's width (0: keep); ffn_dim follows as
      ``8/3 * dim`` rounded up to a multiple of 32.
    corpus: data.py corpus name.
    tokenizer: 'bpe' or 'bytes'.
    vocab_size: BPE vocabulary size; the model's vocabulary is the
      tokenizer's.
    seq_len: predicted tokens per row.
    batch_size: global batch size (rows).
    steps: optimizer steps.
    optimizer: one of `OPTIMIZERS`.
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
    num_clusters: SGG's K.
    recluster_interval: SGG's T.
    beta3: SGG's scale EMA decay.
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
    mesh: 'data=N,model=M' ('' : every device on 'data').
    ckpt_dir: orbax checkpoint directory ('' : none).
    ckpt_every: checkpoint period in steps (0: only at the end).
    data_dir: directory of pre-tokenized `<name>-{train,validation}.npy`
      streams, read instead of (and written after) tokenizing.
    lora_rank: LoRA pre-training rank (0: full-rank): adapters on every
      attention/MLP kernel, which stay frozen at their random init; the
      adapters, embeddings, head and norms train.
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
  'lora_rank': cli.non_negative_int,
}
FIELD_CHOICES: dict[str, Sequence[str]] = {
  'preset': tuple(model_lib.PRESETS), 'corpus': data_lib.corpus_names(),
  'tokenizer': ('bpe', 'bytes'), 'optimizer': OPTIMIZERS,
  'scale_rule': ('mda', 'reference'), 'cluster_stat': ('signed', 'abs'),
}


# ------------------------------------------------------------------------------
# Distributed set-up and mesh
# ------------------------------------------------------------------------------


def _cluster_env() -> str | None:
  """Names the multi-process launcher found in the environment, if any."""
  env = os.environ
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in env:
    return 'slurm'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'openmpi'
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  if ',' in hosts or 'MEGASCALE_COORDINATOR_ADDRESS' in env:
    return 'tpu'
  return None


def init_distributed(coordinator: str = '', num_processes: int = 0,
                     process_id: int = -1, mode: str = 'auto') -> bool:
  """Calls `jax.distributed.initialize` when launched multi-process.

  Args:
    coordinator: 'host:port' of process 0 (explicit launch).
    num_processes: number of processes (explicit launch).
    process_id: this process's index (explicit launch).
    mode: 'auto' also initialises on SLURM, Open MPI and multi-host TPU
      jobs, where JAX finds the cluster itself; 'off' never.

  Returns:
    Whether the distributed runtime was initialised.
  """
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if not explicit and (mode == 'off' or _cluster_env() is None):
    return False
  # CPU processes need a collectives library; other backends ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if coordinator:
    kwargs['coordinator_address'] = coordinator
  if num_processes > 0:
    kwargs['num_processes'] = num_processes
  if process_id >= 0:
    kwargs['process_id'] = process_id
  jax.distributed.initialize(**kwargs)
  return True


def parse_mesh(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2}; '' -> all devices on data."""
  if not spec:
    return {'data': jax.device_count(), 'model': 1}
  axes = {}
  for part in spec.split(','):
    name, _, size = part.partition('=')
    name = name.strip()
    if name not in ('data', 'model') or not size.strip().isdigit():
      raise ValueError(f'Bad --mesh {spec!r}: use data=N,model=M.')
    axes[name] = int(size)
  axes.setdefault('data', 1)
  axes.setdefault('model', 1)
  if axes['data'] * axes['model'] > jax.device_count():
    raise ValueError(f'--mesh {spec} needs {axes["data"] * axes["model"]} '
                     f'devices, found {jax.device_count()}.')
  return axes


def make_mesh(spec: str) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh of `AxisType.Auto` axes.

  A mesh smaller than the machine uses its first devices (single process
  only; e.g. testing `data=2,model=2` on 8 fake CPU devices).
  """
  axes = parse_mesh(spec)
  n = axes['data'] * axes['model']
  kwargs = {}
  if n < jax.device_count():
    if jax.process_count() > 1:
      raise ValueError(f'--mesh {spec} must use all {jax.device_count()} '
                       'devices of a multi-process job.')
    logger.warning('--mesh %s uses %d of %d devices.', spec, n,
                   jax.device_count())
    kwargs['devices'] = jax.devices()[:n]
  return jax.make_mesh((axes['data'], axes['model']), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       **kwargs)


def sharding_rules(mesh: jax.sharding.Mesh) -> model_lib.LogicalRules:
  """FSDP over 'data', plus tensor parallelism when 'model' is > 1."""
  if mesh.shape['model'] > 1:
    return tuple(model_lib.FSDP_TP_RULES)
  return tuple(model_lib.FSDP_RULES)


# ------------------------------------------------------------------------------
# Optimizers and schedule
# ------------------------------------------------------------------------------


def normalized_schedule(steps: int, warmup_frac: float,
                        final_frac: float) -> optax.Schedule:
  """Linear warm-up to 1, then cosine to `final_frac` (the paper's shape)."""
  warmup = max(1, int(round(warmup_frac * steps))) if warmup_frac > 0 else 0
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=1.0, warmup_steps=warmup,
    decay_steps=max(steps, warmup + 1), end_value=final_frac)


def _sgg_kwargs(cfg: TrainConfig) -> dict[str, Any]:
  """SGG's keyword arguments for sgg_optax's aliases."""
  kwargs = dict(num_clusters=cfg.num_clusters,
                recluster_interval=cfg.recluster_interval, beta3=cfg.beta3,
                scale_rule=cfg.scale_rule, cluster_stat=cfg.cluster_stat,
                clamp=SGG_CLAMP)
  if cfg.sgg_1d:
    kwargs['sgg_mask'] = lambda params: jax.tree.map(lambda _: True, params)
  return kwargs


def _optimizer_key(cfg: TrainConfig) -> tuple[Any, ...]:
  """The fields that shape the optimizer, except the peak learning rate."""
  fields = ('optimizer', 'steps', 'warmup_frac', 'final_lr_frac', 'b1', 'b2',
            'eps', 'weight_decay', 'clip_norm', 'adafactor_momentum')
  key = tuple(getattr(cfg, f) for f in fields)
  if cfg.optimizer in SGG_OPTIMIZERS:
    key += (cfg.num_clusters, cfg.recluster_interval, cfg.beta3,
            cfg.scale_rule, cfg.cluster_stat, cfg.sgg_1d)
  return key


_TX_CACHE: dict[tuple[Any, ...], optax.GradientTransformation] = {}


def build_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Clipping, the base optimizer (+ SGG), the schedule and the peak LR.

  ``chain(clip_by_global_norm, <optimizer with the normalised schedule>,
  inject_hyperparams(scale)(peak_lr))``: the peak is a state entry set by
  `set_peak_lr`, so the compiled step is shared by runs that differ only in
  the learning rate (and seed). Adam is ``scale_by_adam`` (+ ``sgg`` in the
  chain form, ``with_sgg`` in the momentum form), weight decay and the
  schedule, as in `sgg_optax.adamw_sgg`; Adafactor is the GaLore/paper
  set-up (no parameter-scale multiplication, update clipping 1.0, decay
  0.8), with SGG after the clipping (`sgg_optax.adafactor_sgg`).

  Args:
    cfg: the run's configuration.

  Returns:
    The transformation, cached per optimizer shape.
  """
  key = _optimizer_key(cfg)
  if key in _TX_CACHE:
    return _TX_CACHE[key]
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got '
                     f'{cfg.optimizer!r}.')
  schedule = normalized_schedule(cfg.steps, cfg.warmup_frac,
                                 cfg.final_lr_frac)
  name = cfg.optimizer
  if name.startswith('adam'):
    adam = dict(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                weight_decay=cfg.weight_decay)
    if name == 'adam':
      base = optax.adamw(**adam)
    else:
      base = sgg_optax.adamw_sgg(
        **adam, cluster_momentum=name == 'adam_sgg_momentum',
        **_sgg_kwargs(cfg))
  else:
    af = dict(learning_rate=schedule, multiply_by_parameter_scale=False,
              clipping_threshold=1.0, decay_rate=0.8,
              momentum=cfg.b1 if cfg.adafactor_momentum else None,
              weight_decay_rate=cfg.weight_decay or None)
    if name == 'adafactor':
      base = optax.adafactor(**af)
    else:
      base = sgg_optax.adafactor_sgg(
        **af, **_sgg_kwargs(cfg))
  parts = [base, optax.inject_hyperparams(optax.scale)(step_size=1.0)]
  if cfg.clip_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(cfg.clip_norm))
  tx = _drop_foreign_sharding(optax.chain(*parts))
  _TX_CACHE[key] = tx
  return tx


def _drop_foreign_sharding(tx: optax.GradientTransformationExtraArgs
                           ) -> optax.GradientTransformationExtraArgs:
  """Keeps a parameter's sharding metadata only on state of its rank.

  `nnx.Optimizer` hands `tx.init` the parameters as NNX variables, so every
  state leaf made by mapping over them inherits the parameter's logical
  axes, and recent flax applies them when it wraps the state. Adafactor's
  factored statistics (rank-1 rows and columns of a matrix, `(1,)`
  placeholders) then fail the sharding constraint. Such leaves become plain
  arrays here (replicated: they are small); parameter-shaped state (Adam's
  moments, SGG's cluster ids) keeps the parameter's axes.
  """
  def init_fn(params: Any) -> Any:
    def fix(x: Any) -> Any:
      if not isinstance(x, nnx.Variable):
        return x
      value = x.get_value()
      names = x.get_metadata().get('out_sharding')
      if (names is not None and hasattr(value, 'ndim')
          and value.ndim != len(names)):
        return value
      return x
    return jax.tree.map(fix, tx.init(params),
                        is_leaf=lambda x: isinstance(x, nnx.Variable))

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def _peak_state(opt: nnx.Optimizer) -> Any:
  return opt.opt_state[-1].hyperparams['step_size']


def set_peak_lr(opt: nnx.Optimizer, lr: float) -> None:
  """Writes the peak learning rate into a `build_optimizer` state."""
  var = _peak_state(opt)
  value = var.get_value()
  var.set_value(jax.device_put(jnp.asarray(lr, value.dtype), value.sharding))


# ------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------


class Streams(NamedTuple):
  """The token streams of a run: train, dev (carved from train) and test."""

  train: np.ndarray
  dev: np.ndarray
  test: np.ndarray
  vocab_size: int


def _stream_name(cfg: TrainConfig) -> str:
  kind = 'bytes' if cfg.tokenizer == 'bytes' else f'bpe{cfg.vocab_size}'
  return f'{cfg.corpus}-{kind}'


def exported_streams(cfg: TrainConfig) -> pathlib.Path | None:
  """The metadata file of `cfg.data_dir`'s exported streams, if present."""
  if not cfg.data_dir:
    return None
  meta = pathlib.Path(cfg.data_dir) / f'{_stream_name(cfg)}.json'
  return meta if meta.exists() else None


def _data_py_streams(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int,
                                                int | None]:
  """data.py's train and held-out streams, vocabulary size and EOS id."""
  name = _stream_name(cfg)
  meta = exported_streams(cfg)
  if meta is not None:
    info = json.loads(meta.read_text())
    root = meta.parent
    return (np.load(root / f'{name}-train.npy').astype(np.int32),
            np.load(root / f'{name}-validation.npy').astype(np.int32),
            info['vocab_size'], info.get('eos_id'))
  tok = data_lib.get_tokenizer(cfg.tokenizer, cfg.corpus, cfg.vocab_size)
  train = data_lib.tokenize_split(cfg.corpus, data_lib.TRAIN, tok)
  held_out = data_lib.tokenize_split(cfg.corpus, data_lib.VALIDATION, tok)
  if cfg.data_dir and jax.process_index() == 0:
    root = pathlib.Path(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    np.save(root / f'{name}-train.npy', train.astype(dtype))
    np.save(root / f'{name}-validation.npy', held_out.astype(dtype))
    (root / f'{name}.json').write_text(
      json.dumps({'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id}))
  return train, held_out, tok.vocab_size, tok.eos_id


def load_streams(cfg: TrainConfig) -> Streams:
  """Train, dev and test token streams and the vocabulary size.

  data.py's fixed split gives the training and held-out streams; the
  held-out one is **test**, and **dev** is carved out of the training
  stream (`evaluation.split_dev`: every tenth document, never trained on).
  With `cfg.data_dir`, streams saved there (`<corpus>-<tokenizer>-<split>.npy`
  plus a `.json` with the vocabulary size and end-of-text id) are read
  without the corpus packages, e.g. on an accelerator host; otherwise they
  are made with data.py (cached) and, when `data_dir` is set, saved there.

  Args:
    cfg: the run's configuration.

  Returns:
    The streams.
  """
  train, test, vocab, eos_id = _data_py_streams(cfg)
  train, dev = evaluation.split_dev(train, eos_id)
  return Streams(train, dev, test, vocab)


def _global_batch(local: np.ndarray, sharding: NamedSharding,
                  global_rows: int) -> jax.Array:
  shape = (global_rows,) + local.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local, shape)


# ------------------------------------------------------------------------------
# Model, optimizer and steps
# ------------------------------------------------------------------------------


def model_config(cfg: TrainConfig, vocab_size: int) -> model_lib.LlamaConfig:
  """The preset with the run's vocabulary, sequence length and dtype."""
  overrides: dict[str, Any] = dict(
    vocab_size=vocab_size, max_seq_len=max(cfg.seq_len, 1),
    dtype=jnp.bfloat16 if cfg.bf16 else jnp.float32)
  if cfg.n_layers:
    overrides['n_layers'] = cfg.n_layers
  if cfg.dim:
    base = model_lib.get_config(cfg.preset)
    heads = max(1, cfg.dim // base.head_dim)
    overrides.update(dim=cfg.dim, n_heads=heads,
                     n_kv_heads=heads if base.n_kv_heads == base.n_heads
                     else max(1, heads // 2),
                     ffn_dim=-(-(8 * cfg.dim // 3) // 32) * 32)
  return model_lib.get_config(cfg.preset, **overrides)


def _constrain(obj: Any) -> None:
  """Puts every array of an NNX object on its logical axes' sharding."""
  state = nnx.state(obj)
  specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
  flat = []
  for path, var in nnx.to_flat_state(state):
    value = var.get_value()
    if isinstance(value, jax.Array):
      spec = specs[path].get_value()
      var = var.replace(jax.lax.with_sharding_constraint(value, spec))
    flat.append((path, var))
  nnx.update(obj, nnx.from_flat_state(flat))


# Trained with LoRA pre-training: every parameter except the frozen base
# kernels of the adapted layers (the adapters, embeddings, head and norms),
# as ReLoRA/GaLore's LoRA baseline trains the non-adapted parameters.
LORA_TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains('base')))


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 4))
def _create(config: model_lib.LlamaConfig, tx: optax.GradientTransformation,
            rules: model_lib.LogicalRules, seed: jax.Array, lora_rank: int = 0
            ) -> tuple[model_lib.Llama, nnx.Optimizer]:
  """Model and optimizer, created sharded inside one jit (multi-host safe).

  With `lora_rank`, the target linear layers get LoRA adapters
  (experiments/lora.py, alpha = 2 x rank) on their frozen random kernels.
  """
  key = jax.random.key(seed)
  with nnx.logical_axis_rules(rules):
    model = model_lib.Llama(config, rngs=nnx.Rngs(key))
    wrt = nnx.Param
    if lora_rank:
      from experiments import lora as lora_lib

      lora_lib.apply_lora(
        model, lora_lib.LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank),
        rngs=nnx.Rngs(params=jax.random.fold_in(key, 1)))
      wrt = LORA_TRAINABLE
    opt = nnx.Optimizer(model, tx, wrt=wrt)
    _constrain(model)
    _constrain(opt)
  return model, opt


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=1)
def _train_step(graphdef: nnx.GraphDef, state: nnx.State, batch: jax.Array,
                refresh: bool | None) -> tuple[nnx.State, jax.Array,
                                               jax.Array]:
  """One step over the split ``(model, optimizer)`` state.

  ``refresh`` is SGG's refresh decision (``sgg_refresh``; None for the other
  optimizers), static: an SGG run compiles a plain and a refresh step, and
  neither holds a ``lax.cond``.
  """
  model, opt = nnx.merge(graphdef, state)
  grad_fn = nnx.value_and_grad(model_lib.loss_fn,
                               argnums=nnx.DiffState(0, opt.wrt))
  loss, grads = grad_fn(model, batch)
  opt.update(model, grads,
             **({} if refresh is None else {'sgg_refresh': refresh}))
  return nnx.state((model, opt)), loss, optax.tree.norm(grads)


class _Stepper:
  """The train step, jitted over the split state of the model and optimizer.

  ``jax.jit`` of a pure function of the state dispatches faster than
  ``nnx.jit``, which walks the object graph at every call. The state lives
  here between steps (donated to each step); `sync` writes it back into the
  NNX objects before anything else (evaluation, diagnostics, checkpoints)
  reads them. SGG's refresh is decided here, from the step number, with
  `sgg_optax.refresh_due`: the same schedule as SGG's own.
  """

  def __init__(self, model: Any, opt: Any, interval: int | None):
    self.objects = (model, opt)
    self.graphdef, self.state = nnx.split(self.objects)
    self.interval = interval
    self.stale = False
    self.compiled: set[bool | None] = set()

  def refresh(self, step: int) -> bool | None:
    """SGG's decision for the update after ``step`` updates (None: no SGG)."""
    if self.interval is None:
      return None
    return sgg_optax.refresh_due(step, self.interval)

  def first_call(self, step: int) -> bool:
    """Whether the step variant that ``step`` runs compiles now."""
    return self.refresh(step) not in self.compiled

  def __call__(self, step: int, batch: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    refresh = self.refresh(step)
    self.compiled.add(refresh)
    self.state, loss, gnorm = _train_step(self.graphdef, self.state, batch,
                                          refresh)
    self.stale = True
    return loss, gnorm

  def sync(self) -> None:
    if self.stale:
      nnx.update(self.objects, self.state)
      self.stale = False


@nnx.jit
def _eval_step(model: model_lib.Llama, batch: jax.Array) -> jax.Array:
  return model_lib.loss_fn(model, batch)


# ------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------


def sgg_diagnostics(opt: nnx.Optimizer, step: int
                    ) -> tuple[dict[str, Any], list[str]]:
  """SGG's per-layer scales, how far they moved from 1, and how many clamp."""
  summary = sgg_optax.cluster_summary(opt.opt_state)
  scales, fractions = summary.scales, summary.fractions
  dev = np.abs(scales - 1.0)
  populated = fractions > 0
  return {
    'step': step,
    'count': summary.count,
    'scales': np.round(scales, 5).tolist(),
    'fractions': np.round(fractions, 5).tolist(),
    'global_stat': summary.global_stat,
    # Largest |S - 1| over clusters holding elements (all clusters before
    # the first refresh, when every S is 1).
    'max_abs_dev': float(dev[populated].max() if populated.any()
                         else dev.max()),
    # Mean over layers of the element-weighted |S - 1|.
    'mean_abs_dev': float(np.mean(np.sum(fractions * dev, axis=1))
                          if populated.any() else 0.0),
    # Share of (layer, cluster) scales at a clamp bound.
    'clamped_fraction': records.clamped_fraction(scales, SGG_CLAMP),
  }, list(summary.names)


def _ppl(loss: float | None) -> float | None:
  if loss is None or not math.isfinite(loss):
    return None
  return float(math.exp(loss)) if loss < 50 else float('inf')


# ------------------------------------------------------------------------------
# The loop: set-up, logging, periodic work, final evaluation, record
# ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
  """What a run trains and scores: model, optimizer, evaluation sets."""

  model: Any
  opt: Any
  mcfg: model_lib.LlamaConfig
  batch_sharding: NamedSharding
  dev: evaluation.EvalSet
  test: evaluation.EvalSet
  n_params: int
  n_trainable: int


def _setup(cfg: TrainConfig, mesh: jax.sharding.Mesh, streams: Streams
           ) -> _Setup:
  """Builds the sharded model and optimizer and the dev/test windows."""
  mcfg = model_config(cfg, streams.vocab_size)
  model, opt = _create(mcfg, build_optimizer(cfg), sharding_rules(mesh),
                       jnp.int32(cfg.seed), cfg.lora_rank)
  set_peak_lr(opt, cfg.lr)
  count = lambda tree: sum(int(np.prod(x.shape))
                           for x in jax.tree.leaves(tree))
  sharding = NamedSharding(mesh, P('data'))
  sets = {name: evaluation.make_eval_set(
            name, tokens, seq_len=cfg.seq_len, num_windows=cfg.eval_windows,
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            sharding=sharding)
          for name, tokens in (('dev', streams.dev), ('test', streams.test))}
  return _Setup(model, opt, mcfg, sharding, sets['dev'], sets['test'],
                count(nnx.state(model, nnx.Param)),
                count(nnx.state(model, opt.wrt)))


def _new_curves() -> dict[str, list[Any]]:
  return {'train': [], 'dev': [], 'test': [], 'sgg': [], 'sgg_names': []}


class _TrainLog:
  """Reads training losses back in blocks and detects divergence."""

  def __init__(self, cfg: TrainConfig, curves: dict[str, Any]):
    self.cfg = cfg
    self.curves = curves
    self.schedule = normalized_schedule(cfg.steps, cfg.warmup_frac,
                                        cfg.final_lr_frac)
    self.pending: list[tuple[int, jax.Array, jax.Array]] = []
    self.first = curves['train'][0][1] if curves['train'] else None
    self.reason = ''  # why the run diverged ('' : it did not)

  def add(self, step: int, loss: jax.Array, gnorm: jax.Array) -> None:
    self.pending.append((step, loss, gnorm))

  def flush(self) -> bool:
    """Logs the pending steps; True when the run diverged."""
    values = jax.device_get([(lo, gn) for _, lo, gn in self.pending])
    for (s, _, _), (loss, gnorm) in zip(self.pending, values):
      loss, gnorm = float(loss), float(gnorm)
      self.curves['train'].append(
        [s, loss, gnorm, float(self.cfg.lr * self.schedule(s))])
      self.first = loss if self.first is None else self.first
      if not math.isfinite(loss):
        self.reason = f'non-finite loss at step {s}'
      elif loss > self.cfg.divergence_factor * self.first:
        self.reason = (f'loss {loss:.3f} > {self.cfg.divergence_factor} x '
                       f'first loss {self.first:.3f} at step {s}')
      if self.reason:
        break
    self.pending.clear()
    return bool(self.reason)


class _Clock:
  """Training throughput: steps after the first (compile) only, without
  the time spent in evaluation, diagnostics, checkpoints and the first call
  of another step variant (SGG's refresh step, which compiles then)."""

  def __init__(self) -> None:
    self.t_loop = time.time()
    self.first: float | None = None  # compile + first step
    self.steps = 0
    self.timed = 0.0
    self.other = 0.0

  def step_done(self, t0: float, loss: jax.Array) -> None:
    if self.first is None:
      jax.block_until_ready(loss)
      self.first = time.time() - t0
    else:
      self.steps += 1
      self.timed = time.time() - self.t_loop - self.first - self.other

  def pause(self, loss: jax.Array) -> float:
    """Waits for the queued steps; returns the time other work starts."""
    jax.block_until_ready(loss)
    t1 = time.time()
    self.timed = t1 - self.t_loop - (self.first or 0.0) - self.other
    return t1

  def resume(self, t1: float) -> None:
    self.other += time.time() - t1

  def tokens_per_s(self, tokens_per_step: int) -> float:
    return tokens_per_step * self.steps / self.timed if self.timed else 0.0


def _evaluate_all(s: _Setup, curves: dict[str, Any], step: int
                  ) -> dict[str, float]:
  """Dev and test loss at ``step``, appended to the curves."""
  out = {}
  for es in (s.dev, s.test):
    last = curves[es.name][-1] if curves[es.name] else None
    loss = (last[1] if last and last[0] == step
            else evaluation.evaluate(s.model, es))
    if not last or last[0] != step:
      curves[es.name].append([step, loss, _ppl(loss)])
    out[es.name] = loss
  return out


def _diag_due(cfg: TrainConfig, done: int) -> bool:
  """SGG's diagnostics are due after step ``done`` (never without SGG)."""
  if cfg.optimizer not in SGG_OPTIMIZERS:
    return False
  every = cfg.diag_every or cfg.recluster_interval
  return done % every == 0 or done == cfg.steps


def _periodic(cfg: TrainConfig, s: _Setup, done: int, curves: dict[str, Any],
              ckpt: checkpointing.Checkpointer | None) -> None:
  """Diagnostics, evaluation and checkpoint due after step ``done``."""
  if _diag_due(cfg, done):
    diag, curves['sgg_names'] = sgg_diagnostics(s.opt, done)
    curves['sgg'].append(diag)
  if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
    _evaluate_all(s, curves, done)
  if ckpt is not None and ckpt.due(done):
    ckpt.save(done, s.model, s.opt, curves)


def _periodic_due(cfg: TrainConfig, done: int,
                  ckpt: checkpointing.Checkpointer | None) -> bool:
  return bool(_diag_due(cfg, done)
              or (cfg.eval_every and done % cfg.eval_every == 0)
              or (ckpt is not None and ckpt.due(done)))


def _loop(cfg: TrainConfig, s: _Setup, train_tokens: np.ndarray, start: int,
          curves: dict[str, Any], ckpt: checkpointing.Checkpointer | None,
          bar: tqdm) -> tuple[_TrainLog, _Clock]:
  """Steps ``start .. cfg.steps - 1``; stops early on divergence."""
  log, clock = _TrainLog(cfg, curves), _Clock()
  batches = data_lib.train_batches(
    train_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
    seed=cfg.seed, start_step=start, process_index=jax.process_index(),
    process_count=jax.process_count())
  stepper = _Stepper(s.model, s.opt, cfg.recluster_interval
                     if cfg.optimizer in SGG_OPTIMIZERS else None)
  loss = None
  for step in range(start, cfg.steps):
    t0 = time.time()
    batch = _global_batch(next(batches), s.batch_sharding, cfg.batch_size)
    compiling = step > start and stepper.first_call(step)
    t1 = clock.pause(loss) if compiling else 0.0
    loss, gnorm = stepper(step, batch)
    if compiling:  # left out of the throughput, as the first step is
      jax.block_until_ready(loss)
      clock.resume(t1)
    log.add(step, loss, gnorm)
    done = step + 1
    if (done % cfg.log_every == 0 or done == cfg.steps) and log.flush():
      break
    clock.step_done(t0, loss)
    if _periodic_due(cfg, done, ckpt):
      t1 = clock.pause(loss)  # only this work is left out of the throughput
      stepper.sync()
      _periodic(cfg, s, done, curves, ckpt)
      clock.resume(t1)
    bar.update(1)
    if done % cfg.log_every == 0 and curves['train']:
      dev = curves['dev'][-1][2] if curves['dev'] else None
      tps = clock.tokens_per_s(cfg.batch_size * cfg.seq_len)
      bar.set_postfix(loss=f'{curves["train"][-1][1]:.3f}',
                      dev_ppl='-' if dev is None else f'{dev:.1f}',
                      tok_s=f'{tps:,.0f}')
  if log.pending:
    log.flush()
  stepper.sync()
  return log, clock


def _finish(cfg: TrainConfig, s: _Setup, log: _TrainLog,
            curves: dict[str, Any], ckpt: checkpointing.Checkpointer | None,
            start: int) -> tuple[int, dict[str, float | None]]:
  """Final dev/test evaluation and checkpoint (not for a diverged run)."""
  final_step = curves['train'][-1][0] + 1 if curves['train'] else start
  if log.reason:
    return final_step, {'dev': None, 'test': None}
  losses = _evaluate_all(s, curves, final_step)
  if not all(math.isfinite(v) for v in losses.values()):
    log.reason = 'non-finite dev or test loss'
    return final_step, {'dev': None, 'test': None}
  if ckpt is not None:
    ckpt.save(final_step, s.model, s.opt, curves)
  return final_step, losses


def _result(cfg: TrainConfig, s: _Setup, mesh: jax.sharding.Mesh,
            streams: Streams, run: dict[str, Any],
            argv: Sequence[str] | None) -> dict[str, Any]:
  """The run's JSON record (schema in experiments/results/README.md)."""
  log, clock = run['log'], run['clock']
  losses, final_step = run['losses'], run['final_step']
  tokens_per_step = cfg.batch_size * cfg.seq_len
  is_sgg = cfg.optimizer in SGG_OPTIMIZERS
  model = {k: (jnp.dtype(v).name if k in ('dtype', 'param_dtype') else v)
           for k, v in dataclasses.asdict(s.mcfg).items()}
  return {
    'config': dataclasses.asdict(cfg),
    'model': {**model, 'n_params': s.n_params,
              'n_trainable': s.n_trainable},
    'provenance': records.provenance(argv),
    'mesh': dict(mesh.shape),
    'splits': {
      'train_tokens': len(streams.train), 'dev_tokens': len(streams.dev),
      'test_tokens': len(streams.test),
      'dev': f'every {evaluation.DEV_EVERY}th piece of the training stream',
      'eval_windows': s.test.num_windows,
      'eval_tokens_per_split': s.test.num_windows * cfg.seq_len},
    'eval_span': s.test.span,
    'dev_eval_span': s.dev.span,
    'resumed_from_step': run['start'] or None,
    'wall_time_s': run['wall'],
    'first_step_s': clock.first,
    'tokens_per_s': clock.tokens_per_s(tokens_per_step),  # after step 1
    'tokens_seen': final_step * tokens_per_step,
    'steps_done': final_step,
    'diverged': bool(log.reason),
    'divergence_reason': log.reason,
    'dev_loss': losses['dev'], 'dev_ppl': _ppl(losses['dev']),
    'test_loss': losses['test'], 'test_ppl': _ppl(losses['test']),
    'final_train_loss': (run['curves']['train'][-1][1]
                         if run['curves']['train'] else None),
    'clamped_fraction': (records.clamped_fraction(
      sgg_optax.cluster_summary(s.opt.opt_state).scales, SGG_CLAMP)
      if is_sgg else None),
    'curves': run['curves'],
  }


def train(cfg: TrainConfig, *, out: str | os.PathLike[str] | None = None,
          progress: bool = True, desc: str | None = None,
          streams: Streams | None = None,
          mesh: jax.sharding.Mesh | None = None,
          argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains one model and returns (and optionally writes) its results.

  A run that diverges (non-finite loss, or a loss above
  `divergence_factor` times the first one) stops early with
  ``diverged: true``; it never raises.

  Args:
    cfg: the run's configuration.
    out: path of the results JSON to write (process 0 only).
    progress: show a tqdm bar (process 0 only).
    desc: the bar's label.
    streams: pre-loaded `load_streams` output, to share across runs.
    mesh: the mesh (default: `make_mesh(cfg.mesh)`).
    argv: the command line recorded in the provenance (default sys.argv).

  Returns:
    The results dictionary (config, provenance, dev/test loss, curves).

  Raises:
    checkpointing.CheckpointMismatchError: `cfg.ckpt_dir` holds a
      checkpoint of another configuration.
  """
  t_start = time.time()
  ckpt = (checkpointing.Checkpointer(cfg.ckpt_dir, cfg.ckpt_every, cfg)
          if cfg.ckpt_dir else None)  # refuses a foreign checkpoint first
  streams = streams if streams is not None else load_streams(cfg)
  mesh = mesh or make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    s = _setup(cfg, mesh, streams)
    restored = ckpt.restore(s.model, s.opt) if ckpt is not None else None
    start, curves = restored if restored is not None else (0, _new_curves())
    bar = tqdm(total=cfg.steps, initial=start, desc=desc or cfg.optimizer,
               disable=not (progress and jax.process_index() == 0),
               leave=False, dynamic_ncols=True, mininterval=1.0)
    log, clock = _loop(cfg, s, streams.train, start, curves, ckpt, bar)
    bar.close()
    final_step, losses = _finish(cfg, s, log, curves, ckpt, start)
    run = dict(log=log, clock=clock, losses=losses, final_step=final_step,
               curves=curves, start=start, wall=time.time() - t_start)
    result = _result(cfg, s, mesh, streams, run, argv)
  if out is not None and jax.process_index() == 0:
    records.write_json(out, result)
  return result


# ------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------


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
  """The `TrainConfig` of parsed `add_config_args` flags."""
  names = {f.name for f in dataclasses.fields(TrainConfig)}
  return base.replace(**{k: v for k, v in vars(args).items()
                         if k in names})


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
  data = axes['data']
  for flag, size in [('--batch-size', cfg.batch_size),
                     ('--eval-batch-size', cfg.eval_batch_size)] + [
                       ('--batch-sizes', b) for b in batch_sizes]:
    if size and (size % data or size % jax.process_count()):
      parser.error(f'argument {flag}: {size} is not divisible by the mesh '
                   f"'data' axis ({data}) and the {jax.process_count()} "
                   'process(es)')
  if exported_streams(cfg) is None:
    try:
      data_lib.load_corpus(cfg.corpus)
    except data_lib.CorpusUnavailableError as e:
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


SMOKE = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, seq_len=32,
             batch_size=8, steps=6, eval_windows=16, log_every=2,
             recluster_interval=2, beta3=0.5)


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


if __name__ == '__main__':
  logging.basicConfig(level=logging.WARNING)
  main()
