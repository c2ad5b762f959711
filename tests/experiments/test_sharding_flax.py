"""Sharding of SGG's state with Flax models (NNX and Linen) on a mesh."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import sgg_optax
from experiments.common import model as llama
from experiments.common import model_config
from sgg_optax._src.sharding import state_partition_specs, state_shardings
from tests import _problem
from tests._rows import rows

_is_masked = lambda x: isinstance(x, optax.MaskedNode)


def test_state_specs_for_nnx_llama():
  config = model_config.get_config('tiny', n_layers=2)
  model = nnx.eval_shape(lambda: llama.Llama(config, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  param_specs = model_config.partition_specs(model, model_config.FSDP_TP_RULES)
  tx = sgg_optax.adamw_sgg(1e-3)
  specs = state_partition_specs(tx, params, param_specs)
  abstract = jax.eval_shape(tx.init, params)
  assert (jax.tree.structure(specs, is_leaf=_is_masked)
          == jax.tree.structure(abstract, is_leaf=_is_masked))
  (ids_specs,) = [s.ids for s in sgg_optax.find_sgg_states(specs)]
  flat_ids = dict(nnx.to_flat_state(ids_specs))
  flat_params = dict(nnx.to_flat_state(param_specs))
  assert flat_ids.keys() == flat_params.keys()
  grouped = 0
  for path, spec in flat_ids.items():
    if path[-1] == 'scale':  # RMSNorm scales: no ids
      assert _is_masked(spec.get_value())
    else:
      assert spec.get_value() == flat_params[path].get_value()
      grouped += 1
  assert grouped == 1 + 2 * 7  # tied embedding and 7 matrices per block
  (sgg_spec,) = sgg_optax.find_sgg_states(specs)
  # one replicated (G, K) array per statistic, whatever the depth
  assert sgg_spec.count == P() and sgg_spec.scales == P()


class _LinenMLP(nn.Module):
  """Two dense layers with logical axis annotations."""

  @nn.compact
  def __call__(self, x):
    init = lambda names: nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), names)
    x = nn.Dense(32, kernel_init=init(('embed', 'mlp')),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                        ('mlp',)))(x)
    return nn.Dense(16, use_bias=False,
                    kernel_init=init(('mlp', 'embed')))(jnp.tanh(x))


def test_state_shardings_for_linen_logical_partitioning():
  mesh = _problem.make_mesh(AxisType.Explicit)
  rules = (('embed', 'data'), ('mlp', 'model'))
  boxed = jax.eval_shape(_LinenMLP().init, jax.random.key(0),
                         jnp.ones((8, 64)))
  param_shardings = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(boxed), mesh, rules)
  tx = sgg_optax.adamw_sgg(1e-3)
  ours = state_shardings(tx, nn.unbox(boxed), param_shardings)

  # Linen's own route: boxes carry the names through tx.init.
  linen = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(jax.eval_shape(tx.init, boxed)), mesh, rules)
  ours_flat = {jax.tree_util.keystr(k): v for k, v in
               jax.tree_util.tree_flatten_with_path(ours)[0]}
  linen_flat = {jax.tree_util.keystr(k): v for k, v in
                jax.tree_util.tree_flatten_with_path(linen)[0]}
  # Linen gives a spec to the boxed MaskedNode of the ungrouped bias (an
  # empty subtree); everything else agrees.
  extra = set(linen_flat) - set(ours_flat)
  assert len(extra) == 1 and 'ids' in extra.pop()
  shapes = {jax.tree_util.keystr(k): v.ndim for k, v in
            jax.tree_util.tree_flatten_with_path(
                jax.eval_shape(tx.init, nn.unbox(boxed)))[0]}
  for key, sharding in ours_flat.items():
    # Linen spells a replicated leaf P(); ours, on explicit axes, P(None, ...)
    # as a jitted step returns it: the same placement.
    assert linen_flat[key].is_equivalent_to(sharding, shapes[key]), key
  (sgg_spec,) = sgg_optax.find_sgg_states(ours)
  kernel = sgg_spec.ids['params']['Dense_0']['kernel']
  assert kernel.spec == P('data', 'model')
  assert sgg_spec.scales.spec == P(None, None)


@pytest.mark.slow  # compiles and trains a LLaMA on a 4x2 mesh
def test_nnx_optimizer_on_a_mesh_keeps_ids_with_their_kernels():
  """``nnx.Optimizer`` on a mesh with Auto axes (NNX forward passes need
  them: the model's activations carry no sharding annotations)."""
  config = model_config.get_config('tiny', n_layers=1, vocab_size=256, dim=64,
                                   ffn_dim=128, n_heads=4, n_kv_heads=2)
  mesh = _problem.make_mesh(AxisType.Auto)
  tx = optax.chain(optax.scale_by_adam(),
                   sgg_optax.sgg(recluster_interval=1, sample_size=256),
                   optax.scale_by_learning_rate(1e-2))
  tokens = np.random.default_rng(0).integers(0, 256, (8, 17))

  @nnx.jit
  def step(model, opt, batch):
    loss, grads = nnx.value_and_grad(llama.loss_fn)(model, batch)
    opt.update(model, grads)
    return loss

  with jax.set_mesh(mesh), nnx.logical_axis_rules(model_config.FSDP_TP_RULES):
    model = llama.Llama(config, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    expected = state_shardings(
        tx, nnx.state(model, nnx.Param),
        model_config.partition_specs(model, model_config.FSDP_TP_RULES))
    # At construction nnx.Optimizer shards every state leaf as the helper says
    # (``opt.opt_state`` keeps the NamedTuples, hence the leaf order).
    actual = [x.sharding for x in jax.tree.leaves(opt.opt_state)]
    want = jax.tree.leaves(expected)
    # Adam: count, mu and nu of 11 params; SGG: count, 8 ids, 5 per-layer
    # statistics (one array each for the 8 grouped kernels), the global
    # statistic.
    assert len(actual) == len(want) == 1 + 2 * 11 + 1 + 8 + 5 + 1
    for a, w in zip(actual, want):
      assert a.spec == w.spec and a.mesh == w.mesh, (a, w)
    batch = jax.device_put(jnp.asarray(tokens, jnp.int32), P('data'))
    losses = [float(step(model, opt, batch)) for _ in range(2)]

  assert np.isfinite(losses).all() and losses[1] < losses[0]
  sgg_state = opt.opt_state[1]
  assert int(sgg_state.count[...]) == 2
  assert not np.allclose(rows(sgg_state.scales), 1.0)  # refreshed
  # After the refreshes each id array still lives with its kernel. (Under
  # auto axes nnx.jit leaves output shardings to XLA's propagation: Adam's
  # ``nu`` of the RMSNorm scales, for one, comes back sharded over 'data'.)
  for path, kernel in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    ids = functools.reduce(lambda t, k: t[k], path, sgg_state.ids)
    if path[-1] == 'scale':
      continue
    assert ids[...].dtype == jnp.uint8
    assert ids[...].sharding == kernel[...].sharding, path
  assert (model.layers[0].mlp.gate_proj.kernel[...].sharding.spec
          == P('data', 'model'))
  for name in ('centres', 'scales', 'cluster_stats', 'fractions',
               'refreshes'):
    for stat in getattr(sgg_state, name):
      assert stat[...].sharding.spec == P()
