"""The model, the optimizer and the jitted steps of pre-training.

`_create` builds the model and its optimizer, sharded, inside one jit;
`_train_step` is one update over their split state, and `_Stepper` calls
it, deciding SGG's refreshes from the step number.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import sgg_optax
from experiments.common import model as model_lib
from experiments.common.model_config import (
  LlamaConfig,
  LogicalRules,
  get_config,
)
from experiments.pretraining.config import TrainConfig


def model_config(cfg: TrainConfig, vocab_size: int) -> LlamaConfig:
  """The preset with the run's vocabulary, sequence length and dtype."""
  overrides: dict[str, Any] = dict(
    vocab_size=vocab_size, max_seq_len=max(cfg.seq_len, 1),
    dtype=jnp.bfloat16 if cfg.bf16 else jnp.float32)
  if cfg.n_layers:
    overrides['n_layers'] = cfg.n_layers
  if cfg.dim:
    base = get_config(cfg.preset)
    heads = max(1, cfg.dim // base.head_dim)
    overrides.update(dim=cfg.dim, n_heads=heads,
                     n_kv_heads=heads if base.n_kv_heads == base.n_heads
                     else max(1, heads // 2),
                     ffn_dim=-(-(8 * cfg.dim // 3) // 32) * 32)
  return get_config(cfg.preset, **overrides)


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


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 4, 5))
def _create(config: LlamaConfig, tx: optax.GradientTransformation,
            rules: LogicalRules, seed: jax.Array, lora_rank: int = 0,
            factor_rank: int = 0) -> tuple[model_lib.Llama, nnx.Optimizer]:
  """Model and optimizer, created sharded inside one jit (multi-host safe).

  With `lora_rank`, the target linear layers get LoRA adapters
  (experiments/common/lora.py, alpha = 2 x rank) on their frozen random kernels.
  With `factor_rank`, they are factorised instead (W = U V, both trained;
  experiments/pretraining/lowrank.py).
  """
  key = jax.random.key(seed)
  with nnx.logical_axis_rules(rules):
    model = model_lib.Llama(config, rngs=nnx.Rngs(key))
    wrt = nnx.Param
    if factor_rank:
      from experiments.pretraining import lowrank

      lowrank.factorize(model, factor_rank)
    if lora_rank:
      from experiments.common import lora as lora_lib

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

  def transform(self, fn: Any, *args: Any) -> None:
    """Replaces the state by ``fn(graphdef, state, *args)`` (e.g. ReLoRA's
    restart, experiments/pretraining/relora.py)."""
    self.state = fn(self.graphdef, self.state, *args)
    self.stale = True

  def sync(self) -> None:
    if self.stale:
      nnx.update(self.objects, self.state)
      self.stale = False


@nnx.jit
def _eval_step(model: model_lib.Llama, batch: jax.Array) -> jax.Array:
  return model_lib.loss_fn(model, batch)
