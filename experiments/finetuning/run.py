"""One fine-tuning run: build, train, score on dev and test, write its JSON."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp

import sgg_optax
from experiments.common import gguf as G
from experiments.common import lora as L
from experiments.common import records
from experiments.finetuning import data as FD
from experiments.finetuning import eval as FE
from experiments.finetuning import log as FL
from experiments.finetuning import model as FM
from experiments.finetuning import step as FS

# The code that decides a run's numbers: the library, experiments/common and
# the modules here that build, train and score a run. The sweep, the report
# and the plots are not part of it, so changing them keeps committed runs
# reusable (tests/experiments/test_finetune_protocol.py checks that every
# experiments module these import is listed). Taken at import, so it names
# the code this process runs even if the tree changes while it runs.
RUN_CODE = ('common', 'finetuning/data.py', 'finetuning/eval.py',
            'finetuning/log.py', 'finetuning/model.py', 'finetuning/run.py',
            'finetuning/step.py')
CODE_KEY = records.code_key(RUN_CODE)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run."""
  task: str
  method: str
  opt: FS.OptSettings
  lr: float
  seed: int
  steps: int
  batch_size: int
  seq_len: int
  lora: L.LoRAConfig
  warmup_frac: float = 0.1

  @property
  def name(self) -> str:
    sgg = (f'-T{self.opt.sgg_interval}-b{self.opt.sgg_beta3:g}'
           if self.opt.name == 'adamw_sgg' else '')
    return (f'{self.task}-{self.method}-{self.opt.name}-lr{self.lr:g}{sgg}'
            f'-s{self.seed}')

  def record(self) -> dict[str, Any]:
    """The spec as JSON values (part of the run cache's key)."""
    return json.loads(json.dumps(dataclasses.asdict(self),
                                 default=records.json_default))


@dataclasses.dataclass
class EvalSizes:
  """How many rows dev and test hold, and the eval batch size."""
  dev_windows: int
  test_windows: int
  cls_dev_per_topic: int
  cls_test_examples: int
  batch_size: int


class Context:
  """The tokenizer, the base models and each task's data, loaded once."""

  def __init__(self, n_layers: int, dtype: Any, sizes: EvalSizes,
               lm_seq_len: int, cls_seq_len: int, command: list[str]):
    self.tok = G.load_smollm2_tokenizer()
    self.bases = FM.BaseModels(n_layers, dtype)
    self.sizes, self.command = sizes, command
    self.lm_seq_len, self.cls_seq_len = lm_seq_len, cls_seq_len

  @functools.cached_property
  def lm(self) -> FD.LMData:
    s = self.sizes
    return FD.load_lm_data(self.tok, seq_len=self.lm_seq_len,
                           dev_windows=s.dev_windows,
                           test_windows=s.test_windows)

  @functools.cached_property
  def cls(self) -> FD.ClsData:
    s = self.sizes
    return FD.load_cls_data(self.tok, seq_len=self.cls_seq_len,
                            dev_per_topic=s.cls_dev_per_topic,
                            test_examples=s.cls_test_examples)

  def data(self, task: str) -> FD.LMData | FD.ClsData:
    return self.lm if task == 'lm' else self.cls

  def ids(self, task: str):
    return self.cls.verbaliser_ids if task == 'cls' else None


def scores(ctx: Context, task: str, graphdef, params, rngs, frozen
           ) -> dict[str, Any]:
  """Dev and test metrics, flat (`dev_loss`, `test_ppl`, ...), and where the
  evaluation rows lie (`eval_span` of the test split, topics per split)."""
  data = ctx.data(task)
  out: dict[str, Any] = {}
  for split in ('dev', 'test'):
    metrics = FE.evaluate(task, getattr(data, split), graphdef, params, rngs,
                          frozen, batch_size=ctx.sizes.batch_size,
                          ids=ctx.ids(task))
    out.update({f'{split}_{k}': v for k, v in metrics.items()})
  out['eval_span'] = data.test.span
  out['dev_span'] = data.dev.span
  out['eval_rows'] = {'dev': len(data.dev.topics),
                      'test': len(data.test.topics)}
  out['eval_topics'] = {'dev': data.dev.topic_counts(),
                        'test': data.test.topic_counts()}
  return out


def _scale_history(spec: RunSpec, opt_state) -> FL.ScaleHistory | None:
  if spec.opt.name != 'adamw_sgg':
    return None
  return FL.ScaleHistory(opt_state, interval=spec.opt.sgg_interval,
                         beta3=spec.opt.sgg_beta3, clamp=FS.CLAMP,
                         clamp_before=spec.opt.sgg_rule == 'mda')


