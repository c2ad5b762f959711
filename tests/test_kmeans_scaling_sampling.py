"""Unit tests of the K-means, the median helpers and the refresh rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgg_optax
from sgg_optax._src import kmeans, quantiles
from tests import numpy_reference as ref
from tests._rows import rows


def test_kmeans_centres_stay_sorted_when_rounding_inverts_means():
  # Two clusters one float apart: the rounded mean of the lower one can land
  # above the upper one's. 300 such rows, clustered together.
  rng = np.random.default_rng(0)
  rows, width = 300, 400
  x = np.zeros((rows, width), np.float32)
  valid = np.zeros((rows, width), bool)
  for r in range(rows):
    t = np.float32(rng.uniform(0.01, 10.0))
    t_up = np.nextafter(t, np.float32(np.inf))
    n, m = rng.integers(2, 200, size=2)
    x[r, :n + m] = np.r_[np.full(n, t), np.full(m, t_up)]
    valid[r, :n + m] = True
  centres = np.asarray(kmeans.kmeans_1d(jnp.asarray(x), jnp.asarray(valid),
                                        2))
  assert np.all(np.diff(centres, axis=-1) >= 0)
  lo = np.where(valid, x, np.inf).min(-1)
  hi = np.where(valid, x, -np.inf).max(-1)
  np.testing.assert_allclose(centres, np.clip(centres, lo[:, None],
                                              hi[:, None]), rtol=1e-6)


def test_assignment_is_nearest_centre():
  rng = np.random.default_rng(1)
  x = rng.normal(size=1000).astype(np.float32)
  centres = np.sort(rng.normal(size=4)).astype(np.float32)
  bounds = kmeans.thresholds(jnp.asarray(centres))
  ids = kmeans.assign(jnp.asarray(x), bounds)
  assert ids.dtype == jnp.uint8
  np.testing.assert_array_equal(ids, ref.nearest(x, centres))


def test_cluster_medians_match_numpy():
  rng = np.random.default_rng(2)
  x = rng.exponential(size=(3, 101)).astype(np.float32)
  ids = rng.integers(0, 3, size=(3, 101)).astype(np.uint8)
  valid = rng.random((3, 101)) < 0.9
  ids[2][ids[2] == 1] = 0  # an empty cluster
  got = quantiles.cluster_medians(jnp.asarray(x), jnp.asarray(ids),
                                jnp.asarray(valid), 3)
  for g in range(3):
    for k in range(3):
      sel = valid[g] & (ids[g] == k)
      if sel.any():
        np.testing.assert_allclose(got[g, k], np.median(x[g][sel]), rtol=1e-6)
      else:
        assert np.isnan(got[g, k])


def test_weighted_median():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 50)).astype(np.float32)
  ones = np.ones_like(x)
  np.testing.assert_allclose(quantiles.median(x.reshape(1, -1),
                                              ones.reshape(1, -1)),
                             [np.median(x)], rtol=1e-6)
  np.testing.assert_allclose(quantiles.median(x, ones), np.median(x, axis=1),
                             rtol=1e-6)  # row-wise, odd count per row
  w = rng.integers(0, 4, size=x.shape).astype(np.float32)
  want = np.median(np.repeat(x.ravel(), w.ravel().astype(int)))
  got = quantiles.median(jnp.asarray(x).reshape(1, -1),
                         jnp.asarray(w).reshape(1, -1))
  np.testing.assert_allclose(got, [want], rtol=1e-6)
  assert np.isnan(quantiles.median(x, np.zeros_like(x))).all()


@pytest.mark.parametrize('dist', ['normal', 'signed_tiny', 'ties'])
def test_order_statistics_are_exact(dist):
  rng = np.random.default_rng(6)
  if dist == 'normal':
    x = rng.normal(size=(4, 257))
  elif dist == 'signed_tiny':  # both signs, 40 decades of magnitude
    x = rng.choice([-1, 1], (4, 257)) * 10.0 ** rng.uniform(-30, 10, (4, 257))
  else:
    x = rng.integers(-3, 4, size=(4, 257)).astype(float)
  x = x.astype(np.float32)
  ranks = np.array([1, 17, 129, 257], np.float32)
  got = quantiles.quantiles(jnp.asarray(x), jnp.ones_like(x),
                            jnp.tile(jnp.asarray(ranks), (4, 1)))
  want = np.sort(x, axis=1)[:, ranks.astype(int) - 1]
  np.testing.assert_array_equal(got, want)


def test_refresh_on_large_layer_tracks_exact_statistics():
  """Sample-based MDAs and global deviation versus exact NumPy ones."""
  rng = np.random.default_rng(5)
  # 'small' is exact (2,000 elements) and 30x wider; 'big' is sampled (4,096
  # of 1M), so the model-wide median is right only if each sample stands for
  # its share of the layer.
  shapes = {'big': (512, 2048), 'small': (40, 50)}
  spread = {'big': 1.0, 'small': 30.0}
  u = {k: jnp.asarray(spread[k] * rng.standard_t(3, size=s), jnp.float32)
       for k, s in shapes.items()}
  tx = sgg_optax.sgg(3, recluster_interval=1, beta3=0.0)
  _, state = jax.jit(tx.update)(u, tx.init(u))
  names = sgg_optax.group_names(u)
  g = names.index('big')
  x = np.asarray(u['big'], np.float64).ravel()
  ids = np.asarray(state.ids['big']).ravel()
  dev = np.abs(x - x.mean())
  for k in range(3):
    d = dev[ids == k]
    rank = np.mean(d <= float(rows(state.cluster_stats)[g, k]))
    assert abs(rank - 0.5) < 0.05, (k, rank)
  alldev = np.concatenate(
      [dev, np.abs(np.asarray(u['small']).ravel()
                   - np.asarray(u['small']).mean())])
  rank = np.mean(alldev <= float(state.global_stat))
  assert abs(rank - 0.5) < 0.02, rank
  # the ids of all elements come from the sampled centres' boundaries
  bounds = 0.5 * (rows(state.centres)[g, :-1] + rows(state.centres)[g, 1:])
  np.testing.assert_array_equal(
      ids, np.searchsorted(np.asarray(bounds), x.astype(np.float32)))
