"""A compact LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, GQA) in Flax NNX."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec

Array = jax.Array
DType = Any
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


# ------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a LLaMA-style decoder.

  Attributes:
    vocab_size: Number of token ids.
    dim: Width of the residual stream.
    n_layers: Number of decoder blocks.
    n_heads: Number of query heads.
    n_kv_heads: Number of key/value heads (grouped-query attention when it is
      smaller than `n_heads`; it must divide `n_heads`).
    ffn_dim: Hidden width of the SwiGLU MLP.
    rope_theta: Base of the rotary frequencies.
    norm_eps: Epsilon of RMSNorm.
    tie_embeddings: Whether the output projection reuses the token embedding.
    max_seq_len: Longest sequence the model is meant to see (a check, not a
      buffer size: RoPE is computed on the fly).
    dtype: Compute dtype of the matmuls (e.g. `jnp.bfloat16`).
    param_dtype: Storage dtype of the parameters.
  """

  vocab_size: int = 32_000
  dim: int = 512
  n_layers: int = 8
  n_heads: int = 8
  n_kv_heads: int = 8
  ffn_dim: int = 1376
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_seq_len: int = 256
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def __post_init__(self):
    if self.dim % self.n_heads:
      raise ValueError(f'dim={self.dim} not divisible by n_heads.')
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'n_heads={self.n_heads} not divisible by n_kv_heads.')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for RoPE.')

  @property
  def head_dim(self) -> int:
    """Width of one attention head."""
    return self.dim // self.n_heads

  def replace(self, **changes: Any) -> LlamaConfig:
    """Returns a copy with some fields changed."""
    return dataclasses.replace(self, **changes)


