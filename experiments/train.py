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
#     dense (layers, K) statistics and the counters are replicated.
#   * `jax.distributed.initialize()` runs when `--coordinator` /
#     `--num-processes` / `--process-id` are given, or automatically on a
#     SLURM, Open MPI or multi-host TPU job (`--distributed auto`).
#   * Each process builds only its rows of every batch (data.py's
#     process_index/process_count) and `jax.make_array_from_process_local_data`
#     assembles the global batch, sharded over `data`.
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
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import sgg_optax
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
    b2: Adam's second-moment decay.
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
    eval_every: validation every this many steps (0: only at the end).
    eval_batches: validation batches (0: the whole validation split).
    eval_batch_size: validation batch size (0: `batch_size`).
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
  b2: float = 0.999
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
  eval_batches: int = 0
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
  kwargs = dict(num_clusters=cfg.num_clusters,
                recluster_interval=cfg.recluster_interval, beta3=cfg.beta3,
                scale_rule=cfg.scale_rule, cluster_stat=cfg.cluster_stat)
  if cfg.sgg_1d:
    kwargs['mask'] = lambda params: jax.tree.map(lambda _: True, params)
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
    if name == 'adam':
      base = optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps,
                         weight_decay=cfg.weight_decay)
    else:
      base = sgg_optax.adamw_sgg(
        schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
        cluster_momentum=name == 'adam_sgg_momentum', **_sgg_kwargs(cfg))
  else:
    af = dict(multiply_by_parameter_scale=False, clipping_threshold=1.0,
              decay_rate=0.8,
              momentum=cfg.b1 if cfg.adafactor_momentum else None,
              weight_decay_rate=cfg.weight_decay or None)
    if name == 'adafactor':
      base = optax.adafactor(schedule, **af)
    else:
      base = sgg_optax.adafactor_sgg(schedule, **af, **_sgg_kwargs(cfg))
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


def _stream_name(cfg: TrainConfig) -> str:
  kind = 'bytes' if cfg.tokenizer == 'bytes' else f'bpe{cfg.vocab_size}'
  return f'{cfg.corpus}-{kind}'


