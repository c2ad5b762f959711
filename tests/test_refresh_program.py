"""The refresh as a program of its own (``SGGTransformation.refresh``).

A loop that never refreshes in the step and calls ``refresh`` after each
due update must refresh as SGG's own schedule does (same sample, K-means,
scales, ids), with one difference: update ``T`` is scaled by the previous
factors. Checked op by op (``jax.disable_jit``: both sides run the same
primitives on the same inputs, so bitwise on every CPU) and compiled
(separate XLA programs: to float32 rounding).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax

T = 3
STEPS = 7


def _params():
  return {'w': jnp.ones((6, 40)), 'blocks': jnp.ones((2, 8, 16)),
          'b': jnp.zeros(40)}


def _grads(t):
  """Fixed gradients per step (not parameter-dependent), so both loops see
  the same momentum whatever their updates did."""
  key = jax.random.fold_in(jax.random.key(0), t)
  return jax.tree.map(
      lambda p, k: jax.random.normal(k, p.shape) * (1.0 + jnp.arange(
          p.shape[-1]) / 8.0),
      _params(), dict(zip(('w', 'blocks', 'b'), jax.random.split(key, 3))))


def _build(assignment, scale_rule, num_clusters=3):
  part = sgg_optax.with_sgg(
      optax.scale_by_adam(), num_clusters=num_clusters, recluster_interval=T,
      beta3=0.5,
      stacked_layers={'w': False, 'blocks': True, 'b': False},
      assignment=assignment, scale_rule=scale_rule, sample_size=128)
  return part, optax.chain(part, optax.scale_by_learning_rate(0.1))


def _loops(assignment, scale_rule, jit, num_clusters=3):
  part, tx = _build(assignment, scale_rule, num_clusters)
  wrap = jax.jit if jit else (lambda f: f)
  own = wrap(lambda g, s: tx.update(g, s))
  plain = wrap(lambda g, s: tx.update(g, s, sgg_refresh=False))
  refresh = wrap(part.refresh)
  s_own = s_prog = tx.init(_params())
  rows = []
  for i in range(STEPS):
    u_own, s_own = own(_grads(i), s_own)
    u_prog, s_prog = plain(_grads(i), s_prog)
    due = sgg_optax.refresh_due(i, T)
    if due:
      s_prog = refresh(s_prog)
    rows.append((due, u_own, s_own, u_prog, s_prog))
  return rows


@pytest.mark.parametrize('scale_rule', ['mda', 'reference'])
@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
def test_refresh_program_is_the_own_schedule_refresh_op_by_op(assignment,
                                                              scale_rule):
  # K = 2: K-means needs no table recursion, whose eager ops (each its own
  # small compile) would dominate; the compiled test below runs K = 3.
  with jax.disable_jit():
    rows = _loops(assignment, scale_rule, jit=False, num_clusters=2)
  refreshed = 0
  for due, u_own, s_own, u_prog, s_prog in rows:
    # The states (momentum, SGG statistics, ids, count) are bitwise equal
    # after every update, refreshes included.
    jax.tree.map(np.testing.assert_array_equal, s_own, s_prog)
    if due:
      refreshed += 1
      # Update T: the own schedule scaled it by the new factors, the loop by
      # the previous ones; some differ.
      assert any(not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(u_own), jax.tree.leaves(u_prog)))
    else:
      jax.tree.map(np.testing.assert_array_equal, u_own, u_prog)
  assert refreshed == 2
  scales = sgg_optax.cluster_summary(rows[-1][4]).scales
  assert not np.allclose(scales, 1.0), 'the refreshes changed the scales'


@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
def test_refresh_program_compiled(assignment):
  rows = _loops(assignment, 'mda', jit=True)
  for due, u_own, s_own, u_prog, s_prog in rows:
    own, prog = s_own[0].sgg_state, s_prog[0].sgg_state
    np.testing.assert_array_equal(own.refreshes, prog.refreshes)
    np.testing.assert_array_equal(own.count, prog.count)
    for name in ('centres', 'scales', 'cluster_stats', 'fractions'):
      np.testing.assert_allclose(getattr(own, name), getattr(prog, name),
                                 rtol=1e-6, err_msg=name)
    if assignment == 'frozen':
      for a, b in zip(jax.tree.leaves(own.ids), jax.tree.leaves(prog.ids)):
        assert np.mean(np.asarray(a) != np.asarray(b)) <= 0.01
    if not due:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                           atol=1e-7),
                   u_own, u_prog)


def test_refresh_program_compiles_no_train_step_and_changes_no_shape():
  part, tx = _build('frozen', 'mda')
  state = tx.init(_params())
  _, state = tx.update(_grads(0), state, sgg_refresh=False)
  refresh = jax.jit(part.refresh)
  out = refresh(state)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or
               pytest.fail('shape or dtype changed'), state, out)
  # The count is the step's: refreshing counts no update.
  assert int(out[0].sgg_state.count) == int(state[0].sgg_state.count) == 1
  assert int(out[0].sgg_state.refreshes.sum()) == 3  # w, and 2 block layers
  refresh(out)
  assert refresh._cache_size() == 1


def test_aliases_carry_the_refresh():
  params = _params()
  tx = sgg_optax.adamw_sgg(1e-3, recluster_interval=2)
  state = tx.init(params)
  _, state = jax.jit(lambda g, s: tx.update(g, s, params, sgg_refresh=False))(
      _grads(0), state)
  state = jax.jit(tx.refresh)(state)
  assert sgg_optax.cluster_summary(state).refreshes.min() == 1
  assert isinstance(sgg_optax.lamb_sgg(1e-3), sgg_optax.SGGTransformation)


def test_refresh_refuses_what_it_cannot_do():
  """The refusals are decided by the state's structure, so abstract states
  (`jax.eval_shape`) meet them as concrete ones would."""
  params = _params()
  tx = sgg_optax.adafactor_sgg(1e-3)
  with pytest.raises(ValueError, match='sgg_refresh=True'):
    jax.eval_shape(tx.refresh, jax.eval_shape(tx.init, params))
  part, chain = _build('frozen', 'mda')
  state = jax.eval_shape(chain.init, params)
  with pytest.raises(ValueError, match='exactly one SGGWrapperState'):
    jax.eval_shape(part.refresh, {'a': state, 'b': state})
  with pytest.raises(ValueError, match='found 0'):
    jax.eval_shape(part.refresh, jax.eval_shape(optax.adam(1e-3).init,
                                                params))
