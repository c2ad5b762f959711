"""Tests of the ready-made optimizers and of the diagnostics helper."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax


def _params():
  rng = np.random.default_rng(0)
  return {'w1': jnp.asarray(rng.normal(size=(160, 130)), jnp.float32),
          'w2': jnp.asarray(rng.normal(size=(130, 8)), jnp.float32),
          'b': jnp.zeros((8,))}


def _loss(p, x):
  return jnp.mean((jnp.tanh(x @ p['w1']) @ p['w2'] + p['b'] - 1.0) ** 2)


def _run(tx, steps=20):
  params = _params()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 160)),
                  jnp.float32)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses, state


@pytest.mark.parametrize('make,base', [
    (lambda: sgg_optax.adamw_sgg(1e-2, weight_decay=1e-3,
                                 recluster_interval=1000),
     lambda: optax.adamw(1e-2, weight_decay=1e-3)),
    (lambda: sgg_optax.adamw_sgg(1e-2, weight_decay=1e-3,
                                 recluster_interval=1000,
                                 cluster_momentum=True),
     lambda: optax.adamw(1e-2, weight_decay=1e-3)),
    (lambda: sgg_optax.lamb_sgg(1e-2, recluster_interval=1000),
     lambda: optax.lamb(1e-2)),
    (lambda: sgg_optax.adafactor_sgg(1e-2, recluster_interval=1000),
     lambda: optax.adafactor(1e-2)),
])
def test_alias_equals_its_base_before_first_refresh(make, base):
  got, _ = _run(make(), steps=5)
  want, _ = _run(base(), steps=5)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize('make', [
    lambda: sgg_optax.adamw_sgg(1e-2, recluster_interval=5, beta3=0.5),
    lambda: sgg_optax.lamb_sgg(1e-2, recluster_interval=5, beta3=0.5),
    lambda: sgg_optax.adafactor_sgg(1e-2, recluster_interval=5, beta3=0.5),
])
def test_alias_trains_and_rescales(make):
  losses, state = _run(make(), steps=30)
  assert losses[-1] < 0.5 * losses[0]
  summary = sgg_optax.cluster_summary(state)
  assert not np.all(summary.scales == 1.0)


def test_cluster_summary_of_nested_state():
  tx = sgg_optax.adamw_sgg(1e-2, recluster_interval=5, beta3=0.5)
  _, state = _run(tx, steps=10)
  summary = sgg_optax.cluster_summary(state)
  assert summary.names == ('w1', 'w2')
  assert summary.count == 10
  assert summary.scales.shape == (2, 3)
  np.testing.assert_allclose(summary.fractions.sum(axis=1), 1.0, rtol=1e-6)
  inner = sgg_optax.find_sgg_states(state)[0]
  # w2 (1040 elements) is sampled whole: fractions are exact
  ids = np.asarray(inner.ids['w2'])
  np.testing.assert_allclose(summary.fractions[1],
                             np.bincount(ids.ravel(), minlength=3) / ids.size,
                             rtol=1e-6)
  flat = summary.scalars()
  assert flat['sgg/w1/scale_0'] == pytest.approx(float(summary.scales[0, 0]))
  assert len(flat) == 1 + 2 * 3 * 2


def test_group_names_for_stacked_and_dynamic():
  params = {'blocks': jnp.ones((3, 8, 8)), 'emb': jnp.ones((10, 8)),
            'norm': jnp.ones((8,))}
  stacked = {'blocks': True, 'emb': False, 'norm': False}
  names = sgg_optax.group_names(params, stacked_layers=stacked)
  assert names == ['blocks[0]', 'blocks[1]', 'blocks[2]', 'emb']
  tx = sgg_optax.sgg(stacked_layers=stacked, assignment='dynamic')
  state = tx.init(params)
  assert sgg_optax.cluster_summary(state).names[0] == 'group_0'
  assert sgg_optax.cluster_summary(state, names).names == tuple(names)
  with pytest.raises(ValueError, match='names'):
    sgg_optax.cluster_summary(state, names[:2])
  with pytest.raises(ValueError, match='one SGGState'):
    sgg_optax.cluster_summary((state, state))
