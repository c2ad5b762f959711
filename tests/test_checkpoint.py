"""Orbax checkpoints of an SGG run: resume bitwise, restore sharded."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_optax._src.sharding import state_shardings
from tests import _problem

ROOT = pathlib.Path(__file__).resolve().parent.parent
MID = _problem.INTERVAL + 1  # saved between the refreshes at T and 2T
TOTAL = 3 * _problem.INTERVAL


@functools.cache
def _uninterrupted():
  params, state, _ = _problem.single_device_run(TOTAL)
  return jax.device_get({'params': params, 'opt_state': state})


@pytest.fixture(scope='module')
def mid_run(tmp_path_factory):
  """A CheckpointManager directory holding the run's state at step MID."""
  directory = tmp_path_factory.mktemp('ckpt')
  params, state, _ = _problem.single_device_run(MID)
  assert int(state[1].count) % _problem.INTERVAL != 0
  saved = {'params': params, 'opt_state': state}
  options = ocp.CheckpointManagerOptions(max_to_keep=3)
  with ocp.CheckpointManager(directory, options=options) as manager:
    manager.save(MID, args=ocp.args.StandardSave(saved))
    manager.wait_until_finished()
  return directory, jax.device_get(saved)


def _assert_bitwise(actual, expected):
  assert (jax.tree.structure(actual) == jax.tree.structure(expected))
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.slow  # a fresh interpreter that imports jax and orbax
def test_resume_in_a_fresh_process_is_bitwise_identical(mid_run):
  directory, _ = mid_run
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  steps = TOTAL - MID  # crosses the refresh at step 2T
  try:
    proc = subprocess.run(
        [sys.executable, '-m', 'tests._checkpoint_worker', str(directory),
         str(MID), str(steps)], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f'resuming process timed out:\n{e.stdout}\n{e.stderr}')
  assert proc.returncode == 0, proc.stdout + proc.stderr

  with ocp.CheckpointManager(directory) as manager:
    assert manager.all_steps() == [MID, TOTAL]
    resumed = manager.restore(
        TOTAL, args=ocp.args.StandardRestore(_problem.abstract_train_state()))
  expected = _uninterrupted()
  assert isinstance(resumed['opt_state'][1].ids['b1'], optax.MaskedNode)
  assert int(resumed['opt_state'][1].count) == TOTAL
  assert not np.allclose(expected['opt_state'][1].scales, 1.0)
  _assert_bitwise(jax.device_get(resumed), expected)


def test_restore_sharded_onto_the_mesh_and_continue(mid_run):
  directory, saved = mid_run
  mesh = _problem.make_mesh(AxisType.Explicit)
  tx = _problem.make_tx()
  abstract = _problem.abstract_train_state()
  p_sh = _problem.param_shardings(mesh)
  s_sh = state_shardings(tx, abstract['params'], _problem.SPECS, mesh=mesh)
  shardings = {'params': p_sh, 'opt_state': s_sh}
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  # The same with the ids restored straight into pinned host memory.
  host_sh = state_shardings(tx, abstract['params'], _problem.SPECS,
                            mesh=mesh, ids_memory_kind='pinned_host')
  host_target = dict(target, opt_state=jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract['opt_state'], host_sh))
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(MID, args=ocp.args.StandardRestore(target))
    on_host = manager.restore(MID,
                              args=ocp.args.StandardRestore(host_target))
  assert jax.tree.map(lambda x: x.sharding, restored) == shardings
  assert isinstance(restored['opt_state'][1].ids['b1'], optax.MaskedNode)
  _assert_bitwise(jax.device_get(restored), saved)
  assert jax.tree.map(lambda x: x.sharding, on_host['opt_state']) == host_sh
  assert [x.sharding.memory_kind for x in jax.tree.leaves(
      on_host['opt_state'][1].ids)] == ['pinned_host'] * 2
  _assert_bitwise(jax.device_get(on_host), saved)

  d_sh = NamedSharding(mesh, _problem.DATA_SPEC)
  with jax.set_mesh(mesh):
    step = jax.jit(_problem.train_step(tx),
                   in_shardings=(p_sh, s_sh, d_sh, d_sh),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())),
                   donate_argnums=(0, 1))
    params, state = restored['params'], restored['opt_state']
    for t in range(MID, TOTAL):
      params, state, _ = step(params, state,
                              *jax.device_put(_problem.batch(t), d_sh))
  assert jax.tree.map(lambda x: x.sharding, state) == s_sh
  expected = _uninterrupted()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state[1].ids),
               expected['opt_state'][1].ids)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get({'params': params, 'opt_state': state}),
               expected)


@pytest.mark.parametrize('make', [
    lambda: __import__('sgg_optax').adamw_sgg(1e-3),  # every leaf 1-D
    lambda: __import__('sgg_optax').adamw_sgg(1e-3, sgg_mask=False),
], ids=['all 1-D', 'sgg_mask=False'])
def test_state_without_grouped_layers_saves_and_restores(make, tmp_path):
  """No grouped layer (G = 0): the per-layer statistics are placeholders,
  not zero-size arrays, which Orbax refuses to save."""
  import sgg_optax
  params = {'b': np.ones(5, np.float32), 'scale': np.ones(3, np.float32)}
  if 'sgg_mask' in str(make):
    params['w'] = np.ones((4, 3), np.float32)
  tx = make()
  state = tx.init(params)
  assert isinstance(sgg_optax.find_sgg_states(state)[0].centres,
                    optax.MaskedNode)
  _, state = jax.jit(tx.update)(params, state, params)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'state', state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / 'state',
                            jax.eval_shape(tx.init, params))
  _assert_bitwise(jax.device_get(restored), jax.device_get(state))
  summary = sgg_optax.cluster_summary(state)
  assert summary.scales.shape[0] == 0 and summary.names == ()


def test_upgrade_state_walks_a_flax_train_state(tmp_path):
  """upgrade_state restores into a flax TrainState, from the state in
  memory and from the dict Orbax restores without a target."""
  from flax.training import train_state

  import sgg_optax
  params = {'w': np.ones((4, 3), np.float32), 'b': np.zeros(3, np.float32)}
  ts = train_state.TrainState.create(
      apply_fn=lambda p, x: x, params=params,
      tx=sgg_optax.adamw_sgg(1e-2, recluster_interval=1))
  ts = ts.apply_gradients(grads=jax.tree.map(np.ones_like, params))
  target = jax.eval_shape(lambda: ts)
  same = sgg_optax.upgrade_state(ts, target)
  assert type(same) is type(ts)
  _assert_bitwise(same.opt_state, ts.opt_state)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'ts', ts)
    ckpt.wait_until_finished()
    raw = ckpt.restore(tmp_path / 'ts')  # no target: dicts and lists
  assert isinstance(raw, dict)
  upgraded = sgg_optax.upgrade_state(raw, target)
  assert type(upgraded) is type(ts) and upgraded.apply_fn is ts.apply_fn
  _assert_bitwise(jax.device_get(upgraded.opt_state),
                  jax.device_get(ts.opt_state))
  assert int(upgraded.step) == 1
