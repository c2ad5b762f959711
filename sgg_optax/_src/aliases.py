"""Ready-made optimizers with SGG, built with :func:`optax.chain`."""

from typing import Any

import jax.numpy as jnp
import optax

from sgg_optax._src.transform import MaskOrFn, with_sgg


def _scaled(base: optax.GradientTransformation, cluster_momentum: bool,
            sgg_kwargs: dict[str, Any]) -> optax.GradientTransformation:
  """``base`` wrapped by SGG, clustering its first moment or its update."""
  return with_sgg(base, moment='mu' if cluster_momentum else None,
                  **sgg_kwargs)


def adamw_sgg(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    *,
    num_clusters: int = 3,
    recluster_interval: int = 500,
    beta3: float = 0.99,
    cluster_momentum: bool = True,
    mu_dtype: Any = None,
    weight_decay_mask: MaskOrFn = None,
    **sgg_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW with SGG scaling of its adaptive step.

  ``chain(scale_by_adam, sgg, add_decayed_weights, scale_by_learning_rate)``
  (SGG wraps Adam, see :func:`with_sgg`): the decoupled weight decay is added
  after SGG, so it is not scaled by cluster.

  Args:
    learning_rate: a scalar or schedule.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon outside the square root.
    eps_root: Adam's epsilon inside the square root.
    weight_decay: decoupled weight decay.
    num_clusters: SGG's ``K``.
    recluster_interval: SGG's ``T``.
    beta3: SGG's scale EMA decay.
    cluster_momentum: cluster Adam's first moment (the paper, and the
      fastest form, see :func:`with_sgg`) instead of its update (the
      statistic of :func:`sgg`).
    mu_dtype: dtype of Adam's first moment.
    weight_decay_mask: mask of the weight decay, as in
      :func:`optax.adamw`.
    **sgg_kwargs: further options of :func:`sgg` (``mask``,
      ``scale_rule``, ...).

  Returns:
    The optimizer.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.adamw_sgg(1e-3, recluster_interval=100)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  base = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype)
  kwargs = dict(num_clusters=num_clusters,
                recluster_interval=recluster_interval, beta3=beta3,
                **sgg_kwargs)
  return optax.chain(
      _scaled(base, cluster_momentum, kwargs),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate))


def lamb_sgg(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    *,
    num_clusters: int = 3,
    recluster_interval: int = 500,
    beta3: float = 0.99,
    cluster_momentum: bool = True,
    weight_decay_mask: MaskOrFn = None,
    **sgg_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""LAMB with SGG scaling of the Adam direction before the trust ratio.

  ``chain(scale_by_adam, sgg, add_decayed_weights, scale_by_trust_ratio,
  scale_by_learning_rate)``, the order of the reference code. The layer-wise
  trust ratio cancels any uniform per-layer factor, so only the ratios
  between a layer's clusters change the step.

  Args:
    learning_rate: a scalar or schedule.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: epsilon outside the square root.
    eps_root: epsilon inside the square root.
    weight_decay: weight decay, added before the trust ratio as in
      :func:`optax.lamb`.
    num_clusters: SGG's ``K``.
    recluster_interval: SGG's ``T``.
    beta3: SGG's scale EMA decay.
    cluster_momentum: cluster the first moment (the paper, and the fastest
      form) instead of the update.
    weight_decay_mask: mask of the weight decay.
    **sgg_kwargs: further options of :func:`sgg`.

  Returns:
    The optimizer.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.lamb_sgg(1e-3, num_clusters=2)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  base = optax.scale_by_adam(b1, b2, eps, eps_root)
  kwargs = dict(num_clusters=num_clusters,
                recluster_interval=recluster_interval, beta3=beta3,
                **sgg_kwargs)
  return optax.chain(
      _scaled(base, cluster_momentum, kwargs),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
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
    **sgg_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""Adafactor with SGG scaling its (clipped) factored step.

  :func:`optax.adafactor` with :func:`sgg` inserted after the block-RMS
  clipping and before the learning rate, so SGG scales the adaptive step
  and the optimizer keeps Adafactor's sub-linear memory (SGG adds one byte
  per grouped element). Adafactor has no first moment before its optional
  momentum, so SGG clusters the update here.

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
    weight_decay_mask: see :func:`optax.adafactor`.
    num_clusters: SGG's ``K``.
    recluster_interval: SGG's ``T``.
    beta3: SGG's scale EMA decay.
    **sgg_kwargs: further options of :func:`sgg`.

  Returns:
    The optimizer.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.adafactor_sgg(1e-2)
    >>> state = opt.init({'w': jnp.zeros((256, 256))})

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  base = [optax.scale_by_factored_rms(factored, decay_rate, decay_offset,
                                      min_dim_size_to_factor, eps)]
  if clipping_threshold is not None:
    base.append(optax.clip_by_block_rms(clipping_threshold))
  tx = [with_sgg(optax.chain(*base), num_clusters, recluster_interval, beta3,
                 moment=None, **sgg_kwargs)]
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
  return optax.chain(*tx)