def train(ctx: Context, spec: RunSpec, quiet: bool, log_every: int):
  """Trains one run; returns its model parts, optimizer state and log."""
  graphdef, params, rngs, frozen, summary = FM.build(
    ctx.bases, spec.method, spec.lora, spec.seed)
  tx = FS.make_direction(spec.opt)
  opt_state = tx.init(params)
  sizes = {'opt_state_bytes': L.tree_bytes(opt_state),
           'sgg_state_bytes': L.tree_bytes(
             sgg_optax.find_sgg_states(opt_state)),
           'trainable_params': L.tree_size(params), **summary}
  step_fn = functools.partial(
    FS.train_step, graphdef=graphdef, task=spec.task, tx=tx,
    steps=spec.steps, warmup_frac=spec.warmup_frac)
  ids = ctx.ids(spec.task)
  ids = None if ids is None else jnp.asarray(ids)
  log = FL.RunLog(spec.name, spec.steps, tokens_per_step(spec),
                  quiet=quiet, log_every=log_every,
                  scales=_scale_history(spec, opt_state))
  train_rows = ctx.data(spec.task).train
  for step in range(spec.steps):
    batch = FD.train_batch(train_rows, spec.task, step,
                           batch_size=spec.batch_size, seq_len=spec.seq_len,
                           seed=spec.seed)
    params, opt_state, rngs, loss = step_fn(
      params, opt_state, rngs, frozen,
      {k: jnp.asarray(v) for k, v in batch.items()}, ids,
      jnp.float32(spec.lr), jnp.int32(step),
      refresh=FS.refresh_at(spec.opt, step))
    log.step(step, loss, opt_state)
  return (graphdef, params, rngs, frozen), opt_state, log, sizes


def tokens_per_step(spec: RunSpec) -> int:
  return spec.batch_size * spec.seq_len


def run(ctx: Context, spec: RunSpec, path: pathlib.Path, *, quiet: bool,
        log_every: int) -> dict[str, Any]:
  """Trains, scores on dev and test, and writes `path` (JSON)."""
  t0, c0 = time.perf_counter(), time.process_time()
  parts, opt_state, log, sizes = train(ctx, spec, quiet, log_every)
  train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
  result = {
    'name': spec.name, 'task': spec.task, 'method': spec.method,
    'optimizer': spec.opt.name, 'lr': spec.lr, 'seed': spec.seed,
    **_sgg_choice(spec),
    'steps': spec.steps, 'batch_size': spec.batch_size,
    'seq_len': spec.seq_len, 'tokens_per_step': tokens_per_step(spec),
    'train_tokens': tokens_per_step(spec) * spec.steps,
    'spec': spec.record(),
    'precision': precision(spec.method, ctx.bases.dtype_name),
    'n_layers': ctx.bases.n_layers,
    **scores(ctx, spec.task, *parts), **log.result(), **sizes,
    'opt_state_leaves': len(jax.tree.leaves(opt_state)),
    'train_seconds': train_s, 'wall_seconds': time.perf_counter() - t0,
    # CPU time of the process (all cores): on a shared machine, wall time
    # follows the load, CPU time much less.
    'train_cpu_seconds': train_cpu,
    'cpu_seconds': time.process_time() - c0,
    'code_key': CODE_KEY,
    'provenance': records.provenance(ctx.command),
  }
  if spec.opt.name == 'adamw_sgg':
    result['sgg_scales'] = _final_scales(opt_state)
  records.write_json(path, result)
  return result


def _sgg_choice(spec: RunSpec) -> dict[str, Any]:
  sgg = spec.opt.name == 'adamw_sgg'
  return {'sgg_interval': spec.opt.sgg_interval if sgg else None,
          'sgg_beta3': spec.opt.sgg_beta3 if sgg else None}


def _final_scales(opt_state) -> dict[str, Any]:
  cs = sgg_optax.cluster_summary(opt_state)
  return {'min': float(cs.scales.min()), 'median': float(
    jnp.median(cs.scales)), 'max': float(cs.scales.max()),
    'global_stat': cs.global_stat, 'count': cs.count,
    'layers': len(cs.names)}


def cached(path: pathlib.Path, spec: RunSpec) -> dict[str, Any] | None:
  """The run JSON at `path` if it was made by this code for this spec."""
  if not path.exists():
    return None
  r = json.loads(path.read_text())
  if r.get('code_key') != CODE_KEY or r.get('spec') != spec.record():
    return None
  return r


def zero_shot(ctx: Context, task: str, precision_name: str,
              path: pathlib.Path) -> dict[str, Any]:
  """Dev and test metrics of the untouched base model (f32 or Q-LoRA)."""
  from flax import nnx
  model = ctx.bases.get(precision_name)
  parts = nnx.split(model, nnx.Param, nnx.RngState, ...)
  result = {'task': task, 'precision': precision_name,
            **scores(ctx, task, *parts), 'code_key': CODE_KEY,
            'provenance': records.provenance(ctx.command)}
  records.write_json(path, result)
  return result


def precision(method: str, dtype: str) -> str:
  if method == 'qlora':
    return (f'base int8 kernels (per-output-channel f32 scales) + bf16 '
            f'embedding/norms, {dtype} compute, f32 adapters')
  if method == 'lora':
    return f'base f32 (frozen), {dtype} compute, f32 adapters'
  return f'f32 params, {dtype} compute'
