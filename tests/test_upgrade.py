"""Checkpoints written by sgg_optax 0.1.x: upgraded whole, or refused.

0.1.x kept each per-layer statistic of ``SGGState`` as a tuple of one array
per grouped parameter (``(K,)``, or ``(L, K)`` for a stacked one). These
tests write such a checkpoint with Orbax (the 0.1.x layout rebuilt from a
0.2 state, row for row) and check that restoring it onto a 0.2 target
fails, and that restoring it without a target and upgrading it gives the
0.2 state bitwise, which then keeps training.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgg_optax
from sgg_optax._src import transform

ocp = pytest.importorskip('orbax.checkpoint')

PARAMS = {'w': jnp.ones((8, 6)), 'b': jnp.zeros(6),
          'blocks': jnp.ones((3, 4, 4))}
STACKED = {'w': False, 'b': False, 'blocks': True}


class OldSGGState(NamedTuple):  # the 0.1.x layout, field for field
  count: Any
  ids: Any
  centres: tuple
  scales: tuple
  cluster_stats: tuple
  fractions: tuple
  refreshes: tuple
  global_stat: Any


def _tx():
  return optax.chain(
      optax.scale_by_adam(),
      sgg_optax.sgg(recluster_interval=2, beta3=0.5, stacked_layers=STACKED),
      optax.scale_by_learning_rate(0.1))


def _grads(t):
  rng = np.random.default_rng(t)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                            jnp.float32), PARAMS)


def _run(tx, state, steps, start=0):
  step = jax.jit(tx.update)
  for t in range(start, start + steps):
    _, state = step(_grads(t), state, PARAMS)
  return state


def _as_old(state: transform.SGGState) -> OldSGGState:
  """The same state as 0.1.x held it: a tuple of rows per parameter."""
  lays = [lay for lay in transform.layer_layouts(
      PARAMS, stacked_layers=STACKED) if lay is not None]
  def split(a):
    return tuple(a[lay.offset:lay.offset + lay.rows].reshape(
        lay.batch + a.shape[1:]) for lay in lays)
  return OldSGGState(state.count, state.ids, *(
      split(getattr(state, f)) for f in ('centres', 'scales', 'cluster_stats',
                                          'fractions', 'refreshes')),
                     state.global_stat)


@pytest.fixture(scope='module')
def old_checkpoint(tmp_path_factory):
  tx = _tx()
  state = _run(tx, tx.init(PARAMS), 3)  # through a refresh
  assert not np.all(np.asarray(state[1].scales) == 1.0)
  old = (state[0], _as_old(state[1]), state[2])
  assert [np.shape(s) for s in old[1].scales] == [(3, 3), (3,)]
  path = tmp_path_factory.mktemp('old') / 'ckpt'
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {'opt_state': old})
  return path, state


def test_a_0_1_checkpoint_is_refused_by_a_0_2_target(old_checkpoint):
  path, state = old_checkpoint
  target = {'opt_state': jax.eval_shape(_tx().init, PARAMS)}
  with ocp.StandardCheckpointer() as ckptr, pytest.raises(
      ValueError, match=r"'centres'\) not found"):
    ckptr.restore(path, target)


def test_a_0_1_checkpoint_upgrades_bitwise_and_trains_on(old_checkpoint):
  path, state = old_checkpoint
  tx = _tx()
  with ocp.StandardCheckpointer() as ckptr:
    raw = ckptr.restore(path)  # no target: dicts, lists, None
  target = {'opt_state': jax.eval_shape(tx.init, PARAMS)}
  got = sgg_optax.upgrade_state(raw, target)['opt_state']
  assert jax.tree.structure(got) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, got, state)
  # ... and it continues exactly as the state that was never saved
  want = _run(tx, state, 2, start=3)
  cont = _run(tx, jax.tree.map(jnp.asarray, got), 2, start=3)
  jax.tree.map(np.testing.assert_array_equal, cont, want)


def test_a_0_2_state_passes_through_unchanged():
  tx = _tx()
  state = _run(tx, tx.init(PARAMS), 2)
  got = sgg_optax.upgrade_state(state, jax.eval_shape(tx.init, PARAMS))
  jax.tree.map(np.testing.assert_array_equal, got, state)


def test_a_state_of_another_model_is_refused_whole():
  tx = _tx()
  state = _run(tx, tx.init(PARAMS), 2)
  old = (state[0], _as_old(state[1]), state[2])
  other = dict(PARAMS, w=jnp.ones((8, 7)))
  with pytest.raises(sgg_optax.StateMismatchError, match='w'):
    sgg_optax.upgrade_state(old, jax.eval_shape(tx.init, other))
  fewer = old[1]._replace(scales=old[1].scales[:1])  # a parameter missing
  with pytest.raises(sgg_optax.StateMismatchError, match='scales'):
    sgg_optax.upgrade_state((old[0], fewer, old[2]),
                            jax.eval_shape(tx.init, PARAMS))
