r"""Exact one-dimensional K-means, batched over layers.

In one dimension the optimal K-means clusters are contiguous runs of the
sorted values, so dynamic programming finds them exactly (Wang & Song,
2011): with :math:`D_k(i)` the least within-cluster sum of squares of the
``i`` smallest values in ``k + 1`` clusters and :math:`C(j, i)` that of the
run ``j .. i - 1`` alone,

.. math::
  D_0(i) = C(0, i), \qquad
  D_k(i) = \min_{0 \le j \le i} D_{k-1}(j) + C(j, i).

The minimising ``j`` is non-decreasing in ``i`` (the cost is Monge), so each
row of the table costs :math:`O(S \log S)` by divide and conquer: the middle
``i`` of a range is solved over the ``j`` that its neighbours allow, and both
halves recurse. The recursion's shape depends only on ``S``, so every level
is one batched pass of static size and the whole solver is jittable, with a
static trip count and no host round trip.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgg_optax._src import quantiles

UNROLL = 8  # up to this many clusters, per-cluster work is unrolled


def thresholds(centres: jax.Array) -> jax.Array:
  r"""Decision boundaries of sorted 1-D centres.

  The nearest-centre rule cuts the line into intervals, so assigning a value
  to its cluster is counting the boundaries below it:

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


def assign(x: jax.Array, bounds: jax.Array) -> jax.Array:
  """Cluster ids of ``x`` given boundaries, as ``uint8``.

  Elementwise (it fuses into the surrounding update and needs no
  communication under sharding): a chain of comparisons up to ``UNROLL``
  boundaries, one comparison against all of them past it (so the compiled
  program does not grow with K).

  Args:
    x: values, any shape.
    bounds: the ``K - 1`` boundaries along the last axis, broadcastable
      against ``x[..., None]``.

  Returns:
    ``uint8`` ids in ``[0, K)`` with the shape of ``x``.
  """
  if bounds.shape[-1] >= UNROLL:
    return jnp.sum(x[..., None] > bounds, -1, dtype=jnp.uint8)
  ids = jnp.zeros_like(x, jnp.uint8)  # with x's sharding
  for k in range(bounds.shape[-1]):
    ids = ids + (x > bounds[..., k]).astype(jnp.uint8)
  return ids


def members(ids: jax.Array, valid: jax.Array, num_clusters: int
            ) -> jax.Array:
  """``(G, K, S)`` membership mask of ``(G, S)`` ids (lazily fused)."""
  ks = jnp.arange(num_clusters, dtype=ids.dtype)[None, :, None]
  return (ids[:, None, :] == ks) & valid[:, None, :]


def assign_rows(x: jax.Array, centres: jax.Array) -> jax.Array:
  """Ids of ``x`` of shape ``(G, S)`` given per-row centres ``(G, K)``."""
  return assign(x, thresholds(centres)[:, None, :])


def cluster_counts(ids: jax.Array, valid: jax.Array, num_clusters: int
                   ) -> jax.Array:
  """``(G, K)`` number of valid entries of each row in each cluster."""
  return jnp.sum(members(ids, valid, num_clusters), -1, dtype=jnp.float32)




def _filled(centres: jax.Array, filled: jax.Array) -> jax.Array:
  """``(G, K)`` centres with each empty cluster's taken from the next filled
  one up, or, above the last filled one, from it (the centres stay sorted).
  """
  k = jnp.arange(centres.shape[-1])
  later = filled[:, None, :] & (k[None, None, :] >= k[None, :, None])
  up = jnp.min(jnp.where(later, k, k.size), -1)
  last = jnp.max(jnp.where(filled, k, 0), -1, keepdims=True)
  return jnp.take_along_axis(centres, jnp.where(up < k.size, up, last), -1)


