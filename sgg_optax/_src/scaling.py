"""SGG's per-cluster scaling: the paper's MDA rule and the reference rule."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sgg_optax._src import kmeans, quantiles

SCALE_RULES = ('mda', 'reference')
GLOBAL_STATS = ('layer_mean', 'global_mean', 'cluster_mdas')


class Scales(NamedTuple):
  """Result of a scaling rule on the ``(G, S)`` sample.

  Attributes:
    scales: ``(G, K)`` new scaling factors.
    cluster_stats: ``(G, K)`` the per-cluster statistic the rule keeps
      (the MDA ``D_{l,c}``, or the EMA of cluster means for the reference
      rule).
    global_stat: the model-wide deviation ``D`` (0 for the reference rule,
      which has none).
  """
  scales: jax.Array
  cluster_stats: jax.Array
  global_stat: jax.Array


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over the last axis where ``mask`` (NaN for an empty row)."""
  n = jnp.sum(mask, axis=-1)
  return jnp.where(n > 0, jnp.sum(jnp.where(mask, x, 0.0), -1) / n, jnp.nan)


def _clamp_and_ema(raw, old, beta3, clamp, clamp_before):
  lo, hi = clamp
  if clamp_before:
    raw = jnp.clip(raw, lo, hi)
  new = beta3 * old + (1.0 - beta3) * raw
  return new if clamp_before else jnp.clip(new, lo, hi)


def mda_rule(x: jax.Array, valid: jax.Array, weights: jax.Array,
             ids: jax.Array, old_scales: jax.Array, old_mdas: jax.Array, *,
             beta3, clamp,
             clamp_before: bool, eps, global_stat: str) -> Scales:
  r"""The paper's rule: median deviation to the layer average (MDA).

  For layer :math:`l`, cluster :math:`c` and the clustered statistic
  :math:`m` (Li et al., 2025, Eqs. 5-7):

  .. math::
    D_{l,c} = \operatorname*{median}_{i \in c} |m_i - \bar m_l|, \qquad
    S_{l,c} \leftarrow \beta_3 S_{l,c}
      + (1 - \beta_3)\, \mathrm{clip}\Big(\frac{D}{D_{l,c} + \epsilon},
      0.1, 10\Big),

  where the model-wide deviation :math:`D` is, by ``global_stat``:

  * ``'layer_mean'`` (G1, default): the median over every grouped element of
    the model of :math:`|m_i - \bar m_{l(i)}|`;
  * ``'global_mean'`` (G2): the median of :math:`|m_i - \bar m|` with the
    model-wide mean;
  * ``'cluster_mdas'`` (G3): the median of the :math:`D_{l,c}`.

  A cluster with no members, or whose deviation is zero (a constant
  cluster: frozen layers, single elements), carries no information and keeps
  its previous scale (and its previous :math:`D_{l,c}`).

  Args:
    x: ``(G, S)`` sampled signed statistic (zero where not valid).
    valid: ``(G, S)`` mask of usable samples.
    weights: ``(G, S)`` elements each sample stands for.
    ids: ``(G, S)`` cluster ids of the samples.
    old_scales: ``(G, K)`` current scales.
    old_mdas: ``(G, K)`` the previous :math:`D_{l,c}`.
    beta3: scale EMA decay.
    clamp: ``(low, high)`` bounds of the factor.
    clamp_before: clamp the raw ratio before the EMA (paper text) or the
      scale after it.
    eps: added to :math:`D_{l,c}`.
    global_stat: one of :data:`GLOBAL_STATS`.

  Returns:
    :class:`Scales`.
  """
  num_clusters = old_scales.shape[-1]
  mean = _masked_mean(x, valid)
  dev = jnp.abs(x - mean[:, None])
  mda = quantiles.cluster_medians(dev, ids, valid, num_clusters)
  informative = jnp.isfinite(mda) & (mda > 0)
  w = jnp.where(valid, weights, 0.0)
  if global_stat == 'layer_mean':
    glob = quantiles.median(dev.reshape(1, -1), w.reshape(1, -1))[0]
  elif global_stat == 'global_mean':
    mu = jnp.sum(w * x) / jnp.sum(w)
    glob = quantiles.median(jnp.abs(x - mu).reshape(1, -1),
                            w.reshape(1, -1))[0]
  else:
    glob = quantiles.median(jnp.where(informative, mda, 0.0).reshape(1, -1),
                            informative.reshape(1, -1).astype(jnp.float32))[0]
  new = _clamp_and_ema(glob / (mda + eps), old_scales, beta3, clamp,
                       clamp_before)
  return Scales(jnp.where(informative, new, old_scales),
                jnp.where(informative, mda, old_mdas), glob)


def reference_rule(x: jax.Array, valid: jax.Array, ids: jax.Array,
                   old_scales: jax.Array, old_means: jax.Array,
                   first: jax.Array, *, beta3, cluster_decay, clamp,
                   clamp_before: bool, eps, ema_init: str) -> Scales:
  r"""The rule of the public reference code (cluster means against the layer).

  With :math:`a = |m|`, a layer mean :math:`\bar a_l` and cluster means
  :math:`\bar a_{l,c}` (an empty cluster takes the layer mean):

  .. math::
    E_{l,c} \leftarrow \delta E_{l,c} + (1 - \delta) \bar a_{l,c}, \qquad
    S_{l,c} \leftarrow \mathrm{clip}\Big(\beta_3 S_{l,c}
      + (1 - \beta_3) \frac{\bar a_l}{E_{l,c} + \epsilon}, 0.1, 10\Big).

  The reference code starts :math:`E` at 1 (``ema_init='ones'``), which for
  small statistics drives every scale down uniformly until the clamp;
  ``ema_init='first'`` starts it at the first observed cluster means.

  Args:
    x: ``(G, S)`` sampled statistic (zero where not valid).
    valid: ``(G, S)`` mask of usable samples.
    ids: ``(G, S)`` cluster ids of the samples.
    old_scales: ``(G, K)`` current scales.
    old_means: ``(G, K)`` current EMA of the cluster means.
    first: ``(G,)`` whether this is the layer's first refresh.
    beta3: scale EMA decay.
    cluster_decay: decay :math:`\delta` of the cluster-mean EMA.
    clamp: ``(low, high)`` bounds.
    clamp_before: clamp the raw ratio before the EMA instead of after.
    eps: added to the EMA in the denominator.
    ema_init: ``'ones'`` (as the reference code) or ``'first'``.

  Returns:
    :class:`Scales`.
  """
  num_clusters = old_scales.shape[-1]
  a = jnp.abs(x)
  layer = _masked_mean(a, valid)
  member = kmeans.members(ids, valid, num_clusters)
  means = _masked_mean(jnp.broadcast_to(a[:, None, :], member.shape), member)
  means = jnp.where(jnp.isnan(means), layer[:, None], means)
  start = jnp.ones_like(means) if ema_init == 'ones' else means
  prev = jnp.where(first[:, None], start, old_means)
  ema = cluster_decay * prev + (1.0 - cluster_decay) * means
  new = _clamp_and_ema(layer[:, None] / (ema + eps), old_scales, beta3,
                       clamp, clamp_before)
  return Scales(new, ema, jnp.zeros((), jnp.float32))
