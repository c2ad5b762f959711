"""Tests of the SGG transformation against a NumPy reference and its rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax
from tests import numpy_reference as ref
from tests._rows import rows


def _tree(seed, shapes, dist='t'):
  rng = np.random.default_rng(seed)
  draw = (lambda s: rng.standard_t(3, size=s)) if dist == 't' else (
      lambda s: rng.normal(size=s))
  return {k: jnp.asarray(draw(s), jnp.float32) for k, s in shapes.items()}


SHAPES = {'a': (24, 40), 'b': (16, 8, 4), 'bias': (40,)}


@pytest.mark.parametrize('k,cluster_stat,global_stat', [
    (3, 'signed', 'layer_mean'),
    (2, 'abs', 'layer_mean'),
    (3, 'abs', 'global_mean'),
    (4, 'signed', 'cluster_mdas'),
    (12, 'abs', 'layer_mean'),  # past the unrolled per-cluster code
])
def test_matches_numpy_reference_over_three_refreshes(k, cluster_stat,
                                                      global_stat):
  params = _tree(0, SHAPES)
  tx = sgg_optax.sgg(k, recluster_interval=2, beta3=0.6,
                     cluster_stat=cluster_stat, global_stat=global_stat)
  state = tx.init(params)
  update = jax.jit(tx.update)
  grouped = ['a', 'b']
  centres = np.zeros((2, k))
  scales = np.ones((2, k))
  mdas = np.zeros((2, k))
  ids = {n: np.zeros(SHAPES[n], int) for n in grouped}
  for step in range(1, 7):
    u = _tree(step, SHAPES)
    out, state = update(u, state)
    if step % 2 == 0:
      ids_list, centres, scales, mdas, glob = ref.refresh(
          [np.asarray(u[n]) for n in grouped], scales, mdas, beta3=0.6, k=k,
          cluster_stat=cluster_stat, global_stat=global_stat)
      ids = dict(zip(grouped, ids_list))
      np.testing.assert_allclose(state.global_stat, glob, rtol=1e-5)
    np.testing.assert_allclose(rows(state.centres), centres, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(rows(state.scales), scales, rtol=1e-5)
    np.testing.assert_allclose(rows(state.cluster_stats), mdas, rtol=1e-5)
    for g, n in enumerate(grouped):
      np.testing.assert_array_equal(state.ids[n], ids[n])
      np.testing.assert_allclose(out[n], ref.scaled(u[n], ids[n], scales[g]),
                                 rtol=1e-6)
    np.testing.assert_array_equal(out['bias'], u['bias'])
  assert not np.all(scales == 1.0)  # the refreshes did move the scales


@pytest.mark.parametrize('make', [
    lambda: optax.chain(optax.scale_by_adam(), sgg_optax.sgg(
        recluster_interval=5), optax.scale_by_learning_rate(0.1)),
    lambda: optax.chain(sgg_optax.with_sgg(
        optax.scale_by_adam(), recluster_interval=5),
                        optax.scale_by_learning_rate(0.1)),
    lambda: sgg_optax.adamw_sgg(0.1, recluster_interval=5, weight_decay=0.0),
])
def test_identity_before_first_refresh_bitwise(make):
  params = _tree(0, SHAPES)
  tx, base = make(), optax.adam(0.1)
  s, sb = tx.init(params), base.init(params)
  step, bstep = jax.jit(tx.update), jax.jit(base.update)
  for t in range(1, 6):
    g = _tree(t, SHAPES)
    u, s = step(g, s, params)
    ub, sb = bstep(g, sb, params)
    same = [bool(jnp.array_equal(x, y)) for x, y in
            zip(jax.tree.leaves(u), jax.tree.leaves(ub))]
    assert all(same) == (t < 5), (t, same)


def test_paper_form_clusters_the_first_moment():
  params = _tree(0, {'w': (32, 16)})
  adam = optax.scale_by_adam()
  tx = sgg_optax.with_sgg(adam, recluster_interval=3, beta3=0.5)
  state = tx.init(params)
  inner = adam.init(params)
  ref_scales, ref_centres = np.ones((1, 3)), np.zeros((1, 3))
  mdas = np.zeros((1, 3))
  for t in range(1, 4):
    g = _tree(t, {'w': (32, 16)})
    u, state = jax.jit(tx.update)(g, state, params)
    base_u, inner = jax.jit(adam.update)(g, inner, params)
  ids, ref_centres, ref_scales, mdas, _ = ref.refresh(
      [np.asarray(inner.mu['w'])], ref_scales, mdas, beta3=0.5, k=3)
  sgg_state = state.sgg_state
  np.testing.assert_array_equal(sgg_state.ids['w'], ids[0])
  np.testing.assert_allclose(rows(sgg_state.scales), ref_scales, rtol=1e-5)
  np.testing.assert_allclose(
      u['w'], ref.scaled(base_u['w'], ids[0], ref_scales[0]), rtol=1e-6)


def test_update_statistic_wrapper_equals_chain():
  """``with_sgg(moment=None)`` is ``chain(base, sgg())``."""
  shapes = {'w': (20, 12), 'b': (12,)}
  chain = optax.chain(optax.scale_by_adam(),
                      sgg_optax.sgg(recluster_interval=2, beta3=0.5))
  wrap = sgg_optax.with_sgg(optax.scale_by_adam(), recluster_interval=2,
                            beta3=0.5, moment=None)
  params = _tree(0, shapes)
  sc, sw = chain.init(params), wrap.init(params)
  cstep, wstep = jax.jit(chain.update), jax.jit(wrap.update)
  for t in range(1, 6):
    g = _tree(t, shapes)
    uc, sc = cstep(g, sc, params)
    uw, sw = wstep(g, sw, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 uc, uw)
  np.testing.assert_array_equal(sc[1].ids['w'], sw.sgg_state.ids['w'])
  np.testing.assert_allclose(rows(sc[1].scales), rows(sw.sgg_state.scales),
                             rtol=1e-6)
  assert not np.all(np.asarray(rows(sw.sgg_state.scales)) == 1.0)


def test_moment_name_must_exist():
  tx = sgg_optax.with_sgg(optax.scale_by_rms(), recluster_interval=1)
  params = {'w': jnp.ones((4, 4))}
  with pytest.raises(ValueError, match="'mu'"):
    tx.update(params, tx.init(params), params)


def test_dynamic_assignment_reassigns_every_step():
  shapes = {'w': (30, 20)}
  frozen = sgg_optax.sgg(recluster_interval=3, beta3=0.5)
  dynamic = sgg_optax.sgg(recluster_interval=3, beta3=0.5,
                          assignment='dynamic')
  sf, sd = frozen.init(_tree(0, shapes)), dynamic.init(_tree(0, shapes))
  assert isinstance(sd.ids['w'], optax.MaskedNode)
  fstep, dstep = jax.jit(frozen.update), jax.jit(dynamic.update)
  for t in range(1, 5):
    u = _tree(t, shapes)
    of, sf = fstep(u, sf)
    od, sd = dstep(u, sd)
    np.testing.assert_allclose(rows(sd.scales), rows(sf.scales))
    if t < 3:
      np.testing.assert_array_equal(od['w'], u['w'])
    if t == 3:  # at the refresh both assign from this step's statistic
      np.testing.assert_array_equal(od['w'], of['w'])
  # after it, dynamic re-assigns from the new update, frozen keeps the ids
  bounds = 0.5 * (rows(sd.centres)[0, :-1] + rows(sd.centres)[0, 1:])
  ids = np.searchsorted(np.asarray(bounds), np.asarray(u['w']), side='left')
  np.testing.assert_allclose(od['w'], u['w'] * rows(sd.scales)[0][ids],
                             rtol=1e-6)
  assert not np.allclose(od['w'], of['w'])


@pytest.mark.parametrize('k', [3, 12])
def test_stacked_layers_equal_separate_layers(k):
  rng = np.random.default_rng(3)
  stacked_tx = sgg_optax.sgg(k, recluster_interval=2, beta3=0.5,
                             stacked_layers={'blocks': True, 'emb': False})
  split_tx = sgg_optax.sgg(k, recluster_interval=2, beta3=0.5)
  make = lambda: {'blocks': jnp.asarray(rng.standard_t(3, (4, 12, 10)),
                                        jnp.float32),
                  'emb': jnp.asarray(rng.normal(size=(9, 6)), jnp.float32)}
  split = lambda u: {'emb': u['emb'],
                     **{f'l{i}': u['blocks'][i] for i in range(4)}}
  us = [make() for _ in range(4)]
  s1 = stacked_tx.init(us[0])
  s2 = split_tx.init(split(us[0]))
  for u in us:
    o1, s1 = jax.jit(stacked_tx.update)(u, s1)
    o2, s2 = jax.jit(split_tx.update)(split(u), s2)
  assert rows(s1.scales).shape == (5, k)
  # rows: blocks[0..3] then emb (tree order: 'blocks' < 'emb'); split tree
  # order is emb, l0..l3.
  np.testing.assert_allclose(rows(s1.scales), rows(s2.scales)[[1, 2, 3, 4, 0]],
                             rtol=1e-5)
  for i in range(4):
    np.testing.assert_allclose(o1['blocks'][i], o2[f'l{i}'], rtol=1e-6)
    np.testing.assert_array_equal(s1.ids['blocks'][i], s2.ids[f'l{i}'])
  # a stacked (L, d) norm scale is 1-D per layer: not grouped by default
  tx = sgg_optax.sgg(stacked_layers=lambda p: {'n': True})
  assert isinstance(tx.init({'n': jnp.ones((4, 8))}).ids['n'],
                    optax.MaskedNode)


def test_reference_rule_matches_its_formula():
  shapes = {'w': (40, 25)}
  tx = sgg_optax.sgg(2, recluster_interval=1, beta3=0.9,
                     scale_rule='reference', cluster_stat='abs',
                     cluster_decay=0.5, reference_init='first')
  state = tx.init(_tree(0, shapes))
  ema = None
  scales = np.ones(2)
  update = jax.jit(tx.update)
  for t in range(1, 4):
    u = _tree(t, shapes)
    _, state = update(u, state)
    a = np.abs(np.asarray(u['w'], np.float64))
    ids = np.asarray(state.ids['w'])
    means = np.array([a[ids == j].mean() for j in range(2)])
    ema = means if ema is None else ema
    ema = 0.5 * ema + 0.5 * means
    scales = np.clip(0.9 * scales + 0.1 * a.mean() / ema, 0.1, 10.0)
    np.testing.assert_allclose(rows(state.cluster_stats)[0], ema, rtol=1e-5)
    np.testing.assert_allclose(rows(state.scales)[0], scales, rtol=1e-5)
  assert scales[0] > 1.0 > scales[1]  # small-|m| cluster boosted


def test_reference_rule_empty_cluster_takes_the_layer_mean():
  # Two distinct magnitudes, three clusters: one cluster has no members.
  tx = sgg_optax.sgg(3, recluster_interval=1, beta3=0.9,
                     scale_rule='reference', cluster_stat='abs',
                     cluster_decay=0.5, reference_init='first')
  w = np.where(np.arange(60).reshape(6, 10) % 3 == 0, 0.3, 0.1)
  u = {'w': jnp.asarray(w, jnp.float32)}
  _, state = jax.jit(tx.update)(u, tx.init(u))
  fractions = np.asarray(rows(state.fractions)[0])
  empty = fractions == 0
  assert empty.sum() == 1, fractions
  layer = np.abs(w).mean()
  np.testing.assert_allclose(rows(state.cluster_stats)[0][empty], layer,
                             rtol=1e-6)
  np.testing.assert_allclose(rows(state.scales)[0][empty], 1.0, rtol=1e-6)


def test_reference_rule_with_ones_init_decays_uniformly():
  """The public code's EMA start at 1 shrinks all scales alike (small m)."""
  tx = sgg_optax.sgg(3, recluster_interval=1, beta3=0.9,
                     scale_rule='reference', cluster_stat='abs',
                     cluster_decay=0.95)
  params = {'w': jnp.zeros((50, 20))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(30):
    u = jax.tree.map(lambda x: 1e-4 * x, _tree(t, {'w': (50, 20)}))
    _, state = update(u, state)
  np.testing.assert_allclose(rows(state.scales), 0.1, rtol=1e-6)


@pytest.mark.parametrize('bad,match', [
    (dict(num_clusters=0), 'num_clusters'),
    (dict(num_clusters=256), 'num_clusters'),
    (dict(num_clusters=2.0), 'num_clusters'),
    (dict(recluster_interval=0), 'recluster_interval'),
    (dict(recluster_interval=2.5), 'recluster_interval'),
    (dict(beta3=1.0), 'beta3'),
    (dict(beta3=-0.1), 'beta3'),
    (dict(scale_rule='median'), 'scale_rule'),
    (dict(global_stat='G4'), 'global_stat'),
    (dict(cluster_stat='square'), 'cluster_stat'),
    (dict(assignment='lazy'), 'assignment'),
    (dict(clamp_order='during'), 'clamp_order'),
    (dict(clamp=(0.0, 10.0)), 'clamp'),
    (dict(clamp=(2.0, 1.0)), 'clamp'),
    (dict(clamp=(2.0, 10.0)), 'clamp'),  # the scales start at 1
    (dict(clamp=(0.1, 0.5)), 'clamp'),
    (dict(kmeans_iters=-1), 'kmeans_iters'),
    (dict(sample_size=0), 'sample_size'),
    (dict(eps=-1.0), 'eps'),
])
def test_bad_arguments_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    sgg_optax.sgg(**bad)
  with pytest.raises(ValueError, match=match):
    sgg_optax.with_sgg(optax.scale_by_adam(), **bad)


@pytest.mark.parametrize('kwargs', [
    dict(num_clusters=1), dict(num_clusters=255), dict(recluster_interval=1),
    dict(beta3=0.0)], ids=lambda kw: '{}={}'.format(*next(iter(kw.items()))))
def test_boundary_arguments_are_accepted(kwargs):
  tx = sgg_optax.sgg(**kwargs)
  params = {'w': jnp.arange(12.0).reshape(3, 4)}
  out, _ = jax.jit(tx.update)(params, tx.init(params))
  assert jnp.all(jnp.isfinite(out['w']))
