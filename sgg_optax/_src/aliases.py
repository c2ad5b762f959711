"""Ready-made optimizers with SGG, built with :func:`optax.chain`."""

from typing import Any

import jax.numpy as jnp
import optax

from sgg_optax._src.config import MaskOrFn
from sgg_optax._src.state import SGGTransformation, with_refresh
from sgg_optax._src.transform import with_sgg

_SGG_ARGS_DOC = """
    num_clusters: SGG's ``K`` (see :func:`~sgg_optax.sgg`).
    recluster_interval: SGG's ``T``.
    beta3: SGG's scale EMA decay.
    sgg_mask: which parameters SGG groups (:func:`~sgg_optax.sgg`'s
      ``mask``; default: those with at least 2 dimensions).
    stacked_layers: see :func:`~sgg_optax.sgg`.
    cluster_stat: see :func:`~sgg_optax.sgg`.
    global_stat: see :func:`~sgg_optax.sgg`.
    scale_rule: see :func:`~sgg_optax.sgg`.
    clamp: see :func:`~sgg_optax.sgg`.
    clamp_order: see :func:`~sgg_optax.sgg`.
    sgg_eps: SGG's ``eps`` (:func:`~sgg_optax.sgg`'s ``eps``).
    kmeans_iters: see :func:`~sgg_optax.sgg`.
    sample_size: see :func:`~sgg_optax.sgg`.
    assignment: see :func:`~sgg_optax.sgg`.
    cluster_decay: see :func:`~sgg_optax.sgg`.
    reference_init: see :func:`~sgg_optax.sgg`."""


_SGG_ARGS = ('num_clusters', 'recluster_interval', 'beta3', 'sgg_mask',
             'stacked_layers', 'cluster_stat', 'global_stat', 'scale_rule',
             'clamp', 'clamp_order', 'sgg_eps', 'kmeans_iters', 'sample_size',
             'assignment', 'cluster_decay', 'reference_init')


def _sgg_args(arguments: dict[str, Any]) -> dict[str, Any]:
  """An alias's SGG arguments, out of all of its arguments."""
  return {name: arguments[name] for name in _SGG_ARGS}


def _with_sgg(base: optax.GradientTransformation, moment: str | None,
              **kw: Any) -> SGGTransformation:
  """``base`` wrapped by SGG; ``kw`` are an alias's SGG arguments."""
  return with_sgg(base, moment=moment, mask=kw.pop('sgg_mask'),
                  eps=kw.pop('sgg_eps'), **kw)


def _chain(part: SGGTransformation, *rest: optax.GradientTransformation
           ) -> SGGTransformation:
  """``optax.chain(part, *rest)``, with ``part``'s refresh (which finds its
  state inside the chain's)."""
  return with_refresh(optax.chain(part, *rest), part.refresh)


