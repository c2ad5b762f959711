"""SGG on the other bases: CAME's first moment, APOLLO's update."""

from typing import Any

import optax

from sgg_optax._src import aliases, apollo, came
from sgg_optax._src.config import MaskOrFn
from sgg_optax._src.state import SGGTransformation


def came_sgg(
    learning_rate: optax.ScalarOrSchedule,
    eps: tuple[float, float] = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Any = None,
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
    kmeans_iters: int = 10,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float = 0.95,
    reference_init: str = 'ones',
) -> SGGTransformation:
  r"""CAME with SGG scaling its update, as in the paper's C4 table.

  ``chain(with_sgg(scale_by_came), add_decayed_weights,
  scale_by_learning_rate)``: SGG groups CAME's first moment :math:`m_t`
  (parameter-shaped, like Adam's) and scales CAME's finished update by
  cluster; the decoupled weight decay is added after SGG, so it is not
  scaled. With ``cluster_momentum=False`` SGG clusters the update instead
  (the chain form, :func:`~sgg_optax.sgg`). The leading arguments are those
  of :func:`came`, in its order. SGG's ``beta3`` (its scale EMA) is not
  CAME's :math:`\beta_3`, the third entry of ``betas``.

  Args:
    learning_rate: a scalar or schedule.
    eps: see :func:`scale_by_came`.
    clip_threshold: see :func:`scale_by_came`.
    betas: see :func:`scale_by_came`.
    weight_decay: decoupled weight decay.
    mask: mask of the weight decay.
    mu_dtype: see :func:`scale_by_came`.
    cluster_momentum: cluster CAME's first moment (the paper) instead of its
      update.{sgg_args}

  Returns:
    The optimizer, an :class:`~sgg_optax.SGGTransformation`: its ``refresh``
    runs SGG's refresh on the optimizer state alone (see
    :func:`~sgg_optax.with_sgg`; it needs the momentum, so not with
    ``cluster_momentum=False``).

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.came_sgg(1e-3, num_clusters=2)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})
    >>> print(sgg_optax.cluster_summary(state).scales)
    [[1. 1.]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.

    Luo et al., `CAME: Confidence-guided Adaptive Memory Efficient
    Optimization <https://arxiv.org/abs/2307.02047>`_, ACL 2023.
  """
  sgg = aliases._sgg_args(locals())  # noqa: SLF001
  base = came.scale_by_came(betas, eps, clip_threshold, mu_dtype)
  return aliases._chain(  # noqa: SLF001
      aliases._with_sgg(  # noqa: SLF001
          base, 'mu' if cluster_momentum else None, **sgg),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def apollo_sgg(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 256,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj: str = 'random',
    scale_type: str = 'channel',
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    *,
    correct_bias: bool = True,
    scale_front: bool = False,
    disable_nl: bool = False,
    projected: MaskOrFn = None,
    seed: int = 0,
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
    kmeans_iters: int = 10,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float = 0.95,
    reference_init: str = 'ones',
) -> SGGTransformation:
  r"""APOLLO with SGG scaling its finished update (the chain form).

  :func:`apollo` with SGG between :func:`scale_by_apollo` and the learning
  rate. APOLLO's moments live in the projected space, ``(m, r)`` or
  ``(r, n)``, not parameter-shaped, so there is no momentum of the
  parameter's shape to cluster: SGG clusters APOLLO's update (channel-scaled
  gradient, after the limiter), as :func:`~sgg_optax.sgg` does in a chain,
  and scales it by cluster. The weight decay is not scaled.

  Args:{args}{sgg_args}

  Returns:
    The optimizer, an :class:`~sgg_optax.SGGTransformation` (SGG clusters
    the update, which no state holds, so ``refresh`` refuses: refresh in the
    step, ``sgg_refresh=True``).

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.apollo_sgg(1e-2, rank=2, num_clusters=2)
    >>> state = opt.init({'w': jnp.zeros((8, 8))})
    >>> print(sgg_optax.cluster_summary(state).scales)
    [[1. 1.]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.

    Zhu et al., `APOLLO: SGD-like Memory, AdamW-level Performance
    <https://arxiv.org/abs/2412.05270>`_, MLSys 2025.
  """
  sgg = aliases._sgg_args(locals())  # noqa: SLF001
  base = apollo._scale_by_apollo(  # noqa: SLF001
      rank, update_proj_gap, scale, proj, scale_type,
                          betas, eps, correct_bias, scale_front, disable_nl,
                          projected, seed, None)
  return aliases._chain(  # noqa: SLF001
      aliases._with_sgg(base, None, **sgg),  # noqa: SLF001
      *apollo.alias_tail(learning_rate, weight_decay, mask))


came_sgg.__doc__ = (came_sgg.__doc__ or '').replace(
    '{sgg_args}', aliases._SGG_ARGS_DOC)  # noqa: SLF001
apollo_sgg.__doc__ = (apollo_sgg.__doc__ or '').replace(
    '{args}', apollo.ALIAS_DOC).replace(
        '{sgg_args}', aliases._SGG_ARGS_DOC)  # noqa: SLF001
