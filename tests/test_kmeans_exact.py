"""The refresh finds the optimal one-dimensional K-means partition.

Every refresh's partition of a layer's sample must have a within-cluster sum
of squares within 0.1% of the optimum, which ``numpy_reference.kmeans``
computes exactly (dynamic programming in float64). Lloyd's algorithm from
the sample's quantiles, the refresh before this one, stops at local minima:
two groups merged and a third split whenever a starting quantile falls on
the boundary between two groups.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import sgg_optax
from sgg_optax._src import kmeans
from tests import numpy_reference as ref

SIDE = 16  # layers of SIDE x SIDE values: clustered whole (the exact path)
LAYERS = 8


def _mixture(rng, size, weights, spread):
  """``size`` values from a mixture of normals at sorted random means."""
  means = np.sort(rng.normal(0.0, 3.0, len(weights)))
  sds = rng.uniform(0.05, 1.0, len(weights)) * spread
  comp = rng.choice(len(weights), size, p=weights)
  return rng.normal(means[comp], sds[comp])


def _layer(rng, kind, k):
  size = SIDE * SIDE
  if kind == 'boundary':
    # Two groups below the (j + 1/2)/K quantile, one or two above it, so
    # that a quantile starting centre sits on a boundary between groups
    # (for K = 3, j = 1: 25%, 25% and 50%, the example below).
    q = (rng.integers(k) + 0.5) / k
    above = [1 - q] if rng.random() < 0.5 else [(1 - q) / 2] * 2
    return _mixture(rng, size, np.array([q / 2, q / 2] + above), 0.5)
  if kind == 'mixture':
    return _mixture(rng, size, rng.dirichlet(np.ones(rng.integers(2, 6))),
                    1.0)
  return {'laplace': rng.laplace, 'student_t': functools.partial(
      rng.standard_t, 2.0), 'lognormal': functools.partial(
          rng.lognormal, 0.0, 1.5)}[kind](size=size)


@functools.cache
def _refresh(k):
  """One jitted refresh of ``LAYERS`` layers: SGG's first update, T = 1."""
  tx = sgg_optax.sgg(k, recluster_interval=1, beta3=0.0,
                     cluster_stat='signed', sample_size=SIDE * SIDE)
  return tx.init, jax.jit(tx.update)


def _ids(values, k):
  init, update = _refresh(k)
  tree = {f'l{i}': jnp.asarray(v.reshape(SIDE, SIDE), jnp.float32)
          for i, v in enumerate(values)}
  _, state = update(tree, init(tree))
  return [np.asarray(state.ids[f'l{i}']).ravel() for i in range(len(values))]


def _sum_of_squares(x, ids):
  return sum(((x[ids == c] - x[ids == c].mean()) ** 2).sum()
             for c in np.unique(ids))


KINDS = ('boundary', 'mixture', 'laplace', 'student_t', 'lognormal')


@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from((3, 4)))
@example(seed=0, k=3).via('a quantile on a group boundary, K = 3')
@example(seed=1, k=4).via('four clusters')
def test_refresh_partition_is_optimal(seed, k):
  rng = np.random.default_rng(seed)
  kinds = [KINDS[i % len(KINDS)] for i in range(LAYERS)]
  values = [_layer(rng, kind, k).astype(np.float32) for kind in kinds]
  for x, ids, kind in zip(values, _ids(values, k), kinds):
    x = x.astype(np.float64)
    _, best = ref.kmeans(x, k)
    got = _sum_of_squares(x, ids)
    assert got <= best * (1 + 1e-3) + 1e-9, (kind, got / best)


def test_three_groups_are_found_at_every_refresh():
  """Groups at -2, -1 and +1 (sd 0.2) holding 25%, 25% and 50% of a
  1024 x 256 layer, clustered on the default sample from six starting
  steps (six samples), twice each: the middle starting quantile sits on the
  boundary between the -1 and +1 groups, where Lloyd merged the two small
  groups and split the large one, and kept that partition afterwards."""
  rng = np.random.default_rng(0)
  group = rng.permutation(np.repeat([0, 1, 2, 2], 256 * 256)).reshape(1024,
                                                                       256)
  layer = {'w': jnp.asarray(rng.normal(np.array([-2.0, -1.0, 1.0])[group],
                                       0.2), jnp.float32)}
  tx = sgg_optax.sgg(3, recluster_interval=1, beta3=0.0)
  update = jax.jit(tx.update)
  for start in range(0, 42, 7):
    state = tx.init(layer)._replace(count=jnp.int32(start))
    for _ in range(2):
      _, state = update(layer, state)
      np.testing.assert_allclose(state.fractions[0], (0.25, 0.25, 0.5),
                                 atol=0.03)
      assert np.mean(np.asarray(state.ids['w']) == group) > 0.98


@pytest.mark.parametrize('k', [1, 2, 3, 5])
def test_kmeans_rows_with_padding_and_few_values(k):
  """Rows of the sample with padding, fewer distinct values than K, and none
  at all: the centres stay sorted, an empty cluster takes a neighbour's
  centre, and the partition is optimal."""
  rng = np.random.default_rng(k)
  x = rng.standard_t(3, size=(6, 200)).astype(np.float32)
  valid = rng.random((6, 200)) < 0.7
  x[1] = np.repeat([0.0, 5.0], 100)  # two distinct values
  x[2] = 1.0
  valid[3] = False  # no values
  valid[4, 3:], valid[4, :3] = False, True  # three values
  centres = np.asarray(jax.jit(kmeans.kmeans_1d, static_argnums=2)(
      jnp.asarray(x), jnp.asarray(valid), k))
  assert centres.shape == (6, k)
  assert np.all(np.diff(centres, axis=-1) >= 0)
  np.testing.assert_array_equal(centres[3], 0.0)
  for g in (0, 1, 2, 4, 5):
    row = x[g][valid[g]].astype(np.float64)
    want, best = ref.kmeans(row, k)
    np.testing.assert_allclose(centres[g], want, rtol=1e-5, atol=1e-5)
    assert ref.sum_of_squares(row, centres[g]) <= best * (1 + 1e-5) + 1e-9


def test_kmeans_iters_is_deprecated():
  with pytest.warns(DeprecationWarning, match='kmeans_iters'):
    sgg_optax.sgg(kmeans_iters=10)
  with pytest.warns(DeprecationWarning, match='kmeans_iters'):
    sgg_optax.adamw_sgg(1e-3, kmeans_iters=10)
  with pytest.warns(DeprecationWarning):
    sgg_optax.with_sgg(optax.scale_by_adam(), kmeans_iters=3)
