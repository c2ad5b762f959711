"""The pre-training loop: set-up, logging, the clock, evaluation, the record.

`train` runs one configuration end to end: it builds the sharded model and
optimizer (`_setup`), restores a checkpoint if one is there, steps
(`_loop`: `_TrainLog` reads the losses back in blocks and stops a diverged
run, `_Clock` times the steps alone, `_periodic` runs the diagnostics,
evaluations and checkpoints that are due), scores dev and test
(`_finish`) and returns (and writes) the run's record (`_result`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import sgg_optax
from experiments.common import records
from experiments.common.batches import train_batches
from experiments.common.model_config import LlamaConfig
from experiments.pretraining import checkpointing, evaluation, optim_rows
from experiments.pretraining.config import (
  SGG_CLAMP,
  SGG_OPTIMIZERS,
  TrainConfig,
)
from experiments.pretraining.distributed import (
  batch_axes,
  make_mesh,
  sharding_rules,
)
from experiments.pretraining.optim import (
  build_optimizer,
  normalized_schedule,
  set_peak_lr,
)
from experiments.pretraining.step import _create, _Stepper, model_config
from experiments.pretraining.streams import (
  Streams,
  _global_batch,
  c4_batches,
  load_streams,
)


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


@dataclasses.dataclass
class _Setup:
  """What a run trains and scores: model, optimizer, evaluation sets."""

  model: Any
  opt: Any
  mcfg: LlamaConfig
  batch_sharding: NamedSharding
  dev: evaluation.EvalSet
  test: evaluation.EvalSet
  n_params: int
  n_trainable: int


def _setup(cfg: TrainConfig, mesh: jax.sharding.Mesh, streams: Streams
           ) -> _Setup:
  """Builds the sharded model and optimizer and the dev/test windows."""
  mcfg = model_config(cfg, streams.vocab_size)
  model, opt = _create(mcfg, build_optimizer(cfg), sharding_rules(mesh, mcfg),
                       jnp.int32(cfg.seed), *optim_rows.model_ranks(cfg))
  set_peak_lr(opt, cfg.lr)
  count = lambda tree: sum(int(np.prod(x.shape))
                           for x in jax.tree.leaves(tree))
  sharding = NamedSharding(mesh, P(batch_axes(mesh)))
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
    self.schedule = optim_rows.row_schedule(cfg, normalized_schedule(
      cfg.steps, cfg.warmup_frac, cfg.final_lr_frac))
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


def _loop(cfg: TrainConfig, s: _Setup, train_tokens: np.ndarray | None,
          start: int, curves: dict[str, Any],
          ckpt: checkpointing.Checkpointer | None, bar: tqdm,
          data: Any = None) -> tuple[_TrainLog, _Clock]:
  """Steps ``start .. cfg.steps - 1``; stops early on divergence.

  ``data`` (C4-format shards) yields this process's rows of each batch from
  the restored position; otherwise batches are drawn from ``train_tokens``.
  """
  log, clock = _TrainLog(cfg, curves), _Clock()
  batches = data if data is not None else train_batches(
    train_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
    seed=cfg.seed, start_step=start, process_index=jax.process_index(),
    process_count=jax.process_count())
  stepper = _Stepper(s.model, s.opt, cfg.recluster_interval
                     if cfg.optimizer in SGG_OPTIMIZERS else None)
  hook = optim_rows.step_hook(cfg)  # ReLoRA's restarts
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
    if hook is not None and hook.due(done):  # before a checkpoint at done
      t1 = clock.pause(loss)
      stepper.transform(hook, done)
      clock.resume(t1)
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
      'train_tokens': (None if streams.train is None
                       else len(streams.train)),
      'dev_tokens': len(streams.dev),
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
  data = c4_batches(cfg) if cfg.data_glob else None
  if ckpt is not None:
    ckpt.data = data  # saved and restored with the state
  with jax.set_mesh(mesh):
    s = _setup(cfg, mesh, streams)
    restored = ckpt.restore(s.model, s.opt) if ckpt is not None else None
    start, curves = restored if restored is not None else (0, _new_curves())
    bar = tqdm(total=cfg.steps, initial=start, desc=desc or cfg.optimizer,
               disable=not (progress and jax.process_index() == 0),
               leave=False, dynamic_ncols=True, mininterval=1.0)
    log, clock = _loop(cfg, s, streams.train, start, curves, ckpt, bar,
                       data)
    bar.close()
    final_step, losses = _finish(cfg, s, log, curves, ckpt, start)
    run = dict(log=log, clock=clock, losses=losses, final_step=final_step,
               curves=curves, start=start, wall=time.time() - t_start)
    result = _result(cfg, s, mesh, streams, run, argv)
  if out is not None and jax.process_index() == 0:
    records.write_json(out, result)
  return result
