"""Tests for experiments/common/lora.py on a tiny random LLaMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sgg_optax
from experiments.common import gguf as G
from experiments.common import lora as L
from experiments.common import model as M
from experiments.common import model_config as MC

CONFIG = MC.get_config('tiny', vocab_size=128, dim=32, n_heads=4,
                       n_kv_heads=2, ffn_dim=64, n_layers=2)
TOKENS = jax.random.randint(jax.random.key(1), (2, 9), 0, 128)
BASE_FILTER = nnx.All(nnx.Variable, nnx.Not(L.LoRAParam), nnx.Not(
  nnx.RngState))


def _model(quantized: bool = False, **lora_kwargs) -> M.Llama:
  model = M.Llama(CONFIG, rngs=nnx.Rngs(0))
  if quantized:  # The Q-LoRA base: int8 kernels, bf16 embedding and norms.
    G.quantize_int8(model)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  return model


def _n_adapted(targets: str) -> int:
  return CONFIG.n_layers * len(L.TARGET_PRESETS[targets])


def _loss(model: M.Llama) -> jax.Array:
  return M.loss_fn(model, TOKENS)


@nnx.jit
def _train_step(model: M.Llama, opt: nnx.Optimizer) -> jax.Array:
  loss, grads = nnx.value_and_grad(
    _loss, argnums=nnx.DiffState(0, L.LoRAParam))(model)
  opt.update(model, grads)
  return loss


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@pytest.mark.parametrize('targets', ['all', 'attention', 'mlp', 'qv'])
@pytest.mark.parametrize('quantized', [False, True])
def test_adapted_model_equals_base_at_init(targets, quantized):
  model = _model(quantized)
  before = np.asarray(model(TOKENS))
  L.apply_lora(model, L.LoRAConfig(rank=4, targets=targets), rngs=3)
  assert len(list(L.iter_lora(model))) == _n_adapted(targets)
  after = np.asarray(model(TOKENS))
  np.testing.assert_array_equal(after, before)
  lora = nnx.state(model, L.LoRAParam)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(lora))
  # A is random, B is zero.
  for _, layer in L.iter_lora(model):
    assert np.abs(np.asarray(layer.lora_a[...])).max() > 0
    assert not np.asarray(layer.lora_b[...]).any()


def test_apply_lora_is_generic_and_idempotent():
  model = _model()
  L.apply_lora(model, L.LoRAConfig(rank=2, targets=('q_proj', 'down_proj')))
  L.apply_lora(model, L.LoRAConfig(rank=2, targets=('q_proj', 'down_proj')))
  layers = list(L.iter_lora(model))
  assert len(layers) == 2 * CONFIG.n_layers
  assert all(isinstance(layer.base, nnx.Linear) for _, layer in layers)
  with pytest.raises(ValueError, match='No linear layer'):
    L.apply_lora(_model(), L.LoRAConfig(targets=('nope',)))


@pytest.mark.parametrize('quantized', [False, True])
def test_only_lora_params_get_gradients_and_state(quantized):
  model = L.apply_lora(_model(quantized), L.LoRAConfig(rank=4), rngs=0)
  grads = nnx.jit(nnx.grad(_loss, argnums=nnx.DiffState(0, L.LoRAParam)))(
    model)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
  assert paths and all(L.is_lora_path(p) for p in paths)
  assert len(paths) == 2 * _n_adapted('all')

  opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=L.LoRAParam)
  lora = nnx.state(model, L.LoRAParam)
  n_lora = len(jax.tree.leaves(lora))
  leaves = jax.tree.leaves(opt.opt_state)
  # Adam's mu and nu per adapter factor, plus Adam's count.
  assert len(leaves) == 2 * n_lora + 1
  assert L.tree_bytes(opt.opt_state) == 2 * L.tree_bytes(lora) + 4
  if not quantized:
    full = nnx.Optimizer(_model(), optax.adamw(1e-3), wrt=nnx.Param)
    assert L.tree_bytes(full.opt_state) == 2 * L.tree_bytes(
      nnx.state(_model(), nnx.Param)) + 4
    assert L.tree_bytes(opt.opt_state) < L.tree_bytes(full.opt_state) / 4


# Plain LoRA with Adam and Q-LoRA with SGG in the fast set; the mixed
# cases are `slow`.
@pytest.mark.parametrize('use_sgg,quantized', [
    pytest.param(use_sgg, quantized, id=f'{use_sgg}-{quantized}',
                 marks=() if use_sgg == quantized else pytest.mark.slow)
    for quantized in (False, True) for use_sgg in (False, True)])
def test_training_leaves_base_bitwise_unchanged(quantized, use_sgg):
  model = L.apply_lora(_model(quantized), L.LoRAConfig(rank=4), rngs=0)
  base_before = _copy(nnx.state(model, BASE_FILTER))
  lora_before = _copy(nnx.state(model, L.LoRAParam))
  tx = (sgg_optax.adamw_sgg(1e-2, recluster_interval=1, beta3=0.5)
        if use_sgg else optax.adamw(1e-2))
  opt = nnx.Optimizer(model, tx, wrt=L.LoRAParam)
  losses = [float(_train_step(model, opt)) for _ in range(4)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  base_after = nnx.state(model, BASE_FILTER)
  jax.tree.map(np.testing.assert_array_equal, base_after, base_before)
  assert jax.tree.map(lambda a, b: a.dtype == b.dtype, base_after,
                      base_before)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                         nnx.state(model, L.LoRAParam), lora_before)
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('targets', ['all', 'qv'])
def test_merge_equals_adapted_forward(targets):
  model = L.apply_lora(_model(), L.LoRAConfig(rank=4, alpha=8.0,
                                              targets=targets), rngs=0)
  for i, (_, layer) in enumerate(L.iter_lora(model)):
    layer.lora_b.set_value(0.05 * jax.random.normal(
      jax.random.key(i), layer.lora_b.shape))
  adapted = np.asarray(model(TOKENS))
  kernel = L.merged_kernel(next(L.iter_lora(model))[1])
  expected_scale = 8.0 / 4
  layer = next(L.iter_lora(model))[1]
  np.testing.assert_allclose(
    kernel, layer.base.kernel[...] + expected_scale
    * layer.lora_a[...] @ layer.lora_b[...], rtol=1e-6, atol=1e-7)
  base_only = np.asarray(_model()(TOKENS))
  assert np.abs(adapted - base_only).max() > 1e-3
  L.merge_lora(model)
  assert not list(L.iter_lora(model))
  assert not jax.tree.leaves(nnx.state(model, L.LoRAParam))
  np.testing.assert_allclose(np.asarray(model(TOKENS)), adapted, rtol=1e-4,
                             atol=1e-4)


def test_merge_int8_base_requantizes():
  model = L.apply_lora(_model(True), L.LoRAConfig(rank=4), rngs=0)
  for i, (_, layer) in enumerate(L.iter_lora(model)):
    layer.lora_b.set_value(0.05 * jax.random.normal(
      jax.random.key(i), layer.lora_b.shape))
  adapted = np.asarray(model(TOKENS))
  L.merge_lora(model)
  assert all(isinstance(m, G.Int8Linear) for m in (
    model.layers[0].attn.q_proj, model.layers[0].mlp.down_proj))
  merged = np.asarray(model(TOKENS))
  # int8 re-quantisation error only.
  assert np.abs(merged - adapted).max() < 0.05 * np.abs(adapted).max()


def test_sgg_state_exists_only_for_lora_factors():
  model = L.apply_lora(_model(), L.LoRAConfig(rank=4), rngs=0)
  tx = sgg_optax.adamw_sgg(1e-3, recluster_interval=2)
  opt = nnx.Optimizer(model, tx, wrt=L.LoRAParam)
  (state,) = sgg_optax.find_sgg_states(opt.opt_state)
  n_factors = 2 * _n_adapted('all')
  # one row of K = 3 scales per factor
  assert sgg_optax.cluster_summary(state).scales.shape == (n_factors, 3)
  ids = jax.tree_util.tree_flatten_with_path(state.ids)[0]
  assert len(ids) == n_factors
  assert all(L.is_lora_path(p) and x.dtype == jnp.uint8 for p, x in ids)
  summary = sgg_optax.cluster_summary(opt.opt_state)
  assert all(('lora_a' in n) != ('lora_b' in n) for n in summary.names)
  for _ in range(2):
    _train_step(model, opt)
  summary = sgg_optax.cluster_summary(opt.opt_state)
  assert summary.count == 2 and np.all(np.isfinite(summary.scales))
  assert not np.all(summary.scales == 1.0)  # The first refresh ran.


def test_lora_only_partition_matches_nnx_optimizer():
  model = L.apply_lora(_model(), L.LoRAConfig(rank=4), rngs=0)
  params = nnx.state(model, nnx.Param)  # Frozen base AND adapters.
  tx = sgg_optax.adamw_sgg(1e-2, recluster_interval=1)
  wrapped = L.lora_only(tx)
  state = wrapped.init(params)
  reference = nnx.Optimizer(model, tx, wrt=L.LoRAParam)
  assert L.tree_bytes(state) == L.tree_bytes(reference.opt_state)
  (sgg_state,) = sgg_optax.find_sgg_states(state)
  assert len(sgg_state.scales) == 2 * _n_adapted('all')

  @jax.jit
  def step(params, state):
    def loss(p):
      return M.loss_fn(nnx.merge(nnx.graphdef(model), p), TOKENS)
    grads = jax.grad(loss)(params)
    updates, state = wrapped.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  new, state = step(params, state)
  new, state = step(new, state)
  labels = L.lora_labels(params)
  flat_labels = jax.tree.leaves(labels)
  for label, a, b in zip(flat_labels, jax.tree.leaves(new),
                         jax.tree.leaves(params)):
    if label == L.FROZEN:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for label, a, b in zip(
    flat_labels, jax.tree.leaves(new), jax.tree.leaves(params))
    if label == L.TRAINABLE)


def test_dropout_only_in_training_mode():
  model = _model()
  base = np.asarray(model(TOKENS))
  L.apply_lora(model, L.LoRAConfig(rank=4, dropout=0.5), rngs=0)
  for i, (_, layer) in enumerate(L.iter_lora(model)):
    layer.lora_b.set_value(0.1 * jax.random.normal(
      jax.random.key(i), layer.lora_b.shape))
  model.eval()
  eval_out = np.asarray(model(TOKENS))
  np.testing.assert_array_equal(np.asarray(model(TOKENS)), eval_out)
  model.train()
  assert np.abs(np.asarray(model(TOKENS)) - eval_out).max() > 0
  assert np.abs(eval_out - base).max() > 0


def test_param_summary_counts():
  model = L.apply_lora(_model(), L.LoRAConfig(rank=4, targets='qv'))
  summary = L.param_summary(model)
  hd = CONFIG.head_dim
  per_layer = (4 * (CONFIG.dim + CONFIG.n_heads * hd)
               + 4 * (CONFIG.dim + CONFIG.n_kv_heads * hd))
  assert summary['lora_params'] == CONFIG.n_layers * per_layer
  assert summary['lora_bytes'] == 4 * summary['lora_params']
  assert summary['model_params'] == MC.param_count(CONFIG) + summary[
    'lora_params']
