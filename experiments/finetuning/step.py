"""The optimizers and the jitted train / eval steps of fine-tuning."""

from __future__ import annotations

import dataclasses
import functools

import jax
import optax
from flax import nnx

import sgg_optax
from experiments.common import model as M
from experiments.finetuning import model as FM

CLAMP = (0.1, 10.0)  # SGG's scale bounds (the paper's), passed explicitly


@dataclasses.dataclass(frozen=True)
class OptSettings:
  """Everything that defines an optimizer except its learning rate."""
  name: str
  weight_decay: float = 0.0
  clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  sgg_k: int = 3
  sgg_interval: int = 10
  sgg_beta3: float = 0.9
  sgg_momentum: bool = True
  sgg_rule: str = 'mda'
  sgg_cluster_decay: float = 0.95


@functools.lru_cache(maxsize=None)
def make_direction(s: OptSettings) -> optax.GradientTransformation:
  """The optimizer without its learning rate (one object per settings, so
  that jitted steps are reused across learning rates and seeds).

  `adamw`: clip, `scale_by_adam`, decoupled weight decay. `adamw_sgg`: the
  same chain with SGG scaling Adam's step, before the decay: `with_sgg`
  around `scale_by_adam` (clustering Adam's momentum, the paper's form), or
  the chain link `sgg` after it (clustering the update).
  """
  clip = optax.clip_by_global_norm(s.clip) if s.clip else optax.identity()
  adam = optax.scale_by_adam(b1=s.b1, b2=s.b2)
  decay = optax.add_decayed_weights(s.weight_decay)
  if s.name == 'adamw':
    return optax.chain(clip, adam, decay)
  if s.name != 'adamw_sgg':
    raise ValueError(f'Unknown optimizer {s.name!r}.')
  sgg_kw = dict(num_clusters=s.sgg_k, recluster_interval=s.sgg_interval,
                beta3=s.sgg_beta3, scale_rule=s.sgg_rule,
                cluster_decay=s.sgg_cluster_decay, clamp=CLAMP)
  if s.sgg_momentum:
    return optax.chain(clip, sgg_optax.with_sgg(adam, **sgg_kw), decay)
  return optax.chain(clip, adam, sgg_optax.sgg(**sgg_kw), decay)


def lr_at(step: jax.Array, peak: jax.Array, steps: int,
          warmup_frac: float) -> jax.Array:
  """Linear warmup, then cosine decay to 10% of the peak."""
  warmup = max(1, int(round(warmup_frac * steps)))
  sched = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, warmup, max(steps, warmup + 1), end_value=0.1)
  return peak * sched(step + 1)


def _loss(model: M.Llama, task: str, batch: dict[str, jax.Array],
          ids: jax.Array) -> jax.Array:
  if task == 'lm':
    return M.loss_fn(model, batch['tokens'])
  logits = FM.class_logits(model, batch['tokens'], batch['lengths'], ids)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, batch['labels']).mean()


def refresh_at(s: OptSettings, step: int) -> bool | None:
  """SGG's refresh decision for the update after `step` updates (None for
  AdamW): SGG's own schedule, decided on the host so that no step holds a
  `lax.cond` (a plain and a refresh step are compiled)."""
  if s.name != 'adamw_sgg':
    return None
  return sgg_optax.refresh_due(step, s.sgg_interval)


@functools.partial(jax.jit, static_argnames=('graphdef', 'task', 'tx',
                                             'steps', 'warmup_frac',
                                             'refresh'),
                   donate_argnames=('params', 'opt_state', 'rngs'))
def train_step(params, opt_state, rngs, frozen, batch, ids, lr, step, *,
               graphdef, task, tx, steps, warmup_frac, refresh=None):
  """One optimizer step on the trainable `params` only (`refresh`: SGG's
  `sgg_refresh`, None for AdamW)."""

  def loss_of(p, r):
    model = nnx.merge(graphdef, p, r, frozen)
    loss = _loss(model, task, batch, ids)
    return loss, nnx.state(model, nnx.RngState)

  (loss, rngs), grads = jax.value_and_grad(loss_of, has_aux=True)(
    params, rngs)
  extra = {} if refresh is None else {'sgg_refresh': refresh}
  updates, opt_state = tx.update(grads, opt_state, params, **extra)
  scale = -lr_at(step, lr, steps, warmup_frac)
  updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
  params = optax.apply_updates(params, updates)
  return params, opt_state, rngs, loss


@functools.partial(jax.jit, static_argnames=('graphdef', 'task'))
def eval_step(params, rngs, frozen, batch, ids, *, graphdef, task):
  """LM: mean NLL of the batch; cls: (B, 5) verbaliser logits."""
  model = nnx.merge(graphdef, params, rngs, frozen)
  model.eval()
  if task == 'lm':
    return M.loss_fn(model, batch['tokens'])
  return FM.class_logits(model, batch['tokens'], batch['lengths'], ids)