PRESETS: dict[str, LlamaConfig] = {
  # ~0.9M parameters: CI smoke tests.
  'tiny': LlamaConfig(
    vocab_size=4096, dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
    ffn_dim=352, tie_embeddings=True, max_seq_len=128,
  ),
  # ~9.3M parameters: the CPU default.
  'small': LlamaConfig(
    vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=8,
    ffn_dim=768, max_seq_len=256,
  ),
  # The paper's LLaMA-60M / 130M shapes (GaLore configs); vocab is free.
  '60m': LlamaConfig(
    vocab_size=32_000, dim=512, n_layers=8, n_heads=8, n_kv_heads=8,
    ffn_dim=1376, max_seq_len=256,
  ),
  '130m': LlamaConfig(
    vocab_size=32_000, dim=768, n_layers=12, n_heads=12, n_kv_heads=12,
    ffn_dim=2048, max_seq_len=256,
  ),
  # HuggingFaceTB/SmolLM2-135M(-Instruct).
  'smollm2_135m': LlamaConfig(
    vocab_size=49_152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
    ffn_dim=1536, rope_theta=100_000.0, norm_eps=1e-5, tie_embeddings=True,
    max_seq_len=8192,
  ),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
  """Returns a named preset, optionally with some fields overridden.

  Args:
    name: One of `PRESETS` ('tiny', 'small', '60m', '130m', 'smollm2_135m').
    **overrides: Fields to replace, e.g. `vocab_size=16384`.

  Returns:
    The configuration.
  """
  if name not in PRESETS:
    raise KeyError(f'Unknown preset {name!r}; choose from {sorted(PRESETS)}.')
  return PRESETS[name].replace(**overrides)


def param_count(config: LlamaConfig) -> int:
  """Number of parameters of `Llama(config)`, from the shapes alone."""
  d, hd = config.dim, config.head_dim
  attn = d * config.n_heads * hd * 2 + d * config.n_kv_heads * hd * 2
  mlp = 3 * d * config.ffn_dim
  block = attn + mlp + 2 * d
  embed = config.vocab_size * d
  head = 0 if config.tie_embeddings else d * config.vocab_size
  return embed + config.n_layers * block + d + head


# ------------------------------------------------------------------------------
# Sharding: logical axis names and rules tables
# ------------------------------------------------------------------------------

# Every parameter is annotated with logical axis names:
#   token embedding      ('vocab', 'embed')
#   q / o projections    ('embed', 'heads') / ('heads', 'embed')
#   k / v projections    ('embed', 'kv_heads')
#   gate, up / down      ('embed', 'mlp') / ('mlp', 'embed')
#   untied output head   ('embed', 'vocab')
#   RMSNorm scales       ('norm',)
# A rules table maps each logical name to a mesh axis (or None: replicated).

LOGICAL_AXES = ('vocab', 'embed', 'heads', 'kv_heads', 'mlp', 'norm')

# Everything replicated (single device, or pure data parallelism).
REPLICATED_RULES: LogicalRules = tuple((name, None) for name in LOGICAL_AXES)

# FSDP: shard the model dimension of every matrix over the 'data' axis.
FSDP_RULES: LogicalRules = (
  ('vocab', None), ('embed', 'data'), ('heads', None), ('kv_heads', None),
  ('mlp', None), ('norm', None),
)

# FSDP on 'data' combined with tensor parallelism on 'model'.
FSDP_TP_RULES: LogicalRules = (
  ('vocab', 'model'), ('embed', 'data'), ('heads', 'model'),
  ('kv_heads', 'model'), ('mlp', 'model'), ('norm', None),
)


def _logical_names(state: nnx.State) -> set[str]:
  names = set()
  for leaf in jax.tree.leaves(
    state, is_leaf=lambda x: isinstance(x, nnx.Variable)
  ):
    if isinstance(leaf, nnx.Variable):
      names.update(n for n in leaf.get_metadata().get('out_sharding') or ()
                   if n is not None)
  return names


def partition_specs(
  model: nnx.Module | nnx.State, rules: LogicalRules
) -> nnx.State:
  """Turns the logical annotations of the parameters into `PartitionSpec`s.

  Uses flax's own machinery (`nnx.logical_axis_rules` and
  `nnx.get_partition_spec`); works on real or abstract (`nnx.eval_shape`)
  models.

  Args:
    model: A model, or an `nnx.State` of its parameters.
    rules: Logical-to-mesh rules such as `FSDP_RULES`; it must name every
      logical axis used by the model (map to None to replicate).

  Returns:
    A state with the structure of `nnx.state(model, nnx.Param)` whose
    variables hold `jax.sharding.PartitionSpec`s over mesh axes.
  """
  state = model
  if isinstance(model, nnx.Module):
    state = nnx.state(model, nnx.Param)
  missing = _logical_names(state) - {name for name, _ in rules}
  if missing:
    raise ValueError(f'Rules do not cover logical axes {sorted(missing)}.')
  with nnx.logical_axis_rules(tuple(rules)):
    return nnx.get_partition_spec(state)


def named_shardings(
  model: nnx.Module | nnx.State,
  mesh: jax.sharding.Mesh,
  rules: LogicalRules,
) -> nnx.State:
  """Like `partition_specs`, as `NamedSharding`s on `mesh`."""
  return jax.tree.map(
    lambda spec: jax.sharding.NamedSharding(mesh, spec),
    partition_specs(model, rules),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def _init(
  initializer: nnx.Initializer, names: tuple[str, ...]
) -> nnx.Initializer:
  """Annotates `initializer` with logical axis names.

  Variables are sharded at creation only when a mesh is set (then through
  the `nnx.logical_axis_rules` in effect), so that creating a model also
  works on a single device with no mesh at all.
  """
  eager = (nnx.using_eager_sharding()
           and not jax.sharding.get_abstract_mesh().empty)
  return nnx.with_partitioning(initializer, names, eager_sharding=eager)


# ------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------


def _normal() -> nnx.Initializer:
  return nnx.initializers.normal(0.02)  # HF LLaMA's `initializer_range`.


class RMSNorm(nnx.Module):
  """Root-mean-square layer norm, computed in float32.

  Args:
    dim: Feature width.
    eps: Added to the mean square before the reciprocal square root.
    dtype: Output dtype.
    param_dtype: Dtype of the scale.
  """

  def __init__(
    self, dim: int, *, eps: float, dtype: DType, param_dtype: DType
  ):
    init = _init(nnx.initializers.ones, ('norm',))  # `ones` ignores the key.
    self.scale = nnx.Param(init(jax.random.key(0), (dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def rope_cos_sin(
  positions: Array, head_dim: int, theta: float
) -> tuple[Array, Array]:
  """Rotary tables for the half-split ("rotate_half") convention.

  Args:
    positions: Integer positions, shape (T,).
    head_dim: Width of a head (even).
    theta: Frequency base.

  Returns:
    `(cos, sin)`, each float32 of shape (T, head_dim): frequency i of the
    first half is repeated in the second half, as in HF LLaMA.
  """
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates feature pairs (i, i + head_dim/2) of every head.

  This is HF LLaMA's `x * cos + rotate_half(x) * sin` where
  `rotate_half([x1, x2]) = [-x2, x1]`.

  Args:
    x: Queries or keys, shape (B, T, heads, head_dim).
    cos: Table of shape (T, head_dim) from `rope_cos_sin`.
    sin: Table of shape (T, head_dim).

  Returns:
    The rotated array, in the dtype of `x`.
  """
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = xf * cos[:, None, :] + rotated * sin[:, None, :]
  return out.astype(x.dtype)


def _linear(
  d_in: int,
  d_out: int,
  names: tuple[str, str],
  config: LlamaConfig,
  rngs: nnx.Rngs,
  **kwargs: Any,
) -> nnx.Linear:
  return nnx.Linear(
    d_in, d_out, use_bias=False, dtype=config.dtype,
    param_dtype=config.param_dtype, kernel_init=_init(_normal(), names),
    rngs=rngs, **kwargs,
  )


class KVCache(NamedTuple):
  """Keys and values of one attention layer, shape (B, L, n_kv_heads, hd)."""

  k: Array
  v: Array


class Attention(nnx.Module):
  """Causal grouped-query self-attention with rotary position embeddings.

  Query head h attends with key/value head h // (n_heads // n_kv_heads), as
  HF's `repeat_kv`.

  Args:
    config: Model configuration.
    rngs: Random streams for initialisation.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, hd = config.dim, config.head_dim
    self.n_heads, self.n_kv_heads, self.head_dim = (
      config.n_heads, config.n_kv_heads, hd
    )
    self.q_proj = _linear(d, config.n_heads * hd, ('embed', 'heads'),
                          config, rngs)
    self.k_proj = _linear(d, config.n_kv_heads * hd, ('embed', 'kv_heads'),
                          config, rngs)
    self.v_proj = _linear(d, config.n_kv_heads * hd, ('embed', 'kv_heads'),
                          config, rngs)
    self.o_proj = _linear(config.n_heads * hd, d, ('heads', 'embed'),
                          config, rngs)

  def __call__(
    self,
    x: Array,
    cos: Array,
    sin: Array,
    positions: Array,
    cache: KVCache | None = None,
  ) -> tuple[Array, KVCache | None]:
    """Attends causally.

    Args:
      x: Inputs, shape (B, T, dim).
      cos: Rotary table for `positions`, shape (T, head_dim).
      sin: Rotary table, shape (T, head_dim).
      positions: Absolute positions of the T inputs, consecutive, shape (T,).
      cache: Optional keys/values of earlier positions; the new ones are
        written at `positions` and attention runs over the whole cache.

    Returns:
      The output (B, T, dim) and the updated cache (None without one).
    """
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
      start = (0, positions[0], 0, 0)
      k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start)
      v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start)
      cache = KVCache(k, v)
      key_positions = jnp.arange(k.shape[1])
    else:
      key_positions = positions
    mask = key_positions[None, :] <= positions[:, None]  # (T, S)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    return self.o_proj(out.reshape(b, t, -1)), cache


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Masked softmax attention with grouped key/value heads.

  Args:
    q: Queries (B, T, H, hd).
    k: Keys (B, S, K, hd) with K dividing H.
    v: Values (B, S, K, hd).
    mask: Boolean (T, S), True where a query may attend to a key.

  Returns:
    Outputs (B, T, H, hd) in the dtype of `q`; scores and softmax in f32.
  """
  b, t, h, hd = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, h // kv, hd)
  scores = jnp.einsum('btkgd,bskd->bkgts', q, k,
                      preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(hd)
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bskd->btkgd', probs, v)
  return out.reshape(b, t, h, hd)


class MLP(nnx.Module):
  """SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.

  Args:
    config: Model configuration.
    rngs: Random streams for initialisation.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, f = config.dim, config.ffn_dim
    self.gate_proj = _linear(d, f, ('embed', 'mlp'), config, rngs)
    self.up_proj = _linear(d, f, ('embed', 'mlp'), config, rngs)
    self.down_proj = _linear(f, d, ('mlp', 'embed'), config, rngs)

  def __call__(self, x: Array) -> Array:
    return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
  """Pre-norm decoder block: attention then MLP, each with a residual.

  Args:
    config: Model configuration.
    rngs: Random streams for initialisation.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    norm = functools.partial(
      RMSNorm, config.dim, eps=config.norm_eps, dtype=config.dtype,
      param_dtype=config.param_dtype,
    )
    self.attn_norm = norm()
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = MLP(config, rngs=rngs)

  def __call__(
    self,
    x: Array,
    cos: Array,
    sin: Array,
    positions: Array,
    cache: KVCache | None = None,
  ) -> tuple[Array, KVCache | None]:
    h, cache = self.attn(self.attn_norm(x), cos, sin, positions, cache)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), cache


# ------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------


class Llama(nnx.Module):
  """LLaMA-style decoder-only language model.

  Parameters are created with logical sharding annotations (see
  `partition_specs`). Without a mesh they are plain single-device arrays;
  under `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)` they are
  created sharded. Activations carry no sharding annotations, so use a mesh
  whose axes are `jax.sharding.AxisType.Auto` (sharding propagation).

  Args:
    config: Model configuration.
    rngs: Random streams for initialisation.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(
      config.vocab_size, config.dim, dtype=config.dtype,
      param_dtype=config.param_dtype,
      embedding_init=_init(_normal(), ('vocab', 'embed')), rngs=rngs,
    )
    self.layers = nnx.List(
      [Block(config, rngs=rngs) for _ in range(config.n_layers)]
    )
    self.norm = RMSNorm(
      config.dim, eps=config.norm_eps, dtype=config.dtype,
      param_dtype=config.param_dtype,
    )
    self.lm_head = nnx.data(None if config.tie_embeddings else _linear(
      config.dim, config.vocab_size, ('embed', 'vocab'), config, rngs,
      preferred_element_type=jnp.float32,
    ))

  def __call__(self, tokens: Array) -> Array:
    """Computes next-token logits.

    Args:
      tokens: Integer token ids, shape (B, T).

    Returns:
      Float32 logits of shape (B, T, vocab_size).
    """
    return self.forward(tokens)[0]

  def forward(
    self,
    tokens: Array,
    caches: list[KVCache] | None = None,
    start: Array | int = 0,
  ) -> tuple[Array, list[KVCache] | None]:
    """Computes logits, optionally reading and extending a KV cache.

    Args:
      tokens: Integer token ids, shape (B, T), at positions start..start+T-1.
      caches: One `KVCache` per layer (see `init_cache`), or None.
      start: Position of the first token (may be traced).

    Returns:
      Float32 logits (B, T, vocab_size) and the updated caches (or None).
    """
    positions = start + jnp.arange(tokens.shape[1])
    cos, sin = rope_cos_sin(positions, self.config.head_dim,
                            self.config.rope_theta)
    x = self.embed(tokens)
    new_caches = [] if caches is not None else None
    for i, layer in enumerate(self.layers):
      x, cache = layer(x, cos, sin, positions,
                       None if caches is None else caches[i])
      if new_caches is not None:
        new_caches.append(cache)
    x = self.norm(x)
    if self.lm_head is not None:
      logits = self.lm_head(x)
    else:
      table = self.embed.embedding[...].astype(self.config.dtype)
      logits = jnp.einsum('btd,vd->btv', x, table,
                          preferred_element_type=jnp.float32)
    return logits.astype(jnp.float32), new_caches


def init_cache(
  config: LlamaConfig, batch: int, length: int, dtype: DType | None = None
) -> list[KVCache]:
  """Zero KV caches for `Llama.forward`, one per layer.

  Args:
    config: Model configuration.
    batch: Batch size.
    length: Number of positions the cache holds.
    dtype: Storage dtype (defaults to the compute dtype).

  Returns:
    A list of `n_layers` caches of shape (batch, length, n_kv_heads, hd).
  """
  shape = (batch, length, config.n_kv_heads, config.head_dim)
  dtype = dtype or config.dtype
  return [KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
          for _ in range(config.n_layers)]


# ------------------------------------------------------------------------------
# Loss and generation
# ------------------------------------------------------------------------------


def loss_fn(model: Llama, batch: Array) -> Array:
  """Mean next-token cross-entropy, in float32.

  Args:
    model: The language model.
    batch: Integer windows of shape (B, T + 1); tokens 0..T-1 are inputs and
      1..T the targets.

  Returns:
    Scalar mean cross-entropy over the B * T targets (nats).
  """
  logits = model(batch[:, :-1]).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, batch[:, 1:]
  ).mean()


@functools.partial(jax.jit, static_argnums=0)
def _cached_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  tokens: Array,
  caches: list[KVCache],
  start: Array,
  last: Array,
) -> tuple[Array, list[KVCache]]:
  """Runs `tokens` through the model; returns the argmax at index `last`."""
  model = nnx.merge(graphdef, state)
  logits, caches = model.forward(tokens, caches, start)
  return jnp.argmax(logits[:, last], axis=-1).astype(jnp.int32), caches


_BUCKET = 64  # Prompt and cache lengths are padded to multiples of this.


def _round_up(n: int) -> int:
  return -(-n // _BUCKET) * _BUCKET


def greedy_generate(
  model: Llama,
  prompt_ids: Array | np.ndarray | Sequence[int],
  max_new_tokens: int,
  *,
  eos_id: int | None = None,
) -> np.ndarray:
  """Greedy decoding with a KV cache.

  The prompt is processed in one jitted call, then one token at a time.
  Prompt and cache lengths are padded to multiples of 64, so the two
  compiled steps are reused across calls with similar lengths (padding
  writes keys beyond the prompt, which are masked and then overwritten).

  Args:
    model: The language model.
    prompt_ids: Prompt token ids, shape (T,) or (B, T) (equal lengths).
    max_new_tokens: Number of tokens to generate at most.
    eos_id: If given, stop once every row has produced it; tokens after a
      row's first `eos_id` are `eos_id`.

  Returns:
    The generated ids (without the prompt), int32 of shape (n,) or (B, n),
    matching the rank of `prompt_ids`, with n <= max_new_tokens.
  """
  prompt = np.asarray(prompt_ids, dtype=np.int32)
  squeeze = prompt.ndim == 1
  prompt = np.atleast_2d(prompt)
  batch, length = prompt.shape
  total = length + max_new_tokens
  if total > model.config.max_seq_len:
    raise ValueError(f'{total} tokens exceed max_seq_len.')
  graphdef, state = nnx.split(model)
  padded = np.pad(prompt, ((0, 0), (0, _round_up(length) - length)))
  caches = init_cache(model.config, batch, _round_up(total))
  token, caches = _cached_step(graphdef, state, jnp.asarray(padded), caches,
                               jnp.int32(0), jnp.int32(length - 1))
  out, done = [], np.zeros(batch, bool)
  for step in range(max_new_tokens):
    tok = np.asarray(token)
    if eos_id is not None:
      tok = np.where(done, eos_id, tok)
      done |= tok == eos_id
    out.append(tok)
    if done.all() or step == max_new_tokens - 1:
      break
    token, caches = _cached_step(graphdef, state, jnp.asarray(tok)[:, None],
                                 caches, jnp.int32(length + step), jnp.int32(0))
  generated = np.stack(out, axis=1) if out else np.zeros((batch, 0), np.int32)
  return generated[0] if squeeze else generated
