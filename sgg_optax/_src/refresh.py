"""The refresh: K-means of each layer's sample and the new scales."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sgg_optax._src import kmeans, sampling, scaling
from sgg_optax._src.config import Config
from sgg_optax._src.state import SGGState


class Refreshed(NamedTuple):
  """SGG's ``(G, ...)`` per-layer statistics after a (possibly skipped)
  refresh."""
  centres: jax.Array
  scales: jax.Array
  cluster_stats: jax.Array
  fractions: jax.Array
  refreshes: jax.Array
  global_stat: jax.Array


def refreshed(x: jax.Array, lays, state: SGGState, cfg: Config
             ) -> Refreshed:
  """K-means and new scales from the ``(G, S)`` sample of the statistic."""
  k, f32 = cfg.num_clusters, lambda v: jnp.asarray(v, jnp.float32)
  centres0, scales0, cstats0, fractions0, refreshes0 = (
      state.centres, state.scales, state.cluster_stats, state.fractions,
      state.refreshes)
  weights = sampling.sample_weights(lays, cfg.sample_size)
  finite = jnp.all(jnp.isfinite(x) | (weights == 0), axis=-1)
  valid = (weights > 0) & finite[:, None]
  x = jnp.where(valid, x, 0.0)
  feat = jnp.abs(x) if cfg.cluster_stat == 'abs' else x
  first = refreshes0 == 0
  # The sample's rows are padded to ``sample_size``; K-means needs only the
  # longest row's entries.
  used = max(lay.count for lay in lays)
  centres = kmeans.kmeans_1d(feat[:, :used], valid[:, :used], k)
  ids = kmeans.assign_rows(feat, centres)
  counts = kmeans.cluster_counts(ids, valid, k)
  fractions = counts / jnp.maximum(jnp.sum(counts, -1, keepdims=True), 1.0)
  common: dict[str, Any] = dict(
      beta3=f32(cfg.beta3), clamp=(f32(cfg.clamp[0]), f32(cfg.clamp[1])),
      clamp_before=cfg.clamp_before, eps=f32(cfg.eps))
  if cfg.scale_rule == 'mda':
    new = scaling.mda_rule(x, valid, weights, ids, scales0, cstats0,
                           global_stat=cfg.global_stat, **common)
    global_ok = jnp.isfinite(new.global_stat) & (new.global_stat > 0)
  else:
    new = scaling.reference_rule(
        x, valid, ids, scales0, cstats0, first,
        cluster_decay=f32(cfg.cluster_decay), ema_init=cfg.reference_init,
        **common)
    global_ok = jnp.bool_(True)
  ok = (finite & jnp.any(valid, -1) & global_ok
        & jnp.all(jnp.isfinite(centres), -1)
        & jnp.all(jnp.isfinite(new.scales), -1))
  pick = lambda a, b: jnp.where(ok[:, None], a, b)
  stacked = (pick(centres, centres0), pick(new.scales, scales0),
             pick(new.cluster_stats, cstats0), pick(fractions, fractions0),
             refreshes0 + ok)
  c, s, cs, fr, rf = materialised(stacked, jnp.all(refreshes0 >= 0))
  glob = jnp.where(global_ok, new.global_stat, state.global_stat)
  return Refreshed(c, s, cs, fr, rf, glob.astype(jnp.float32))


def materialised(tree: Any, true: jax.Array) -> Any:
  """``tree``, computed into buffers before anything reads it.

  Every parameter's scaling reads its rows of the refreshed ``(G, K)``
  statistics. Left to itself, XLA fuses the refresh's tail (medians, clamp,
  EMA) into each of those reads (``optimization_barrier`` does not stop it
  on CPU), so every parameter's kernel would recompute it and differ from
  the others. A ``lax.cond`` on a predicate that is always true but unknown
  to the compiler (``true``) returns its results in buffers. Only refresh
  steps hold it.
  """
  return jax.lax.cond(true, lambda: tree,
                      lambda: jax.tree.map(jnp.zeros_like, tree))


def replicated(new: Refreshed) -> Refreshed:
  """``new``, replicated on the current mesh, as in the state's shardings.

  Under auto axes XLA picks these shardings itself. With layers stacked on a
  sharded axis it sharded the refresh's ``(L, K)`` results like that axis,
  so the state changed sharding after a refresh, or gathered them after the
  ``lax.cond`` on every step. Applied to the refresh's results and to the
  cond's, this keeps them replicated and the gathers inside the refresh.
  Explicit axes type them replicated already.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.explicit_axes:
    return new
  return jax.lax.with_sharding_constraint(new, jax.sharding.PartitionSpec())


def kept(state: SGGState) -> Refreshed:
  return Refreshed(state.centres, state.scales, state.cluster_stats,
                    state.fractions, state.refreshes, state.global_stat)