def load_streams(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
  """Train and validation token streams and the vocabulary size.

  With `cfg.data_dir`, streams saved there (`<corpus>-<tokenizer>-<split>.npy`
  plus a `.json` with the vocabulary size) are read without the corpus
  packages, e.g. on an accelerator host; otherwise they are made with
  data.py (cached) and, when `data_dir` is set, saved there.

  Args:
    cfg: the run's configuration.

  Returns:
    ``(train, validation, vocab_size)``.
  """
  name = _stream_name(cfg)
  if cfg.data_dir:
    root = pathlib.Path(cfg.data_dir)
    meta = root / f'{name}.json'
    if meta.exists():
      vocab = json.loads(meta.read_text())['vocab_size']
      return (np.load(root / f'{name}-train.npy').astype(np.int32),
              np.load(root / f'{name}-validation.npy').astype(np.int32), vocab)
  tok = data_lib.get_tokenizer(cfg.tokenizer, cfg.corpus, cfg.vocab_size)
  train = data_lib.tokenize_split(cfg.corpus, data_lib.TRAIN, tok)
  val = data_lib.tokenize_split(cfg.corpus, data_lib.VALIDATION, tok)
  if cfg.data_dir and jax.process_index() == 0:
    root = pathlib.Path(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    np.save(root / f'{name}-train.npy', train.astype(dtype))
    np.save(root / f'{name}-validation.npy', val.astype(dtype))
    (root / f'{name}.json').write_text(
      json.dumps({'vocab_size': tok.vocab_size}))
  return train, val, tok.vocab_size


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


@nnx.jit
def _train_step(model: model_lib.Llama, opt: nnx.Optimizer,
                batch: jax.Array) -> tuple[jax.Array, jax.Array]:
  grad_fn = nnx.value_and_grad(model_lib.loss_fn,
                               argnums=nnx.DiffState(0, opt.wrt))
  loss, grads = grad_fn(model, batch)
  opt.update(model, grads)
  return loss, optax.tree.norm(grads)


@nnx.jit
def _eval_step(model: model_lib.Llama, batch: jax.Array) -> jax.Array:
  return model_lib.loss_fn(model, batch)


# ------------------------------------------------------------------------------
# Diagnostics, checkpoints, provenance
# ------------------------------------------------------------------------------


def sgg_diagnostics(opt: nnx.Optimizer, step: int
                    ) -> tuple[dict[str, Any], list[str]]:
  """SGG's per-layer scales and how far they moved from 1."""
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
  }, list(summary.names)


def git_commit() -> str:
  """HEAD of the repository this file lives in (+ '-dirty'), or 'unknown'."""
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
      check=True, capture_output=True, text=True).stdout.strip()
    return head + ('-dirty' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def _source_digest() -> str:
  """SHA-256 (16 hex) of the sgg_optax sources imported by this process."""
  import hashlib

  root = pathlib.Path(sgg_optax.__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob('*.py')):
    digest.update(path.relative_to(root).as_posix().encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


# Read at import: the code this process runs, even if the tree changes later.
SGG_OPTAX_SOURCE = _source_digest()


def device_info() -> dict[str, Any]:
  """What the run ran on."""
  dev = jax.devices()[0]
  return {
    'platform': dev.platform, 'device_kind': dev.device_kind,
    'device_count': jax.device_count(),
    'local_device_count': jax.local_device_count(),
    'process_count': jax.process_count(), 'host': platform.node(),
    'cpu_count': os.cpu_count(), 'jax': jax.__version__,
    'flax': getattr(sys.modules.get('flax'), '__version__', '?'),
    'optax': optax.__version__,
  }


def _flat_arrays(*objs: Any) -> dict[str, jax.Array]:
  out = {}
  for i, obj in enumerate(objs):
    for path, var in nnx.to_flat_state(nnx.state(obj)):
      value = var.get_value()
      if isinstance(value, jax.Array):
        out['/'.join(map(str, (i,) + tuple(path)))] = value
  return out


def _restore_into(flat: dict[str, jax.Array], *objs: Any) -> None:
  for i, obj in enumerate(objs):
    state = nnx.state(obj)
    new = []
    for path, var in nnx.to_flat_state(state):
      key = '/'.join(map(str, (i,) + tuple(path)))
      if key in flat:
        var = var.replace(flat[key])
      new.append((path, var))
    nnx.update(obj, nnx.from_flat_state(new))


class _Checkpointer:
  """Orbax save/resume of the model, optimizer and curves (multi-host safe)."""

  def __init__(self, directory: str, every: int):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.every = every
    self.manager = ocp.CheckpointManager(
      pathlib.Path(directory).resolve(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

  def restore(self, model: Any, opt: Any) -> tuple[int, dict[str, Any]] | None:
    step = self.manager.latest_step()
    if step is None:
      return None
    ocp = self._ocp
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _flat_arrays(model, opt))
    got = self.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      curves=ocp.args.JsonRestore()))
    _restore_into(dict(got['state']), model, opt)
    return step, dict(got['curves'])

  def save(self, step: int, model: Any, opt: Any, curves: dict[str, Any],
           force: bool = False) -> None:
    if not force and (self.every <= 0 or step % self.every):
      return
    if self.manager.latest_step() == step:
      return
    ocp = self._ocp
    self.manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_flat_arrays(model, opt)),
      curves=ocp.args.JsonSave(curves)), force=force)
    self.manager.wait_until_finished()


# ------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------


def _eval_loss(model: Any, batches: Sequence[jax.Array]) -> float:
  losses = [_eval_step(model, b) for b in batches]
  return float(np.mean(jax.device_get(losses)))


def _ppl(loss: float) -> float:
  return float(math.exp(loss)) if loss < 50 else float('inf')


