"""A compact LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, GQA) in Flax NNX.

Its configuration, presets and sharding rules are
`experiments.common.model_config`; greedy decoding with a KV cache is
`experiments.common.generate`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.common.model_config import (
  DType,
  LlamaConfig,
  embed_tokens,
  split_batch,
)

Array = jax.Array


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
    x = split_batch(embed_tokens(self.embed, tokens))
    new_caches = [] if caches is not None else None
    for i, layer in enumerate(self.layers):
      x, cache = layer(x, cos, sin, positions,
                       None if caches is None else caches[i])
      x = split_batch(x)
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
# Loss
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

