"""Tests for experiments/common/model.py (the LLaMA-style decoder)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from experiments.common import model as M
from experiments.common import model_config as MC
from experiments.common.generate import greedy_generate


def _tiny(**overrides) -> MC.LlamaConfig:
  return MC.get_config('tiny', **overrides)


def _param_sizes(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@nnx.jit
def _forward(model: M.Llama, tokens: jax.Array) -> jax.Array:
  return model(tokens)


def _tokens(key: int, shape: tuple[int, ...], vocab: int) -> jax.Array:
  return jax.random.randint(jax.random.key(key), shape, 0, vocab, jnp.int32)


@pytest.fixture(scope='module')
def tiny_model() -> M.Llama:
  return M.Llama(_tiny(), rngs=nnx.Rngs(0))


def test_forward_shape_and_dtype(tiny_model):
  cfg = tiny_model.config
  logits = _forward(tiny_model, _tokens(0, (2, 16), cfg.vocab_size))
  assert logits.shape == (2, 16, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('name', sorted(MC.PRESETS))
def test_param_count_matches_formula(name):
  cfg = MC.get_config(name)
  abstract = nnx.eval_shape(lambda: M.Llama(cfg, rngs=nnx.Rngs(0)))
  assert _param_sizes(abstract) == MC.param_count(cfg)


def test_preset_sizes():
  counts = {name: MC.param_count(cfg) for name, cfg in MC.PRESETS.items()}
  assert 0.5e6 < counts['tiny'] < 2e6
  assert 5e6 < counts['small'] < 15e6
  # HF reports 134,515,008 parameters for SmolLM2-135M.
  assert counts['smollm2_135m'] == 134_515_008
  paper = {'60m': (512, 1376, 8, 8), '130m': (768, 2048, 12, 12)}
  for name, (dim, ffn, heads, layers) in paper.items():
    cfg = MC.PRESETS[name]
    assert (cfg.dim, cfg.ffn_dim, cfg.n_heads, cfg.n_layers) == (
      dim, ffn, heads, layers)
    assert cfg.max_seq_len == 256
  assert MC.get_config('60m', vocab_size=16384).vocab_size == 16384


def test_tied_vs_untied_embeddings(tiny_model):
  tied = tiny_model
  cfg = tied.config
  assert cfg.tie_embeddings and tied.lm_head is None
  untied = M.Llama(cfg.replace(tie_embeddings=False), rngs=nnx.Rngs(0))
  assert untied.lm_head.kernel.shape == (cfg.dim, cfg.vocab_size)
  assert _param_sizes(untied) - _param_sizes(tied) == cfg.dim * cfg.vocab_size
  tokens = _tokens(1, (2, 16), cfg.vocab_size)
  assert _forward(untied, tokens).shape == _forward(tied, tokens).shape


def test_causality(tiny_model):
  vocab = tiny_model.config.vocab_size
  tokens = _tokens(2, (2, 12), vocab)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % vocab)
  before = _forward(tiny_model, tokens)
  after = _forward(tiny_model, changed)
  np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
  assert np.abs(np.asarray(before[:, 7:] - after[:, 7:])).min(-1).max() > 0


def _numpy_rope(x: np.ndarray, theta: float) -> np.ndarray:
  """Rotates pairs (i, i + hd/2) of x (T, H, hd) by t * theta^(-2i/hd)."""
  t, _, hd = x.shape
  half = hd // 2
  angle = np.arange(t)[:, None] * theta ** (-2 * np.arange(half) / hd)
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
  a, b = x[..., :half], x[..., half:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _numpy_mha(x: np.ndarray, attn: M.Attention, theta: float) -> np.ndarray:
  """Plain causal multi-head attention for one sequence x (T, D)."""
  t = x.shape[0]
  h, hd = attn.n_heads, attn.head_dim
  w = {n: np.asarray(getattr(attn, n).kernel[...], np.float64)
       for n in ('q_proj', 'k_proj', 'v_proj', 'o_proj')}
  q = _numpy_rope((x @ w['q_proj']).reshape(t, h, hd), theta)
  k = _numpy_rope((x @ w['k_proj']).reshape(t, h, hd), theta)
  v = (x @ w['v_proj']).reshape(t, h, hd)
  heads = []
  for i in range(h):
    scores = q[:, i] @ k[:, i].T / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    heads.append((p / p.sum(-1, keepdims=True)) @ v[:, i])
  return np.concatenate(heads, axis=-1) @ w['o_proj']


@nnx.jit(static_argnums=2)
def _run_attention(attn: M.Attention, x: jax.Array, theta: float):
  positions = jnp.arange(x.shape[1])
  cos, sin = M.rope_cos_sin(positions, attn.head_dim, theta)
  return attn(x, cos, sin, positions)[0]


def test_attention_matches_numpy_reference():
  cfg = MC.LlamaConfig(dim=32, n_heads=4, n_kv_heads=4, rope_theta=500.0)
  attn = M.Attention(cfg, rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.key(4), (2, 6, cfg.dim))
  out = _run_attention(attn, x, cfg.rope_theta)
  for b in range(2):
    ref = _numpy_mha(np.asarray(x[b], np.float64), attn, cfg.rope_theta)
    np.testing.assert_allclose(out[b], ref, atol=1e-5, rtol=1e-4)


def test_gqa_equals_mha_with_repeated_kv_heads():
  gqa_cfg = MC.LlamaConfig(dim=32, n_heads=4, n_kv_heads=2)
  gqa = M.Attention(gqa_cfg, rngs=nnx.Rngs(5))
  mha = M.Attention(gqa_cfg.replace(n_kv_heads=4), rngs=nnx.Rngs(6))
  hd = gqa_cfg.head_dim
  for name in ('q_proj', 'o_proj'):
    getattr(mha, name).kernel[...] = getattr(gqa, name).kernel[...]
  for name in ('k_proj', 'v_proj'):
    kernel = getattr(gqa, name).kernel[...].reshape(gqa_cfg.dim, 2, hd)
    # HF repeat_kv: query head h uses kv head h // 2.
    repeated = jnp.repeat(kernel, 2, axis=1).reshape(gqa_cfg.dim, 4 * hd)
    getattr(mha, name).kernel[...] = repeated
  x = jax.random.normal(jax.random.key(7), (2, 5, gqa_cfg.dim))
  np.testing.assert_allclose(
    _run_attention(gqa, x, gqa_cfg.rope_theta),
    _run_attention(mha, x, gqa_cfg.rope_theta), atol=1e-5)


def test_kv_cache_generation_matches_full_forward(tiny_model):
  prompt = np.asarray(_tokens(8, (2, 5), tiny_model.config.vocab_size))
  generated = greedy_generate(tiny_model, prompt, 6)
  assert generated.shape == (2, 6) and generated.dtype == np.int32
  # Without a cache, the argmax after each prefix is the next generated id.
  ids = np.concatenate([prompt, generated], axis=1)
  logits = _forward(tiny_model, jnp.asarray(ids[:, :-1]))
  np.testing.assert_array_equal(np.argmax(logits[:, 4:], -1), generated)


def test_greedy_generate_stops_at_eos(tiny_model):
  # Same shapes as above: the compiled steps are reused.
  prompt = np.asarray(_tokens(8, (2, 5), tiny_model.config.vocab_size))
  free = greedy_generate(tiny_model, prompt, 6)
  eos = int(free[0, 2])
  stops = [list(row).index(eos) + 1 if eos in row else 6 for row in free]
  expected = np.where(np.arange(6) < np.asarray(stops)[:, None], free, eos)
  stopped = greedy_generate(tiny_model, prompt, 6, eos_id=eos)
  np.testing.assert_array_equal(stopped, expected[:, :max(stops)])
  # A 1-D prompt gives a 1-D result.
  assert greedy_generate(tiny_model, prompt[0], 2).shape == (2,)


def test_bf16_compute_keeps_params_f32():
  model = M.Llama(_tiny(dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
  dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  tokens = _tokens(10, (2, 8), model.config.vocab_size)
  h = model.embed(tokens)
  assert h.dtype == jnp.bfloat16
  assert model.layers[0].attn.q_proj(h).dtype == jnp.bfloat16
  logits = _forward(model, tokens)
  assert logits.dtype == jnp.float32 and jnp.isfinite(logits).all()


def test_loss_at_init_is_about_log_vocab(tiny_model):
  loss = nnx.jit(M.loss_fn)(tiny_model, _tokens(12, (4, 33), 4096))
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert abs(float(loss) - np.log(4096)) < 0.5


def test_adam_step_reduces_loss():
  model = M.Llama(_tiny(), rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  batch = _tokens(13, (4, 33), model.config.vocab_size)

  @nnx.jit
  def step(model, opt, batch):
    loss, grads = nnx.value_and_grad(M.loss_fn)(model, batch)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, batch)) for _ in range(3)]
  losses.append(float(nnx.jit(M.loss_fn)(model, batch)))
  assert all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_ndim_mask_selects_matrices_and_embedding(tiny_model):
  # The mask an optimiser would use to pick the matrices.
  mask = jax.tree.map(lambda p: p.ndim >= 2, nnx.state(tiny_model, nnx.Param))
  flat = list(nnx.to_flat_state(mask))
  for path, selected in flat:
    assert selected.get_value() == (path[-1] in ('kernel', 'embedding')), path
  assert sum(s.get_value() for _, s in flat) == 1 + 7 * 2  # 7 per block.


def test_partition_specs_structure(tiny_model):
  params = nnx.state(tiny_model, nnx.Param)
  specs = MC.partition_specs(tiny_model, MC.FSDP_TP_RULES)
  is_spec = lambda x: isinstance(x, P)
  assert (jax.tree.structure(specs, is_leaf=is_spec)
          == jax.tree.structure(params))
  block = specs['layers'][0]
  assert specs['embed']['embedding'].get_value() == P('model', 'data')
  assert block['attn']['q_proj']['kernel'].get_value() == P('data', 'model')
  assert block['attn']['o_proj']['kernel'].get_value() == P('model', 'data')
  assert block['mlp']['down_proj']['kernel'].get_value() == P('model', 'data')
  assert specs['norm']['scale'].get_value() == P(None)
  fsdp = MC.partition_specs(params, MC.FSDP_RULES)
  up = fsdp['layers'][1]['mlp']['up_proj']['kernel'].get_value()
  assert up == P('data', None)
  with pytest.raises(ValueError, match='norm'):
    MC.partition_specs(tiny_model, MC.FSDP_RULES[:-1])


def test_sharded_creation_on_a_one_device_mesh():
  mesh = jax.make_mesh((1, 1), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shardings = MC.named_shardings(
    nnx.eval_shape(lambda: M.Llama(_tiny(), rngs=nnx.Rngs(0))), mesh,
    MC.FSDP_TP_RULES)
  kernel = shardings['layers'][0]['mlp']['gate_proj']['kernel'].get_value()
  assert kernel.spec == P('data', 'model') and kernel.mesh == mesh
  with jax.set_mesh(mesh), nnx.logical_axis_rules(MC.FSDP_TP_RULES):
    model = M.Llama(_tiny(), rngs=nnx.Rngs(0))
  assert model.layers[0].mlp.gate_proj.kernel[...].sharding.spec == P(
    'data', 'model')
  with jax.set_mesh(mesh):
    assert _forward(model, _tokens(14, (1, 4), 4096)).shape == (1, 4, 4096)
