"""Regression tests for defects that real models and users hit."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax
from tests._rows import rows


def _normal(seed, shapes, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


@pytest.mark.parametrize('make', [
    lambda: sgg_optax.with_sgg(optax.scale_by_adam(), recluster_interval=2),
    lambda: sgg_optax.adamw_sgg(1e-2, recluster_interval=2),
    lambda: sgg_optax.lamb_sgg(1e-2, recluster_interval=2),
])
def test_a_parameter_named_like_the_moment_field(make):
  """A VAE's ``'mu'`` parameter is not the optimizer's first moment."""
  shapes = {'mu': (6, 5), 'logvar': (6, 5), 'enc': {'mu': (4, 3)}}
  params = _normal(0, {'mu': (6, 5), 'logvar': (6, 5)})
  params['enc'] = _normal(1, {'mu': shapes['enc']['mu']})
  tx = make()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(2):
    grads = jax.tree.map(lambda p, t=t: p * (t + 1.5), params)
    updates, state = update(grads, state, params)
  sgg_state, = sgg_optax.find_sgg_states(state)
  assert int(sgg_state.count) == 2
  assert not np.all(rows(sgg_state.scales) == 1.0)  # refreshed from mu


def test_wrapped_state_must_name_one_moment_field():
  tx = sgg_optax.with_sgg(optax.scale_by_adam(), moment='trace')
  with pytest.raises(ValueError, match="0 fields named 'trace'"):
    tx.update({'w': jnp.ones((3, 3))}, tx.init({'w': jnp.ones((3, 3))}))


@pytest.mark.parametrize('k,statistic', [
    (1, lambda t: 0.1 * t * np.arange(1.0, 13.0)),   # K=1: one centre
    (3, lambda t: np.full(12, 0.1 * t)),             # collapsed: all equal
])
def test_reference_rule_ema_is_not_restarted(k, statistic):
  """The cluster-mean EMA starts once, not whenever centres are equal."""
  decay = 0.5
  tx = sgg_optax.sgg(k, recluster_interval=1, beta3=0.5,
                     scale_rule='reference', cluster_decay=decay,
                     reference_init='ones')
  state = tx.init({'w': jnp.zeros((3, 4))})
  ema = np.ones(k)
  for t in range(1, 4):
    a = np.abs(statistic(t))
    _, state = jax.jit(tx.update)({'w': jnp.asarray(a.reshape(3, 4),
                                                    jnp.float32)}, state)
    ema = decay * ema + (1 - decay) * a.mean()  # every cluster: a's mean
    # (K=1: one cluster; collapsed: the others are empty and take it too)
    np.testing.assert_allclose(rows(state.cluster_stats)[0], ema, rtol=1e-5)
  assert int(rows(state.refreshes)[0]) == 3


def test_reference_rule_clusters_magnitudes_by_default():
  tx = sgg_optax.sgg(2, recluster_interval=1, scale_rule='reference')
  # The positive pair lies further out than the negative one, so the signed
  # partition is unique (with 2.9, 3.0 both signed splits tie).
  w = jnp.asarray([[-3.0, -2.9, 0.1, 0.2], [3.4, 3.5, -0.1, -0.2]])
  _, state = jax.jit(tx.update)({'w': w}, tx.init({'w': w}))
  # |m|: the two large-magnitude pairs share a cluster whatever their sign
  np.testing.assert_array_equal(state.ids['w'], [[1, 1, 0, 0], [1, 1, 0, 0]])
  signed = sgg_optax.sgg(2, recluster_interval=1)  # the paper's rule
  _, state = jax.jit(signed.update)({'w': w}, signed.init({'w': w}))
  # signed: the large negative values join the small ones, below 1.35
  np.testing.assert_array_equal(state.ids['w'], [[0, 0, 0, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize('dtype,hyperparam_dtype', [
    (jnp.float64, None), (jnp.bfloat16, jnp.float32), (jnp.bfloat16, None),
])
def test_injected_hyperparameters_keep_state_float32(dtype, hyperparam_dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params = _normal(0, {'w': (8, 6)}, dtype)
    make = lambda beta3, eps: sgg_optax.sgg(
        3, recluster_interval=1, beta3=beta3, eps=eps)
    injected = optax.inject_hyperparams(
        make, hyperparam_dtype=hyperparam_dtype)(beta3=0.7, eps=1e-8)
    plain = make(0.7, 1e-8)
    si, sp = injected.init(params), plain.init(params)
    for t in range(3):
      grads = jax.tree.map(lambda p, t=t: p * (t + 1), params)
      ui, si = jax.jit(injected.update)(grads, si, params)
      up, sp = jax.jit(plain.update)(grads, sp, params)
      assert ui['w'].dtype == dtype
    inner = si.inner_state
    for field in ('centres', 'scales', 'cluster_stats', 'fractions'):
      assert all(a.dtype == jnp.float32 for a in getattr(inner, field))
    assert inner.global_stat.dtype == jnp.float32
    if hyperparam_dtype is not None or dtype == jnp.float64:
      np.testing.assert_allclose(rows(inner.scales), rows(sp.scales),
                                 rtol=1e-6)


@pytest.mark.parametrize('value', [np.int64(3), np.int32(3), np.uint8(3)])
def test_static_integers_accept_numpy_integers(value):
  tx = sgg_optax.sgg(value, sample_size=int(value) * 100,
                     recluster_interval=1)
  params = {'w': jnp.ones((4, 5))}
  _, state = tx.update(params, tx.init(params))
  assert state.scales[0].shape == (3,)


@pytest.mark.parametrize('bad', [3.0, True, '3', None])
def test_static_integers_reject_non_integers(bad):
  with pytest.raises(ValueError, match='num_clusters'):
    sgg_optax.sgg(bad)


@pytest.mark.parametrize('alias', [  # lamb and adafactor: `slow`
    sgg_optax.adamw_sgg,
    pytest.param(sgg_optax.lamb_sgg, marks=pytest.mark.slow),
    pytest.param(sgg_optax.adafactor_sgg, marks=pytest.mark.slow)])
def test_alias_sgg_eps_reaches_sgg(alias):
  """``sgg_eps`` is SGG's own eps (the base optimizer's ``eps`` is taken)."""
  params = {'w': jnp.asarray(np.r_[np.zeros(30), np.ones(30)].reshape(6, 10),
                             jnp.float32)}
  states = []
  for sgg_eps in (1e-8, 1.0):
    tx = alias(1e-2, recluster_interval=1, beta3=0.0, sgg_eps=sgg_eps)
    _, state = jax.jit(tx.update)(params, tx.init(params), params)
    states.append(rows(sgg_optax.find_sgg_states(state)[0].scales))
  assert not np.allclose(states[0], states[1])


def test_alias_signatures_follow_optax():
  names = lambda f: list(inspect.signature(f).parameters)
  sig = inspect.signature(sgg_optax.adamw_sgg).parameters
  assert names(sgg_optax.adamw_sgg)[:8] == [
      'learning_rate', 'b1', 'b2', 'eps', 'eps_root', 'mu_dtype',
      'weight_decay', 'mask']
  assert names(sgg_optax.lamb_sgg)[:7] == names(optax.lamb)[:7]
  assert names(sgg_optax.adafactor_sgg)[:12] == names(optax.adafactor)[:12]
  for alias in (sgg_optax.adamw_sgg, sgg_optax.lamb_sgg,
                sgg_optax.adafactor_sgg):
    params = inspect.signature(alias).parameters
    for name in ('num_clusters', 'recluster_interval', 'beta3', 'sgg_eps',
                 'sgg_mask', 'scale_rule', 'clamp', 'sample_size'):
      assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
  assert sig['mask'].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_alias_hyperparameters_can_be_injected():
  params = _normal(0, {'w': (6, 5)})
  tx = optax.inject_hyperparams(sgg_optax.adamw_sgg, static_args=(
      'num_clusters', 'sample_size'))(
          learning_rate=1e-2, beta3=0.5, sgg_eps=1e-8, num_clusters=2,
          recluster_interval=1)
  state = tx.init(params)
  assert set(state.hyperparams) >= {'learning_rate', 'beta3', 'sgg_eps'}
  _, state = jax.jit(tx.update)(params, state, params)
  assert rows(sgg_optax.find_sgg_states(state)[0].scales).shape == (1, 2)
