"""experiments.checkpointing: placeholders are structure, arrays are data.

An optimizer state holds placeholders (``optax.MaskedNode``: e.g. SGG's
cluster ids of an ungrouped norm scale) next to its arrays. A checkpoint
saves only the arrays and restores them all; a placeholder needs nothing,
while a missing array refuses the whole restore, writing nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.pretraining import checkpointing
from experiments.pretraining.config import TrainConfig


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.scale = nnx.Param(jnp.ones((4,)))  # a norm-like 1-D parameter

  def __call__(self, x):
    return self.linear(x) * self.scale


def _objects(seed, steps=1):
  """A model and an optimizer whose state holds MaskedNode placeholders."""
  model = _Net(nnx.Rngs(seed))
  masked = optax.masked(optax.scale_by_adam(),
                        lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  opt = nnx.Optimizer(model, optax.chain(masked, optax.sgd(0.1)),
                      wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(seed), (2, 3))
  for _ in range(steps):
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    opt.update(model, grads)
  return model, opt


def _placeholders(*objs):
  return [(i, path) for i, obj in enumerate(objs)
          for path, var in nnx.to_flat_state(nnx.state(obj))
          if isinstance(var.get_value(), optax.MaskedNode)]


def _snapshot(*objs):
  return {k: np.asarray(v) for k, v in
          checkpointing._flat_arrays(*objs).items()}


def _assert_bitwise(got, want):
  assert got.keys() == want.keys()
  for k in want:
    assert got[k].dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_the_state_holds_placeholders_which_are_not_saved():
  model, opt = _objects(0)
  assert _placeholders(model, opt)  # else this file tests nothing
  flat = checkpointing._flat_arrays(model, opt)
  assert all(isinstance(v, jax.Array) for v in flat.values())
  for i, path in _placeholders(model, opt):
    assert '/'.join(map(str, (i,) + tuple(path))) not in flat


def test_a_state_with_placeholders_round_trips():
  src = _objects(0, steps=2)
  dst = _objects(1)
  want = _snapshot(*src)
  checkpointing._restore_into(checkpointing._flat_arrays(*src), *dst)
  _assert_bitwise(_snapshot(*dst), want)
  assert _placeholders(*dst) == _placeholders(*src)


def test_a_state_with_placeholders_round_trips_through_orbax(tmp_path):
  src, dst = _objects(0, steps=2), _objects(1)
  cfg = TrainConfig(optimizer='adam_sgg')
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), 1, cfg)
  ckpt.save(2, *src, {'train': [[0, 1.5]]})
  restored = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), 1, cfg
                                        ).restore(*dst)
  assert restored == (2, {'train': [[0, 1.5]]})
  _assert_bitwise(_snapshot(*dst), _snapshot(*src))


@pytest.mark.parametrize('drop', ['model', 'optimizer'])
def test_a_missing_array_refuses_the_restore_and_writes_nothing(drop):
  src, dst = _objects(0, steps=2), _objects(1)
  flat = checkpointing._flat_arrays(*src)
  prefix = '0/' if drop == 'model' else '1/opt_state/'
  # The last array in order, so that every earlier one (the whole model
  # when an optimizer array is missing) would be written by a half-restore.
  missing = [k for k in flat if k.startswith(prefix)][-1]
  del flat[missing]
  before = _snapshot(*dst)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=f'checkpoint lacks the array {missing}$'):
    checkpointing._restore_into(flat, *dst)
  _assert_bitwise(_snapshot(*dst), before)


def test_an_array_of_another_shape_refuses_the_restore():
  src, dst = _objects(0, steps=2), _objects(1)
  flat = checkpointing._flat_arrays(*src)
  key = '0/linear/kernel'
  flat[key] = jnp.zeros((4, 3), flat[key].dtype)
  before = _snapshot(*dst)
  with pytest.raises(checkpointing.CheckpointMismatchError, match=key):
    checkpointing._restore_into(flat, *dst)
  _assert_bitwise(_snapshot(*dst), before)


def test_a_value_neither_array_nor_placeholder_is_not_silently_dropped():
  model, opt = _objects(0)
  model.note = nnx.Variable('not an array')
  with pytest.raises(TypeError, match='cannot checkpoint 0/note'):
    checkpointing._flat_arrays(model, opt)


def test_a_0_1_layout_checkpoint_is_refused_by_name(tmp_path):
  """A checkpoint whose SGG statistics are one array per parameter (the
  0.1.x layout: ``.../scales/0``, ``.../scales/1``) is refused before any
  array is read, with what to do; the objects are unchanged."""
  import orbax.checkpoint as ocp

  cfg = TrainConfig(optimizer='adam_sgg')
  src, dst = _objects(0, steps=2), _objects(1)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), 1, cfg)
  flat = checkpointing._flat_arrays(*src)
  key = '1/opt_state/1/0/sgg_state/scales'  # as if SGG's scales were there
  old = dict(flat, **{f'{key}/0': jnp.ones(3), f'{key}/1': jnp.ones(3)})
  ckpt.manager.save(2, args=ocp.args.Composite(
    state=ocp.args.StandardSave(old), curves=ocp.args.JsonSave({}),
    meta=ocp.args.JsonSave(checkpointing.fingerprint(cfg))), force=True)
  ckpt.manager.wait_until_finished()
  wanted = dict(flat, **{key: jnp.ones((2, 3))})
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='layout of sgg_optax 0.1.x'):
    checkpointing._check_stored_keys(ckpt.manager, 2, wanted)
  # and through restore: a key it lacks, refused before reading, unchanged
  before = _snapshot(*dst)
  del old['0/linear/kernel']
  ckpt.manager.save(3, args=ocp.args.Composite(
    state=ocp.args.StandardSave(old), curves=ocp.args.JsonSave({}),
    meta=ocp.args.JsonSave(checkpointing.fingerprint(cfg))), force=True)
  ckpt.manager.wait_until_finished()
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='lacks the array 0/linear/kernel'):
    ckpt.restore(*dst)
  _assert_bitwise(_snapshot(*dst), before)
