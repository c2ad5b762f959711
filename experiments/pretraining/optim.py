"""Pre-training's optimizers: clipping, Adam or Adafactor (+ SGG), schedule.

The learning-rate peak lives in the optimizer state (an injected ``scale``
after the normalised schedule), so a sweep over learning rates and seeds
compiles the train step once per optimizer, not once per run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import sgg_optax
from experiments.pretraining import optim_rows
from experiments.pretraining.config import (
  OPTIMIZERS,
  SGG_CLAMP,
  SGG_OPTIMIZERS,
  TrainConfig,
  canonical,
)


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
  key = (canonical(cfg.optimizer),) + tuple(getattr(cfg, f)
                                           for f in fields[1:])
  if cfg.optimizer in SGG_OPTIMIZERS:
    key += (cfg.num_clusters, cfg.recluster_interval, cfg.beta3,
            cfg.scale_rule, cfg.cluster_stat, cfg.sgg_1d)
  return key + optim_rows.optimizer_key(cfg)


_TX_CACHE: dict[tuple[Any, ...], optax.GradientTransformation] = {}


def build_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Clipping, the base optimizer (+ SGG), the schedule and the peak LR.

  ``chain(clip_by_global_norm, <optimizer with the normalised schedule>,
  inject_hyperparams(scale)(peak_lr))``: the peak is a state entry set by
  `set_peak_lr`, so the compiled step is shared by runs that differ only in
  the learning rate (and seed). Adam is ``scale_by_adam`` (+ SGG in the
  update form, ``*_sgg_update``, or the momentum form,
  ``*_sgg_momentum``), weight decay and the
  schedule, as in `sgg_optax.adamw_sgg`; Adafactor is the GaLore/paper
  set-up (no parameter-scale multiplication, update clipping 1.0, decay
  0.8), with SGG after the clipping (`sgg_optax.adafactor_sgg`: the update
  form). A deprecated name (`config.DEPRECATED`) builds the optimizer it
  stands for.

  Args:
    cfg: the run's configuration.

  Returns:
    The transformation, cached per optimizer shape.
  """
  key = _optimizer_key(cfg)
  if key in _TX_CACHE:
    return _TX_CACHE[key]
  name = canonical(cfg.optimizer)
  if name not in OPTIMIZERS:
    raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got '
                     f'{cfg.optimizer!r}.')
  schedule = normalized_schedule(cfg.steps, cfg.warmup_frac,
                                 cfg.final_lr_frac)
  if name in optim_rows.ROWS:  # the paper's other rows (optim_rows.py)
    base = optim_rows.build(cfg, schedule, _sgg_kwargs(cfg))
  elif name.startswith('adam'):
    adam = dict(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                weight_decay=cfg.weight_decay)
    if name == 'adam':
      base = optax.adamw(**adam)
    else:
      base = sgg_optax.adamw_sgg(
        **adam, cluster_momentum=name.endswith('_sgg_momentum'),
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
