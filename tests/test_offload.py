"""SGG's cluster ids kept in pinned host memory between steps."""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_optax._src.sharding import ids_to_device, state_shardings
from tests import _problem
from tests._rows import rows

STEPS = 3 * _problem.INTERVAL


def _run(mode, ids_memory_kind):
  """``STEPS`` donated steps; the state's shardings after each, the end."""
  mesh = _problem.make_mesh(mode)
  tx = _problem.make_tx()
  p_sh = _problem.param_shardings(mesh)
  d_sh = NamedSharding(mesh, _problem.DATA_SPEC)
  base = _problem.train_step(tx)

  def step(params, state, x, y):
    return base(params, ids_to_device(state), x, y)

  with jax.set_mesh(mesh):
    params = jax.device_put(_problem.init_params(), p_sh)
    s_sh = state_shardings(tx, params, ids_memory_kind=ids_memory_kind)
    state = jax.jit(tx.init, out_shardings=s_sh)(params)
    jitted = jax.jit(step, in_shardings=(p_sh, s_sh, d_sh, d_sh),
                     out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())),
                     donate_argnums=(0, 1))
    compiled = jitted.lower(
        params, state, *jax.device_put(_problem.batch(0), d_sh)).compile()
    seen = [jax.tree.map(lambda x: x.sharding, state)]
    for t in range(STEPS):
      params, state, _ = jitted(params, state,
                                *jax.device_put(_problem.batch(t), d_sh))
      seen.append(jax.tree.map(lambda x: x.sharding, state))
    assert jitted._cache_size() == 1
  return jax.device_get((params, state)), seen, s_sh, compiled


def test_ids_stay_in_pinned_host_memory_and_results_are_unchanged():
  # Explicit axes (jax.make_mesh's default); the recipe is the same in auto
  # mode (checked by hand: same placement, same numbers).
  mode = AxisType.Explicit
  (params, state), seen, s_sh, compiled = _run(mode, 'pinned_host')
  ids = jax.tree.leaves(state_shardings(
      _problem.make_tx(), _problem.init_params(), _problem.SPECS,
      mesh=_problem.make_mesh(mode), ids_memory_kind='pinned_host')[1].ids)
  assert [s.memory_kind for s in ids] == ['pinned_host'] * 2
  for shardings in seen:  # before the first step and after every step
    assert shardings == s_sh
    kinds = [s.memory_kind for s in jax.tree.leaves(shardings[1].ids)]
    assert kinds == ['pinned_host'] * 2
  # The executable itself takes and returns the ids in host memory.
  state_in = compiled.input_shardings[0][1]
  state_out = compiled.output_shardings[1]
  for tree in (state_in, state_out):
    assert [s.memory_kind for s in jax.tree.leaves(tree[1].ids)] == [
        'pinned_host'] * 2
    assert tree[1].scales.memory_kind == 'device'
    assert tree[0].mu['w1'].memory_kind == 'device'

  # Same numbers as keeping the ids on the device (bitwise: same program up
  # to the copies).
  (ref_params, ref_state), ref_seen, _, _ = _run(mode, None)
  assert all(s.memory_kind == 'device'
             for s in jax.tree.leaves(ref_seen[-1]))
  assert not np.allclose(rows(ref_state[1].scales), 1.0)  # refreshed
  jax.tree.map(np.testing.assert_array_equal, (params, state),
               (ref_params, ref_state))
