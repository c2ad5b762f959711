"""The refresh decided by the loop: the ``sgg_refresh`` extra argument."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax

T = 3
STEPS = 8  # refreshes at steps 3 and 6
SHAPES = {'a': (24, 40), 'b': (16, 8, 4), 'bias': (40,)}
_LR = optax.scale_by_learning_rate(0.05)
FORMS = {
    'chain': lambda **kw: optax.chain(
        optax.scale_by_adam(), sgg_optax.sgg(recluster_interval=T, **kw),
        _LR),
    'with_sgg': lambda **kw: optax.chain(
        sgg_optax.with_sgg(optax.scale_by_adam(), recluster_interval=T,
                           **kw), _LR),
    'adamw_sgg': lambda **kw: sgg_optax.adamw_sgg(
        0.05, weight_decay=1e-2, recluster_interval=T, **kw),
    'inject_hyperparams': lambda **kw: optax.chain(
        optax.scale_by_adam(),
        optax.inject_hyperparams(
            sgg_optax.sgg, static_args=('num_clusters',
                                        'sample_size', 'assignment'))(
                                            recluster_interval=T, beta3=0.5,
                                            **kw), _LR),
}


def _grads(step):
  rng = np.random.default_rng(step)
  return {k: jnp.asarray(rng.standard_t(3, size=s), jnp.float32)
          for k, s in SHAPES.items()}


def _params():
  return {k: jnp.ones(s, jnp.float32) for k, s in SHAPES.items()}


def _step(tx):
  @functools.partial(jax.jit, static_argnames='refresh')
  def step(params, state, grads, refresh='default'):
    kw = {} if refresh == 'default' else {'sgg_refresh': refresh}
    updates, state = tx.update(grads, state, params, **kw)
    return optax.apply_updates(params, updates), state
  return step


def _run(tx, decide):
  step, params = _step(tx), _params()
  state = tx.init(params)
  for i in range(STEPS):
    params, state = step(params, state, _grads(i), refresh=decide(i))
  return params, state


def _scales(state):
  (s,) = sgg_optax.find_sgg_states(state)
  return np.concatenate([np.ravel(x) for x in s.scales])


# Both assignments in the fast set, on the chain link and on the injected
# momentum form; the other six cases (with_sgg and adamw_sgg, whose refresh
# is the injected form's) run in the `slow` set.
_FAST = {('chain', 'frozen'), ('inject_hyperparams', 'dynamic')}


@pytest.mark.parametrize('form,assignment', [
    pytest.param(form, assignment, id=f'{form}-{assignment}',
                 marks=() if (form, assignment) in _FAST else pytest.mark.slow)
    for form in FORMS for assignment in ('frozen', 'dynamic')])
def test_loop_decided_refresh_gives_the_default_results(form, assignment):
  tx = FORMS[form](assignment=assignment)
  want = _run(tx, lambda i: 'default')
  got = _run(tx, lambda i: sgg_optax.refresh_due(i, T))
  assert not np.all(_scales(got[1]) == 1.0)  # it did refresh
  # The same arithmetic in another program: XLA may fuse it differently.
  chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-7)
  jax.tree.map(lambda a, b: chex_close(np.asarray(a, np.float64),
                                       np.asarray(b, np.float64)), want, got)
  (sw,), (sg,) = (sgg_optax.find_sgg_states(s) for s in (want[1], got[1]))
  jax.tree.map(np.testing.assert_array_equal, sw.ids, sg.ids)
  np.testing.assert_array_equal(sw.refreshes, sg.refreshes)


def _hlo(tx, refresh):
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}
  state = jax.eval_shape(tx.init, params)
  return _step(tx).lower(params, state, params,
                         refresh=refresh).compile().as_text()


# The momentum form and the injected one in the fast set (the chain link's
# plain step: also tests/test_memory.py, tests/test_sharding.py).
@pytest.mark.parametrize('form', [
    form if form in ('with_sgg', 'inject_hyperparams')
    else pytest.param(form, marks=pytest.mark.slow) for form in FORMS])
def test_plain_step_holds_no_conditional(form):
  tx = FORMS[form]()
  op = re.compile(r'\sconditional\(')
  assert op.search(_hlo(tx, 'default'))
  assert not op.search(_hlo(tx, False))


def test_forced_refresh_and_skipped_refresh():
  tx = FORMS['chain']()
  # Off the schedule: a refresh at every step, or never.
  every = _run(tx, lambda i: True)[1]
  never = _run(tx, lambda i: False)[1]
  (s_every,), (s_never,) = (sgg_optax.find_sgg_states(s)
                            for s in (every, never))
  np.testing.assert_array_equal(np.ravel(s_every.refreshes), STEPS)
  np.testing.assert_array_equal(np.ravel(s_never.refreshes), 0)
  assert np.all(_scales(never) == 1.0)
  assert int(s_never.count) == STEPS  # the count still advances
  # Refreshing at every step: the scales are those of T=1.
  t1 = _run(optax.chain(optax.scale_by_adam(),
                        sgg_optax.sgg(recluster_interval=1), _LR),
            lambda i: 'default')[1]
  np.testing.assert_allclose(_scales(every), _scales(t1), rtol=1e-5)


def test_multi_steps_passes_the_decision_on():
  k = 2
  tx = optax.MultiSteps(FORMS['chain'](), every_k_schedule=k)
  want = _run(tx, lambda i: 'default')
  got = _run(tx, lambda i: sgg_optax.refresh_due(i // k, T))
  (s,) = sgg_optax.find_sgg_states(got[1])
  assert int(s.refreshes[0]) == STEPS // k // T
  np.testing.assert_allclose(_scales(got[1]), _scales(want[1]), rtol=1e-5)


@pytest.mark.parametrize('bad', [1, 0, 'yes', jnp.bool_(True)])
def test_refresh_argument_must_be_a_bool_or_none(bad):
  tx = FORMS['chain']()
  params = _params()
  with pytest.raises(ValueError, match='sgg_refresh'):
    tx.update(params, tx.init(params), params, sgg_refresh=bad)


def test_traced_refresh_argument_is_rejected():
  tx = FORMS['with_sgg']()
  params = _params()

  @jax.jit
  def step(state, refresh):
    return tx.update(params, state, params, sgg_refresh=refresh)

  with pytest.raises(ValueError, match='static argument'):
    step(tx.init(params), True)


def test_numpy_bool_is_accepted():
  tx = FORMS['chain']()
  params = _params()
  # Jitted (the argument is read while tracing, as in eager mode): op by op,
  # the refresh takes seconds.
  update = jax.jit(functools.partial(tx.update, sgg_refresh=np.bool_(True)))
  _, state = update(_grads(0), tx.init(params), params)
  assert int(state[1].refreshes[0]) == 1


def test_refresh_due_is_the_on_device_schedule():
  # The device refreshes when the incremented count is a multiple of T.
  for t in (1, 3, 500):
    due = [i for i in range(1200) if sgg_optax.refresh_due(i, t)]
    assert due == [c - 1 for c in range(1, 1201) if c % t == 0]
  assert sgg_optax.refresh_due(np.int64(4), np.int32(5))
  with pytest.raises(ValueError, match='recluster_interval'):
    sgg_optax.refresh_due(3, 0)
  with pytest.raises(ValueError, match='count'):
    sgg_optax.refresh_due(-1, 3)
  with pytest.raises(ValueError, match='count'):
    sgg_optax.refresh_due(2.5, 3)