def train(cfg: TrainConfig, *, out: str | os.PathLike[str] | None = None,
          progress: bool = True, desc: str | None = None,
          streams: tuple[np.ndarray, np.ndarray, int] | None = None,
          mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
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

  Returns:
    The results dictionary (config, provenance, curves, final metrics).
  """
  t_start = time.time()
  if streams is None:
    streams = load_streams(cfg)
  train_tokens, val_tokens, vocab = streams
  mesh = mesh or make_mesh(cfg.mesh)
  rules = sharding_rules(mesh)
  mcfg = model_config(cfg, vocab)
  tx = build_optimizer(cfg)
  pid, pcount = jax.process_index(), jax.process_count()
  main_process = pid == 0
  batch_sharding = NamedSharding(mesh, P('data'))
  diag_every = cfg.diag_every or (
    cfg.recluster_interval if cfg.optimizer in SGG_OPTIMIZERS else 0)

  with jax.set_mesh(mesh):
    model, opt = _create(mcfg, tx, rules, jnp.int32(cfg.seed), cfg.lora_rank)
    set_peak_lr(opt, cfg.lr)
    n_params = sum(int(np.prod(x.shape)) for x in
                   jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_trainable = sum(int(np.prod(x.shape)) for x in
                      jax.tree.leaves(nnx.state(model, opt.wrt)))

    eval_bs = cfg.eval_batch_size or cfg.batch_size
    available = data_lib.num_eval_batches(len(val_tokens), batch_size=eval_bs,
                                          seq_len=cfg.seq_len)
    n_eval = min(available, cfg.eval_batches) if cfg.eval_batches else available
    val_batches = [
      _global_batch(b, batch_sharding, eval_bs)
      for b in data_lib.eval_batches(
        val_tokens, batch_size=eval_bs, seq_len=cfg.seq_len,
        num_batches=n_eval, process_index=pid, process_count=pcount)]

    curves: dict[str, list[Any]] = {
      'train': [], 'eval': [], 'sgg': [], 'sgg_names': []}
    start = 0
    ckpt = _Checkpointer(cfg.ckpt_dir, cfg.ckpt_every) if cfg.ckpt_dir else None
    if ckpt is not None:
      restored = ckpt.restore(model, opt)
      if restored is not None:
        start, curves = restored
        logger.info('resumed from step %d', start)

    schedule = normalized_schedule(cfg.steps, cfg.warmup_frac,
                                   cfg.final_lr_frac)
    batches: Iterator[np.ndarray] = data_lib.train_batches(
      train_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
      seed=cfg.seed, start_step=start, process_index=pid,
      process_count=pcount)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    bar = tqdm(total=cfg.steps, initial=start, desc=desc or cfg.optimizer,
               disable=not (progress and main_process), leave=False,
               dynamic_ncols=True, mininterval=1.0)
    pending: list[tuple[int, jax.Array, jax.Array]] = []
    first_loss = curves['train'][0][1] if curves['train'] else None
    diverged, reason = False, ''
    val_ppl = None  # none until the first evaluation
    t_loop, t_first = time.time(), None
    steps_timed, t_timed, t_other = 0, 0.0, 0.0  # t_other: eval, logging

    def flush() -> bool:
      nonlocal first_loss, diverged, reason
      values = jax.device_get([(lo, gn) for _, lo, gn in pending])
      for (s, _, _), (loss, gnorm) in zip(pending, values):
        loss, gnorm = float(loss), float(gnorm)
        curves['train'].append([s, loss, gnorm, float(cfg.lr * schedule(s))])
        if first_loss is None:
          first_loss = loss
        if not math.isfinite(loss):
          diverged, reason = True, f'non-finite loss at step {s}'
        elif loss > cfg.divergence_factor * first_loss:
          diverged, reason = True, (
            f'loss {loss:.3f} > {cfg.divergence_factor} x first loss '
            f'{first_loss:.3f} at step {s}')
        if diverged:
          break
      pending.clear()
      return diverged

    def evaluate(step: int) -> float:
      loss = _eval_loss(model, val_batches)
      curves['eval'].append([step, loss, _ppl(loss)])
      return loss

    step = start
    for step in range(start, cfg.steps):
      t0 = time.time()
      batch = _global_batch(next(batches), batch_sharding, cfg.batch_size)
      loss, gnorm = _train_step(model, opt, batch)
      pending.append((step, loss, gnorm))
      done = step + 1
      if (done % cfg.log_every == 0 or done == cfg.steps) and flush():
        break
      if t_first is None:
        jax.block_until_ready(loss)
        t_first = time.time() - t0  # compile + first step
      else:
        steps_timed += 1
        t_timed = time.time() - t_loop - t_first - t_other
      do_diag = diag_every and (done % diag_every == 0 or done == cfg.steps)
      do_eval = (cfg.eval_every and done % cfg.eval_every == 0
                 and done < cfg.steps)
      do_ckpt = ckpt is not None and ckpt.every > 0 and done % ckpt.every == 0
      if do_diag or do_eval or do_ckpt:
        # Finish the queued steps first, so that only this work is excluded
        # from the training throughput.
        jax.block_until_ready(loss)
        t1 = time.time()
        t_timed = t1 - t_loop - t_first - t_other
        if do_diag:
          diag, names = sgg_diagnostics(opt, done)
          curves['sgg'].append(diag)
          curves['sgg_names'] = names
        if do_eval:
          val_ppl = _ppl(evaluate(done))
        if do_ckpt:
          ckpt.save(done, model, opt, curves)
        t_other += time.time() - t1
      bar.update(1)
      if done % cfg.log_every == 0 and curves['train']:
        tps = tokens_per_step * steps_timed / t_timed if t_timed else 0.0
        bar.set_postfix(loss=f'{curves["train"][-1][1]:.3f}',
                        val_ppl='-' if val_ppl is None else f'{val_ppl:.1f}',
                        tok_s=f'{tps:,.0f}')
    else:
      if pending and flush():
        pass
    bar.close()
    final_step = curves['train'][-1][0] + 1 if curves['train'] else start
    if diverged:
      final_loss = float('nan')
    else:
      final_loss = evaluate(final_step)
      if not math.isfinite(final_loss):
        diverged, reason = True, 'non-finite validation loss'
      if ckpt is not None:
        ckpt.save(final_step, model, opt, curves, force=True)

  wall = time.time() - t_start
  tps = tokens_per_step * steps_timed / t_timed if t_timed else 0.0
  result = {
    'config': dataclasses.asdict(cfg),
    'model': {**{k: (jnp.dtype(v).name if k in ('dtype', 'param_dtype')
                     else v)
                 for k, v in dataclasses.asdict(mcfg).items()},
              'n_params': n_params, 'n_trainable': n_trainable},
    'git_commit': git_commit(),
    'sgg_optax_source_sha256': SGG_OPTAX_SOURCE,
    'device': device_info(),
    'mesh': dict(mesh.shape),
    'wall_time_s': wall,
    'first_step_s': t_first,
    'tokens_per_s': tps,  # training steps only (after the first)
    'tokens_seen': final_step * tokens_per_step,
    'val_tokens': n_eval * eval_bs * cfg.seq_len,
    'steps_done': final_step,
    'diverged': diverged,
    'divergence_reason': reason,
    'final_val_loss': final_loss if not diverged else None,
    'final_val_ppl': _ppl(final_loss) if not diverged else None,
    'final_train_loss': curves['train'][-1][1] if curves['train'] else None,
    'curves': curves,
  }
  if out is not None and main_process:
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_json_default))
  return result


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


# ------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------


def add_config_args(parser: argparse.ArgumentParser,
                    defaults: TrainConfig = TrainConfig(),
                    skip: Sequence[str] = ()) -> None:
  """Adds one flag per `TrainConfig` field (help from its docstring)."""
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
      kwargs: dict[str, Any] = {}
      if field.name == 'optimizer':
        kwargs['choices'] = OPTIMIZERS
      elif field.name == 'scale_rule':
        kwargs['choices'] = ('mda', 'reference')
      elif field.name == 'cluster_stat':
        kwargs['choices'] = ('signed', 'abs')
      elif field.name == 'tokenizer':
        kwargs['choices'] = ('bpe', 'bytes')
      parser.add_argument(flag, type=type(default), default=default,
                          help=help_, **kwargs)


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
  group.add_argument('--num-processes', type=int, default=0,
                     help='number of processes (explicit launch)')
  group.add_argument('--process-id', type=int, default=-1,
                     help="this process's index (explicit launch)")
  group.add_argument('--distributed', choices=('auto', 'off'), default='auto',
                     help='auto: initialise on SLURM / Open MPI / multi-host '
                          'TPU jobs; off: never')


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
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
  args = parser.parse_args(argv)
  init_distributed(args.coordinator, args.num_processes, args.process_id,
                   args.distributed)
  cfg = config_from_args(args)
  if args.smoke:
    cfg = cfg.replace(preset='tiny', n_layers=1, dim=64, vocab_size=512,
                      seq_len=32, batch_size=8, steps=6, eval_batches=2,
                      log_every=2, recluster_interval=2, beta3=0.5)
  result = train(cfg, out=args.out, progress=args.progress)
  if jax.process_index() == 0:
    ppl = result['final_val_ppl']
    print(f'{cfg.optimizer} lr={cfg.lr:g}: final val ppl '
          f'{"diverged" if ppl is None else f"{ppl:.2f}"} '
          f'({result["tokens_per_s"]:,.0f} tok/s, '
          f'{result["wall_time_s"]:.0f} s) -> {args.out}')
  return result


if __name__ == '__main__':
  logging.basicConfig(level=logging.WARNING)
  main()
