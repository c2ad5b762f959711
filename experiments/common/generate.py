"""Greedy decoding with a KV cache for `experiments.common.model.Llama`."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common.model import KVCache, Llama, init_cache

Array = jax.Array


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
