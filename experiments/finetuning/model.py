"""SmolLM2 for fine-tuning: fresh f32 / Q-LoRA copies, verbaliser logits."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.common import gguf as G
from experiments.common import lora as L
from experiments.common import model as M


def truncate_layers(model: M.Llama, n_layers: int) -> M.Llama:
  """Keeps the first `n_layers` blocks of a model, in place (smoke tests)."""
  if not 0 < n_layers <= len(model.layers):
    raise ValueError(f'n_layers={n_layers} out of range.')
  model.layers = nnx.List(list(model.layers)[:n_layers])
  model.config = model.config.replace(n_layers=n_layers)
  return model


def to_qlora_base(model: M.Llama) -> M.Llama:
  """The Q-LoRA frozen base, in place: int8 kernels, bf16 embedding/norms.

  The same transformation as `gguf.load_smollm2(param_dtype=bfloat16,
  quantize='int8')`, applied to an already loaded model.
  """
  G.quantize_int8(model)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  return model


class BaseModels:
  """Loads SmolLM2 once and hands out fresh copies per run and precision."""

  def __init__(self, n_layers: int | None, dtype: Any):
    t0 = time.perf_counter()
    model, _ = G.load_smollm2(dtype=dtype)
    if n_layers:
      truncate_layers(model, n_layers)
    self.load_seconds = time.perf_counter() - t0
    self.n_layers = model.config.n_layers
    self.dtype_name = jnp.dtype(dtype).name
    self._f32 = nnx.split(model)
    self._q = None

  def get(self, precision: str) -> M.Llama:
    """A fresh model, 'f32' or 'qlora', that shares the cached arrays.

    `copy=True` gives new `Variable` objects: without it `nnx.merge` reuses
    the cached ones, and any in-place update of the returned model (such as
    the bf16 cast of `to_qlora_base`) would change the cache.
    """
    if precision == 'f32':
      return nnx.merge(*self._f32, copy=True)
    if self._q is None:
      self._q = nnx.split(to_qlora_base(nnx.merge(*self._f32, copy=True)))
    return nnx.merge(*self._q, copy=True)


def hidden_states(model: M.Llama, tokens: jax.Array) -> jax.Array:
  """Final-norm hidden states (B, T, dim): `Llama.forward` without the head."""
  cfg = model.config
  positions = jnp.arange(tokens.shape[1])
  cos, sin = M.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
  x = model.embed(tokens)
  for layer in model.layers:
    x, _ = layer(x, cos, sin, positions)
  return model.norm(x)


def class_logits(model: M.Llama, tokens: jax.Array, lengths: jax.Array,
                 ids: jax.Array) -> jax.Array:
  """Logits of token `ids` at each row's last prompt position, (B, len(ids))."""
  h = hidden_states(model, tokens)
  h = h[jnp.arange(h.shape[0]), lengths - 1].astype(jnp.float32)
  if model.lm_head is None:
    table = model.embed.embedding[...][ids].astype(jnp.float32)
    return h @ table.T
  return model.lm_head(h).astype(jnp.float32)[:, ids]


def build(bases: BaseModels, method: str, lora: L.LoRAConfig, seed: int):
  """A fresh model for one run, split into trainable / rng / frozen state.

  Returns:
    `(graphdef, params, rngs, frozen, param_summary)`.
  """
  model = bases.get('qlora' if method == 'qlora' else 'f32')
  if method != 'full':
    L.apply_lora(model, lora, rngs=seed)
  summary = L.param_summary(model)
  graphdef, params, rngs, frozen = nnx.split(
    model, L.trainable_filter(method), nnx.RngState, ...)
  if method == 'full':  # Donated by the step: do not consume the cache.
    params = jax.tree.map(jnp.copy, params)
  return graphdef, params, rngs, frozen, summary
