"""Fixed-iteration one-dimensional K-means, batched over layers."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sgg_optax._src import quantiles


def thresholds(centres: jax.Array) -> jax.Array:
  r"""Decision boundaries of sorted 1-D centres.

  In one dimension the nearest-centre rule cuts the line into intervals, so
  assigning a value to its cluster is counting the boundaries below it:

  .. math::
    t_k = \tfrac12 (c_k + c_{k+1}), \qquad
    \mathrm{id}(x) = \#\{k : x > t_k\}.

  Ties go to the lower cluster, like ``argmin`` over distances.

  Args:
    centres: ``(..., K)`` centres sorted along the last axis.

  Returns:
    ``(..., K - 1)`` boundaries.
  """
  return 0.5 * (centres[..., :-1] + centres[..., 1:])


UNROLL = 8  # up to this many clusters, per-cluster work is unrolled


def assign(x: jax.Array, bounds: Sequence[jax.Array]) -> jax.Array:
  """Cluster ids of ``x`` given boundaries, as ``uint8``.

  Elementwise (it fuses into the surrounding update and needs no
  communication under sharding).

  Args:
    x: values, any shape.
    bounds: the ``K - 1`` boundaries, each broadcastable against ``x``.

  Returns:
    ``uint8`` ids in ``[0, K)`` with the shape of ``x``.
  """
  if len(bounds) >= UNROLL:
    stacked = jnp.stack(jnp.broadcast_arrays(*bounds), -1)
    return jnp.sum(x[..., None] > stacked, -1, dtype=jnp.uint8)
  ids = jnp.zeros_like(x, jnp.uint8)  # with x's sharding
  for bound in bounds:
    ids = ids + (x > bound).astype(jnp.uint8)
  return ids


def members(ids: jax.Array, valid: jax.Array, num_clusters: int
            ) -> jax.Array:
  """``(G, K, S)`` membership mask of ``(G, S)`` ids (lazily fused)."""
  ks = jnp.arange(num_clusters, dtype=ids.dtype)[None, :, None]
  return (ids[:, None, :] == ks) & valid[:, None, :]


def assign_rows(x: jax.Array, centres: jax.Array) -> jax.Array:
  """Ids of ``x`` of shape ``(G, S)`` given per-row centres ``(G, K)``."""
  bounds = thresholds(centres)
  return assign(x, [bounds[:, k, None] for k in range(bounds.shape[-1])])


def cluster_counts(ids: jax.Array, valid: jax.Array, num_clusters: int
                   ) -> jax.Array:
  """``(G, K)`` number of valid entries of each row in each cluster."""
  return jnp.sum(members(ids, valid, num_clusters), -1, dtype=jnp.float32)


def quantile_init(x: jax.Array, valid: jax.Array, num_clusters: int
                  ) -> jax.Array:
  r"""Deterministic initial centres: the ``(k + 1/2) / K`` quantiles.

  Centre ``k`` is the ``(floor(n (k + 1/2) / K) + 1)``-th smallest of a row's
  ``n`` valid values (found without sorting, see :mod:`quantiles`).

  Args:
    x: ``(G, S)`` values (a per-layer sample, small and replicated).
    valid: ``(G, S)`` mask of the entries to use.
    num_clusters: ``K``.

  Returns:
    ``(G, K)`` sorted centres (NaN for rows without valid entries).
  """
  n = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.float32)
  q = (jnp.arange(num_clusters) + 0.5) / num_clusters
  return quantiles.quantiles(x, valid.astype(jnp.float32),
                             jnp.floor(q * n) + 1.0)


def kmeans_1d(x: jax.Array, valid: jax.Array, centres: jax.Array,
              num_iters: int) -> jax.Array:
  r"""Lloyd's algorithm on rows of scalars, a fixed number of iterations.

  Each row (one layer) is clustered on its own; all rows run together. One
  iteration assigns every value to its nearest centre and moves each centre
  to the mean of its members:

  .. math::
    c_k \leftarrow \frac{\sum_i [\mathrm{id}(x_i) = k]\, x_i}
                       {\sum_i [\mathrm{id}(x_i) = k]}.

  The sums are one-hot reductions, so the code is jittable with a static trip
  count and runs the same sharded or not. A centre that loses all its members
  keeps its previous value (the empty-cluster guard), and centres are kept
  sorted so that cluster ``k`` always means "the k-th smallest", which keeps
  the meaning of an id, and of the scale stored for it, stable across
  refreshes.

  Args:
    x: ``(G, S)`` finite values.
    valid: ``(G, S)`` mask of the entries to use.
    centres: ``(G, K)`` sorted starting centres (a warm start from the
      previous refresh, or :func:`quantile_init`).
    num_iters: number of Lloyd iterations (static).

  Returns:
    ``(G, K)`` sorted centres.
  """
  num_clusters = centres.shape[-1]

  def step(_, c):
    ids = assign_rows(x, c)
    member = members(ids, valid, num_clusters)
    counts = jnp.sum(member, -1, dtype=jnp.float32)
    sums = jnp.sum(jnp.where(member, x[:, None, :], 0.0), -1)
    moved = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c)
    return jnp.sort(moved, axis=-1)

  return jax.lax.fori_loop(0, num_iters, step, centres)