def adamw_sgg(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: MaskOrFn = None,
    *,
    cluster_momentum: bool = True,
    num_clusters: int = 3,
    recluster_interval: int = 500,
    beta3: float = 0.99,
    sgg_mask: MaskOrFn = None,
    stacked_layers: MaskOrFn = None,
    cluster_stat: str | None = None,
    global_stat: str = 'layer_mean',
    scale_rule: str = 'mda',
    clamp: tuple[float, float] = (0.1, 10.0),
    clamp_order: str | None = None,
    sgg_eps: float = 1e-8,
    kmeans_iters: int | None = None,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float = 0.95,
    reference_init: str = 'ones',
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW with SGG scaling of its adaptive step.

  ``chain(scale_by_adam, sgg, add_decayed_weights, scale_by_learning_rate)``
  (SGG wraps Adam, see :func:`~sgg_optax.with_sgg`): the decoupled weight
  decay is added after SGG, so it is not scaled by cluster. The leading
  arguments are those of :func:`optax.adamw`, in its order.

  Args:
    learning_rate: a scalar or schedule.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon outside the square root.
    eps_root: Adam's epsilon inside the square root.
    mu_dtype: dtype of Adam's first moment.
    weight_decay: decoupled weight decay.
    mask: mask of the weight decay, as in :func:`optax.adamw`.
    cluster_momentum: cluster Adam's first moment (the paper) instead of its
      update (the statistic of :func:`~sgg_optax.sgg`).{sgg_args}

  Returns:
    The optimizer, an :class:`SGGTransformation`: its ``refresh`` runs SGG's
    refresh on the optimizer state alone (see :func:`with_sgg`; it needs
    the momentum, so not with ``cluster_momentum=False``).

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.adamw_sgg(1e-3, recluster_interval=100, sgg_eps=1e-6)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})
    >>> print(sgg_optax.cluster_summary(state).scales)
    [[1. 1. 1.]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  sgg = _sgg_args(locals())
  base = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype)
  return _chain(
      _with_sgg(base, 'mu' if cluster_momentum else None, **sgg),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def lamb_sgg(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    *,
    cluster_momentum: bool = True,
    num_clusters: int = 3,
    recluster_interval: int = 500,
    beta3: float = 0.99,
    sgg_mask: MaskOrFn = None,
    stacked_layers: MaskOrFn = None,
    cluster_stat: str | None = None,
    global_stat: str = 'layer_mean',
    scale_rule: str = 'mda',
    clamp: tuple[float, float] = (0.1, 10.0),
    clamp_order: str | None = None,
    sgg_eps: float = 1e-8,
    kmeans_iters: int | None = None,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float = 0.95,
    reference_init: str = 'ones',
) -> optax.GradientTransformationExtraArgs:
  r"""LAMB with SGG scaling of the Adam direction before the trust ratio.

  ``chain(scale_by_adam, sgg, add_decayed_weights, scale_by_trust_ratio,
  scale_by_learning_rate)``, the order of the reference code. The layer-wise
  trust ratio cancels any uniform per-layer factor, so only the ratios
  between a layer's clusters change the step. The leading arguments are
  those of :func:`optax.lamb`, in its order.

  Args:
    learning_rate: a scalar or schedule.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: epsilon outside the square root.
    eps_root: epsilon inside the square root.
    weight_decay: weight decay, added before the trust ratio as in
      :func:`optax.lamb`.
    mask: mask of the weight decay.
    cluster_momentum: cluster the first moment (the paper) instead of the
      update.{sgg_args}

  Returns:
    The optimizer, an :class:`SGGTransformation`: its ``refresh`` runs SGG's
    refresh on the optimizer state alone (see :func:`with_sgg`; it needs
    the momentum, so not with ``cluster_momentum=False``).

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.lamb_sgg(1e-3, num_clusters=2)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})
    >>> print(sgg_optax.cluster_summary(state).scales)
    [[1. 1.]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  sgg = _sgg_args(locals())
  base = optax.scale_by_adam(b1, b2, eps, eps_root)
  return _chain(
      _with_sgg(base, 'mu' if cluster_momentum else None, **sgg),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_trust_ratio(),
      optax.scale_by_learning_rate(learning_rate))


def adafactor_sgg(
    learning_rate: optax.ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
    *,
    num_clusters: int = 3,
    recluster_interval: int = 500,
    beta3: float = 0.99,
    sgg_mask: MaskOrFn = None,
    stacked_layers: MaskOrFn = None,
    cluster_stat: str | None = None,
    global_stat: str = 'layer_mean',
    scale_rule: str = 'mda',
    clamp: tuple[float, float] = (0.1, 10.0),
    clamp_order: str | None = None,
    sgg_eps: float = 1e-8,
    kmeans_iters: int | None = None,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float = 0.95,
    reference_init: str = 'ones',
) -> optax.GradientTransformationExtraArgs:
  r"""Adafactor with SGG scaling its (clipped) factored step.

  :func:`optax.adafactor` with SGG inserted after the block-RMS clipping and
  before the learning rate, so SGG scales the adaptive step and the
  optimizer keeps Adafactor's sub-linear memory (SGG adds one byte per
  grouped element). Adafactor has no first moment before its optional
  momentum, so SGG clusters the update here. The leading arguments are
  those of :func:`optax.adafactor`, in its order.

  Args:
    learning_rate: a scalar or schedule (None: apply it elsewhere).
    min_dim_size_to_factor: see :func:`optax.adafactor`.
    decay_rate: see :func:`optax.adafactor`.
    decay_offset: see :func:`optax.adafactor`.
    multiply_by_parameter_scale: see :func:`optax.adafactor`.
    clipping_threshold: see :func:`optax.adafactor`.
    momentum: see :func:`optax.adafactor`.
    dtype_momentum: see :func:`optax.adafactor`.
    weight_decay_rate: see :func:`optax.adafactor`.
    eps: see :func:`optax.adafactor`.
    factored: see :func:`optax.adafactor`.
    weight_decay_mask: see :func:`optax.adafactor`.{sgg_args}

  Returns:
    The optimizer, an :class:`SGGTransformation` (Adafactor keeps no first
    moment, so SGG clusters the update and ``refresh`` refuses: refresh in
    the step, ``sgg_refresh=True``).

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.adafactor_sgg(1e-2)
    >>> state = opt.init({'w': jnp.zeros((256, 256))})
    >>> print(sgg_optax.cluster_summary(state).names)
    ('w',)

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  sgg = _sgg_args(locals())
  base = [optax.scale_by_factored_rms(factored, decay_rate, decay_offset,
                                      min_dim_size_to_factor, eps)]
  if clipping_threshold is not None:
    base.append(optax.clip_by_block_rms(clipping_threshold))
  part = _with_sgg(optax.chain(*base), None, **sgg)
  tx: list[optax.GradientTransformation] = [part]
  if learning_rate is not None:
    tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    tx.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    tx.append(optax.ema(momentum, debias=False,
                        accumulator_dtype=dtype_momentum))
  if weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(weight_decay_rate, weight_decay_mask))
  tx.append(optax.scale(-1))
  return _chain(part, *tx[1:])


for _alias in (adamw_sgg, lamb_sgg, adafactor_sgg):
  _alias.__doc__ = (_alias.__doc__ or '').replace('{sgg_args}',
                                                  _SGG_ARGS_DOC)