@functools.cache
def _recursion(n: int) -> tuple[np.ndarray, np.ndarray]:
  """The divide-and-conquer recursion over ``i in [0, n]``, level by level.

  Returns ``(mid, l, r)`` of every range, ``(3, levels, width)`` int32 (each
  level padded to the widest), and a mask of the real ranges.
  """
  levels, ranges = [], [(0, n)]
  while ranges:
    levels.append([((a + b) // 2, a, b) for a, b in ranges])
    ranges = [half for a, b in ranges
              for half in ((a, (a + b) // 2 - 1), ((a + b) // 2 + 1, b))
              if half[0] <= half[1]]
  width = max(map(len, levels))
  table = np.zeros((3, len(levels), width), np.int32)
  real = np.zeros((len(levels), width), bool)
  for a, level in enumerate(levels):
    table[:, a, :len(level)] = np.asarray(level, np.int32).T
    real[a, :len(level)] = True
  return table, real


def _optimal_runs(y: jax.Array, n: jax.Array, num_clusters: int
                  ) -> jax.Array:
  """Boundaries ``(G, K + 1)`` of the optimal runs of sorted rows: run
  ``k`` of row ``g`` holds its values ``bounds[g, k] .. bounds[g, k + 1] -
  1``.

  Row ``g`` of ``y`` is sorted and its first ``n[g]`` entries are the
  values (the rest never enter :math:`D(n)`).
  """
  rows, size = y.shape
  pos = jnp.arange(size)[None, :]
  first = pos < n[:, None]
  m = jnp.maximum(n, 1).astype(jnp.float32)[:, None]
  # Standardised, so that the cumulative sums lose as little as possible.
  mean = jnp.sum(jnp.where(first, y, 0.0), -1, keepdims=True) / m
  z = jnp.where(first, y - mean, 0.0)
  sd = jnp.sqrt(jnp.sum(z * z, -1, keepdims=True) / m)
  z = z / jnp.where(sd > 0, sd, 1.0)
  # Past n the row repeats its largest value: still sorted, so the optimal
  # j stays monotone over the whole table (the recursion relies on it).
  top = jnp.take_along_axis(z, jnp.maximum(n - 1, 0)[:, None], -1)
  z = jnp.where(first, z, top)
  # Cumulative sums that start at the row's median and run outwards: a
  # run's sums are differences of two of them, which in the bulk of a
  # heavy-tailed row are small, so little is lost to cancellation.
  above = pos >= (n // 2)[:, None]
  parts = jnp.stack([jnp.where(above, z, 0.0), jnp.where(above, z * z, 0.0),
                     jnp.where(above, 0.0, z)[:, ::-1],
                     jnp.where(above, 0.0, z * z)[:, ::-1]])
  sums = jnp.pad(jnp.cumsum(parts, -1), [(0, 0), (0, 0), (1, 0)])
  p1, p2 = sums[0] - sums[2, :, ::-1], sums[1] - sums[3, :, ::-1]
  at = lambda a, i: jnp.take_along_axis(a, i, -1)

  def cost(j, i):  # C(j, i), the sum of squares of the run j .. i - 1
    count = (i - j).astype(jnp.float32)
    s1, s2 = at(p1, i) - at(p1, j), at(p2, i) - at(p2, j)
    return jnp.maximum(s2 - s1 * s1 / jnp.maximum(count, 1.0), 0.0)

  idx = jnp.broadcast_to(jnp.arange(size + 1), (rows, size + 1))
  table, real = (jnp.asarray(a) for a in _recursion(size))
  width = table.shape[-1]
  row = jnp.arange(rows)[:, None]

  def level(a, carry):  # one level of the recursion, all its ranges at once
    prev, d, opt = carry
    mid, left, right = (jnp.broadcast_to(t[a], (rows, width)) for t in table)
    hi = jnp.minimum(mid, jnp.where(
        right < size, at(opt, jnp.minimum(right + 1, size)), size))
    lo = jnp.where(left > 0, at(opt, jnp.maximum(left - 1, 0)), 0)
    # Candidate j of range q sits at j + q: the optimal j never decreases
    # and the ranges of a level meet at most at their ends, so each range
    # owns the positions from its first to the next range's first.
    first = jnp.where(real[a], lo + jnp.arange(width), size + 1 + width)
    q = jnp.cumsum(jnp.zeros((rows, size + 1 + width), jnp.int32).at[
        row, first].add(1, mode='drop'), -1) - 1
    q = jnp.clip(q, 0, width - 1)
    j = jnp.arange(size + 1 + width)[None, :] - q
    live = (j >= at(lo, q)) & (j <= at(hi, q)) & real[a][q]
    j = jnp.clip(j, 0, size)
    c = jnp.where(live, at(prev, j) + cost(j, at(mid, q)), jnp.inf)
    key = (row * width + q).ravel()
    segment_min = lambda v: jax.ops.segment_min(
        v.ravel(), key, rows * width, indices_are_sorted=True
    ).reshape(rows, width)
    best = segment_min(c)
    arg = segment_min(jnp.where(c == at(best, q), j, size))  # the first
    to = jnp.where(real[a], mid, size + 1)  # padding writes nowhere
    return (prev, d.at[row, to].set(best, mode='drop'),
            opt.at[row, to].set(arg, mode='drop'))

  def next_row(k, carry):
    d, opts = carry
    init = (d, jnp.zeros_like(d), jnp.zeros_like(idx))
    _, d, opt = jax.lax.fori_loop(0, table.shape[1], level, init)
    return d, opts.at[k].set(opt)

  d = cost(jnp.zeros_like(idx), idx)
  # Rows 1 .. K - 2 of the table in full; the last one at n alone.
  inner = max(num_clusters - 2, 0)
  opts = jnp.zeros((inner, rows, size + 1), jnp.int32)
  if inner:
    d, opts = jax.lax.fori_loop(0, inner, next_row, (d, opts))
  bounds = [n[:, None]]
  if num_clusters > 1:
    last = jnp.where(idx <= n[:, None], d + cost(idx, bounds[0]), jnp.inf)
    bounds.append(jnp.argmin(last, -1, keepdims=True).astype(jnp.int32))
  if inner > UNROLL:  # a loop, not one gather per cluster
    def back(i, walked):  # boundary k + 1 from boundary k + 2, k = K-3 .. 0
      k = inner - 1 - i
      return walked.at[:, k + 1].set(
          at(opts[k], jax.lax.dynamic_slice_in_dim(walked, k + 2, 1, 1))[:, 0])
    walked = jnp.zeros((rows, num_clusters + 1), jnp.int32)
    walked = walked.at[:, num_clusters - 1].set(bounds[1][:, 0])
    walked = walked.at[:, num_clusters].set(bounds[0][:, 0])
    return jax.lax.fori_loop(0, inner, back, walked)
  for k in range(inner - 1, -1, -1):
    bounds.append(at(opts[k], bounds[-1]))
  bounds.append(jnp.zeros_like(bounds[0]))
  return jnp.concatenate(bounds[::-1], -1)


def kmeans_1d(x: jax.Array, valid: jax.Array, num_clusters: int
              ) -> jax.Array:
  r"""Optimal 1-D K-means centres of each row, by dynamic programming.

  Each row (one layer's sample) is clustered on its own, all rows together:
  the row's valid values are sorted, the table of the module docstring gives
  the boundaries of the partition that minimises the within-cluster sum of
  squares, and each centre is its run's mean, so cluster ``k`` is the
  ``k``-th smallest centre. An empty cluster (a row with fewer distinct
  values than ``K``) takes the centre of the next cluster up, or, at the
  top, of the one below it.

  The runs' sums of squares are differences of float32 cumulative sums of
  the standardised row, summed outwards from its median, so the partition is
  optimal up to their rounding: within :math:`10^{-5}` of the optimal sum of
  squares on mixtures and on light- and heavy-tailed rows
  (``tests/test_kmeans_exact.py`` checks it against a float64 solution).
  Cost per row: :math:`O(S \log S)` for the sort and
  :math:`O((K - 2)\, S \log S)` for the table; ``K <= 2`` needs no
  recursion.

  Args:
    x: ``(G, S)`` finite values.
    valid: ``(G, S)`` mask of the entries to use.
    num_clusters: ``K`` (static).

  Returns:
    ``(G, K)`` sorted centres (0 for rows without valid entries).

  References:
    Wang & Song, `Ckmeans.1d.dp: Optimal k-means clustering in one dimension
    by dynamic programming <https://doi.org/10.32614/RJ-2011-015>`_,
    The R Journal 3(2), 2011.
  """
  n = jnp.sum(valid, axis=-1, dtype=jnp.int32)
  # Sorted as order-preserving integer keys (on CPU a fourth of a float
  # sort's time); the invalid entries sort last.
  y = quantiles.value(jnp.sort(
      jnp.where(valid, quantiles.key(x), jnp.iinfo(jnp.int32).max), axis=-1))
  bounds = _optimal_runs(y, n, num_clusters)
  # Each centre is its run's mean, kept within the run's values (rounding
  # could move it past them), so the centres are sorted.
  pos = jnp.arange(x.shape[-1])[None, None, :]
  run = (pos >= bounds[:, :-1, None]) & (pos < bounds[:, 1:, None])
  counts = jnp.sum(run, -1, dtype=jnp.float32)
  sums = jnp.sum(jnp.where(run, y[:, None, :], 0.0), -1)
  ends = jnp.take_along_axis(y, jnp.clip(bounds, 0, x.shape[-1] - 1), -1)
  last = jnp.take_along_axis(y, jnp.clip(bounds[:, 1:] - 1, 0, None), -1)
  means = jnp.clip(sums / jnp.maximum(counts, 1.0), ends[:, :-1], last)
  centres = _filled(means, counts > 0)
  return jnp.where(jnp.any(counts > 0, -1, keepdims=True), centres, 0.0)
