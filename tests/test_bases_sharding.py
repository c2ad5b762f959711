"""CAME, APOLLO and Adam-mini (and SGG on them) on the 8-device fake mesh.

The problem is ``tests/_problem.py``'s FSDP x tensor-parallel MLP (the 8
fake CPU devices come from the root ``conftest.py``), trained a few steps
with each optimizer: the state gets its shardings from
:func:`sgg_optax.state_shardings`, keeps them step after step without a
recompile, the steps gather no whole parameter, and the results are those
of the same steps on one device.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sgg_optax
from tests import _problem

STEPS = 3
EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto
# Adam-mini roles of the MLP's leaves: 'w2' is split into 4 heads of 16
# columns along its 'data'-sharded output axis.
_ROLES = {'w1': 'mlp', 'b1': 'whole', 'w2': 'query'}
_SGG = dict(recluster_interval=2, sample_size=_problem.SAMPLE)

OPTIMIZERS = {
    'came': lambda: sgg_optax.came(1e-2, weight_decay=0.1),
    'apollo': lambda: sgg_optax.apollo(1e-2, rank=4, update_proj_gap=2,
                                       weight_decay=0.1),
    'apollo_svd': lambda: sgg_optax.apollo(1e-2, rank=4, update_proj_gap=2,
                                           proj='svd'),
    'apollo_mini': lambda: sgg_optax.apollo(
        1e-2, rank=1, scale_type='tensor', scale=128, update_proj_gap=2),
    'adam_mini': lambda: sgg_optax.adam_mini(
        1e-2, weight_decay=0.1, num_heads=4,
        block_fn=lambda name, p: _ROLES[name]),
    'came_sgg': lambda: sgg_optax.came_sgg(1e-2, **_SGG),
    'apollo_sgg': lambda: sgg_optax.apollo_sgg(1e-2, rank=4,
                                               update_proj_gap=2, **_SGG),
}
# Each base once in the fast set; the other mode, the SVD projection (its
# compile is long), APOLLO-Mini and the SGG aliases (whose SGG part the
# core's sharding tests cover) in the slow set.
_FAST = {'came': AUTO, 'apollo': EXPLICIT, 'adam_mini': EXPLICIT}
CASES = pytest.mark.parametrize('name,mode', [
    pytest.param(name, mode,
                 marks=[pytest.mark.slow] * (mode != _FAST.get(name)),
                 id=f'{name}-{"explicit" if mode == EXPLICIT else "auto"}')
    for name in OPTIMIZERS for mode in (EXPLICIT, AUTO)])


@functools.cache
def _single_device(name: str):
  """Params, state and losses of the same steps on one device."""
  tx = OPTIMIZERS[name]()
  params = jax.tree.map(jnp.asarray, _problem.init_params())
  state = jax.jit(tx.init)(params)
  step = jax.jit(_problem.train_step(tx))
  losses = []
  for t in range(STEPS):
    params, state, value = step(params, state, *_problem.batch(t))
    losses.append(float(value))
  return jax.device_get((params, state)), losses


_ALL_GATHER = re.compile(r'=\s*\(?([a-z0-9]+)\[([0-9,]*)\][^=]*?\sall-gather'
                         r'(?:-start)?\(')


def _all_gathers(hlo: str) -> set[tuple[int, ...]]:
  """The result shapes of the all-gathers in ``hlo``."""
  return {tuple(int(d) for d in dims.split(',') if d)
          for _, dims in _ALL_GATHER.findall(hlo)}


def _gathers_a_whole_weight(hlo: str) -> bool:
  """Whether a result of an all-gather is as large as a whole weight.

  The loss's FSDP gathers give each device a weight's 'model' shard,
  ``(128, 32)`` and ``(32, 64)``; a whole weight would be ``(128, 64)`` or
  ``(64, 64)`` (8,192 or 4,096 elements), or any shape of 8,192 or more.
  """
  weights = [v for v in _problem.SHAPES.values() if len(v) == 2]
  return any(shape in weights or (len(shape) == 1 and shape[0] in [
      int(np.prod(w)) for w in weights]) or np.prod(shape) >= max(
          np.prod(w) for w in weights) for shape in _all_gathers(hlo))


def _check_state_specs(s_sh, abstract) -> None:
  """The first moments with a parameter's shape are sharded like it; every
  other leaf (factored, projected and per-block statistics, counts) is
  replicated."""
  flat = jax.tree_util.tree_flatten_with_path(s_sh)[0]
  moments = 0
  for (path, sh), x in zip(flat, jax.tree.leaves(abstract)):
    names = [getattr(k, 'name', getattr(k, 'key', None)) for k in path]
    param = names[-1] if names[-1] in _problem.SHAPES else None
    if ('mu' in names and param
        and x.shape == _problem.SHAPES[param]):
      assert sh.spec == _problem.SPECS[param], (path, sh.spec)
      moments += 1
    elif not (x.shape == _problem.SHAPES.get(param)
              and sh.spec == _problem.SPECS[param]):
      # Replicated: on a mesh with explicit axes ``state_shardings`` spells
      # it P(None, ...), as a jitted step returns it.
      assert all(a is None for a in sh.spec), (path, x.shape, sh.spec)
  assert moments >= 1


@CASES
def test_sharded_steps_keep_shardings_and_match_one_device(name, mode):
  assert len(jax.devices()) == 8
  tx = OPTIMIZERS[name]()
  mesh = _problem.make_mesh(mode)
  p_sh = _problem.param_shardings(mesh)
  d_sh = NamedSharding(mesh, _problem.DATA_SPEC)
  with jax.set_mesh(mesh):
    params = jax.device_put(_problem.init_params(), p_sh)
    s_sh = sgg_optax.state_shardings(tx, params)
    _check_state_specs(s_sh, jax.eval_shape(tx.init, params))
    state = jax.jit(tx.init, out_shardings=s_sh)(params)
    step = jax.jit(_problem.train_step(tx),
                   in_shardings=(p_sh, s_sh, d_sh, d_sh),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())),
                   donate_argnums=(0, 1))
    x, y = jax.device_put(_problem.batch(0), d_sh)
    hlo = step.lower(params, state, x, y).compile().as_text()
    if mode == EXPLICIT:  # the state's types do not change in a step
      typed = jax.eval_shape(_problem.train_step(tx), params, state, x, y)[1]
      assert (jax.tree.map(lambda a: jax.typeof(a).sharding.spec, typed)
              == jax.tree.map(lambda a: jax.typeof(a).sharding.spec, state))
    losses = []
    for t in range(STEPS):
      x, y = jax.device_put(_problem.batch(t), d_sh)
      params, state, value = step(params, state, x, y)
      losses.append(float(value))
      assert jax.tree.map(lambda a: a.sharding.spec, state) == jax.tree.map(
          lambda s: s.spec, s_sh)
    assert step._cache_size() == 1  # noqa: SLF001

  # No step gathers a whole weight, except APOLLO's SVD, which needs the
  # whole gradient at its refreshes.
  assert _gathers_a_whole_weight(hlo) == (name == 'apollo_svd')
  (ref_params, ref_state), ref_losses = _single_device(name)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Different programs: reductions run in other orders (APOLLO's SVD
  # turns those roundings into larger ones).
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5),
               jax.device_get((params, state)), (ref_params, ref_state))


def test_the_all_gather_pattern_finds_a_gather():
  # _all_gathers reads XLA's text; this keeps it honest.
  mesh = _problem.make_mesh(EXPLICIT)
  with jax.set_mesh(mesh):
    x = jax.device_put(jnp.ones((64, 64)), NamedSharding(mesh, P('data')))
    f = jax.jit(lambda a: jax.sharding.reshard(a, P()) * 2)
    hlo = f.lower(x).compile().as_text()
  assert _all_gathers(hlo) == {(64, 64)}
  assert _gathers_a_whole_weight(hlo)
