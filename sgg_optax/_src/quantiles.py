"""Exact order statistics without sorting: bisection by counting.

SGG's refresh needs medians and quantiles of the refresh sample. XLA's sort
is slow on CPU and does not shard, so they are found by bisection over the
float32 values' order-preserving integer keys: each of 32 rounds compares
every value with one candidate per row (per cluster) and sums the weights
below it, a fused elementwise pass and a row reduction (under sharding, a
small all-reduce). After 32 rounds the candidate is an element of the row, so
the result is exact, not an approximation of the value.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

_ROUNDS = 32  # the keys span at most 2**32 values
_FLIP = 0x7FFFFFFF


def key(x: jax.Array) -> jax.Array:
  """int32 keys with the order of the float32 values."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(_FLIP))


def value(key: jax.Array) -> jax.Array:
  bits = jnp.where(key >= 0, key, key ^ jnp.int32(_FLIP))
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _bisect(key: jax.Array, live: jax.Array,
            weight_below: Callable[[jax.Array], jax.Array],
            target: jax.Array, strict: jax.Array | bool) -> jax.Array:
  """Smallest key per ``(row, column)`` whose weight below reaches target.

  Args:
    key: ``(R, S)`` int32 keys.
    live: ``(R, S)`` entries that can be the answer.
    weight_below: maps candidate keys ``(R, C)`` to the weight of the entries
      at or below them, ``(R, C)``.
    target: ``(R, C)`` weights to reach.
    strict: exceed the target instead of reaching it (per column, or all).

  Returns:
    ``(R, C)`` float32 values, NaN where the target is never reached.
  """
  big = jnp.iinfo(jnp.int32)
  lo = jnp.min(jnp.where(live, key, big.max), -1, keepdims=True) - 1
  hi = jnp.max(jnp.where(live, key, big.min), -1, keepdims=True)
  lo = jnp.broadcast_to(lo, target.shape)
  hi = jnp.broadcast_to(hi, target.shape)

  def reaches(mid):
    below = weight_below(mid)
    return jnp.where(strict, below > target, below >= target)

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor mean, no overflow
    ok = reaches(mid)
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, _ROUNDS, step, (lo, hi))
  found = jnp.any(live, -1, keepdims=True) & reaches(hi)
  return jnp.where(found, value(hi), jnp.nan)


def quantiles(x: jax.Array, weights: jax.Array, target: jax.Array,
              strict: jax.Array | bool = False) -> jax.Array:
  r"""Order statistics of each row: smallest values reaching the targets.

  .. math::
    q_{r,c} = \min \{v \in x_r : \textstyle\sum_{x_{r,i} \le v} w_{r,i}
      \ge t_{r,c}\}

  (``>`` with ``strict``). With unit weights and ``t = k`` this is the
  ``k``-th smallest value of the row.

  Args:
    x: ``(R, S)`` finite values.
    weights: ``(R, S)`` non-negative weights (0 excludes a value).
    target: ``(R, C)`` cumulative weights to reach.
    strict: require the cumulative weight to exceed the target (per column,
      or for all).

  Returns:
    ``(R, C)`` float32 values; NaN where no value reaches the target.
  """
  keys = key(x)

  def weight_below(mid):
    return jnp.sum(jnp.where(keys[:, None, :] <= mid[:, :, None],
                             weights[:, None, :], 0.0), -1)

  return _bisect(keys, weights > 0, weight_below,
                 jnp.asarray(target, jnp.float32), strict)


def median(x: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted median of each row of ``(R, S)`` values (NaN if no weight).

  With equal weights it equals ``np.median``: the two middle values are
  averaged when the cumulative weight hits one half exactly.
  """
  half = 0.5 * jnp.sum(weights, -1, keepdims=True)
  lower, upper = jnp.moveaxis(quantiles(
      x, weights, jnp.concatenate([half, half], -1),
      jnp.array([False, True])), -1, 0)
  return 0.5 * (lower + jnp.where(jnp.isnan(upper), lower, upper))


def cluster_medians(x: jax.Array, ids: jax.Array, valid: jax.Array,
                    num_clusters: int) -> jax.Array:
  """Median of each row of ``x`` within each cluster (NaN when empty).

  Args:
    x: ``(G, S)`` values.
    ids: ``(G, S)`` cluster ids in ``[0, num_clusters)``.
    valid: ``(G, S)`` mask of the entries to use.
    num_clusters: ``K``.

  Returns:
    ``(G, K)`` exact medians, as ``np.median`` of each cluster's values.
  """
  keys = key(x)
  # columns: the K lower middles, then the K upper middles
  column = jnp.tile(jnp.arange(num_clusters, dtype=ids.dtype), 2)
  count = jnp.sum((ids[:, None, :] == column[None, :num_clusters, None])
                  & valid[:, None, :], -1, dtype=jnp.float32)

  def weight_below(mid):
    member = (ids[:, None, :] == column[None, :, None]) & valid[:, None, :]
    return jnp.sum(member & (keys[:, None, :] <= mid[..., None]), -1,
                   dtype=jnp.float32)

  target = jnp.concatenate([jnp.floor((count + 1) / 2), jnp.floor(count / 2)],
                           -1)
  strict = jnp.arange(2 * num_clusters) >= num_clusters
  both = _bisect(keys, valid, weight_below, target, strict)
  lower, upper = both[:, :num_clusters], both[:, num_clusters:]
  return jnp.where(count > 0, 0.5 * (lower + upper), jnp.nan)
