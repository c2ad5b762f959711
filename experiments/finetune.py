"""Fine-tune SmolLM2-135M (full, LoRA, Q-LoRA) with AdamW or AdamW+SGG.

Two tasks on BBC News, both on the fixed train/validation split of
`experiments.data`:

* `lm`: causal-LM fine-tuning on the article text; metric: validation
  perplexity on evenly spaced windows of the validation stream.
* `cls`: 5-way topic classification with a verbaliser: the article's first
  tokens go into the Instruct chat template with the question "Business,
  Entertainment, Politics, Sports or Tech?", and the LM scores the first token
  of each capitalised topic word at the answer position (the five first tokens
  are distinct). Training minimises the 5-way cross-entropy of those five
  logits (the LM head restricted to five rows: no new head); metric:
  validation accuracy.

Methods: `full` (every parameter trained, f32), `lora` (f32 frozen base,
f32 adapters) and `qlora` (frozen base int8 per-output-channel for every
matmul kernel and bf16 embedding/norms, dequantised on the fly to the f32
compute dtype; f32 adapters). Optimizers: `adamw` and `adamw_sgg`
(`sgg_optax.adamw_sgg`), both behind the same global-norm clipping and
warmup-cosine schedule. Learning rates are tuned per (task, method,
optimizer) on the same grid with one seed on a dev split carved from the
training data, then every seed runs at the chosen rate and is reported on
validation.

Examples:
  python -m experiments.finetune --smoke --out /tmp/ft_smoke
  python -m experiments.finetune --tasks cls --methods lora --steps 60
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sgg_optax
from experiments import data as D
from experiments import gguf as G
from experiments import lora as L
from experiments import model as M

TASKS = ('lm', 'cls')
METHODS = ('full', 'lora', 'qlora')
OPTIMIZERS = ('adamw', 'adamw_sgg')
VERBALISER = ('Business', 'Entertainment', 'Politics', 'Sports', 'Tech')
QUESTION = ('\n\nIs this news article about Business, Entertainment, '
            'Politics, Sports or Tech?')
DEV_FRACTION = 0.1  # of the training documents / token stream.
_DEV_SEED = 1234


# ------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------


class _StreamTokenizer:
  """A `GGUFTokenizer` with the cache key and batch encoding of `data`."""

  def __init__(self, tok: G.GGUFTokenizer):
    self.tok = tok
    self.eos_id = tok.eos_id
    self.vocab_size = tok.vocab_size
    serialized = tok.tokenizer.to_str().encode('utf-8')
    self.fingerprint = 'gguf-' + hashlib.sha256(serialized).hexdigest()

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tok.tokenizer.encode_batch(
      list(texts), add_special_tokens=False)]


@dataclasses.dataclass
class LMData:
  """Token streams: train (minus dev), dev (end of train), validation."""
  train: np.ndarray
  dev: np.ndarray
  validation: np.ndarray


@dataclasses.dataclass
class ClsData:
  """Encoded prompts `(tokens, lengths, labels)` per split."""
  train: tuple[np.ndarray, np.ndarray, np.ndarray]
  dev: tuple[np.ndarray, np.ndarray, np.ndarray]
  validation: tuple[np.ndarray, np.ndarray, np.ndarray]
  verbaliser_ids: np.ndarray
  label_names: tuple[str, ...]


def load_lm_data(tok: G.GGUFTokenizer) -> LMData:
  """BBC News tokenized with SmolLM2's tokenizer; the dev stream is the last
  `DEV_FRACTION` of the training stream (never trained on)."""
  stream = _StreamTokenizer(tok)
  train = D.tokenize_split('bbc_news', D.TRAIN, stream)
  val = D.tokenize_split('bbc_news', D.VALIDATION, stream)
  cut = int(len(train) * (1 - DEV_FRACTION))
  return LMData(train[:cut], train[cut:], val)


def encode_prompts(examples: Sequence[tuple[str, int]],
                   tok: G.GGUFTokenizer, seq_len: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Chat-template prompts holding each article's first tokens.

  `<|im_start|>user\\n{article[:n]}{QUESTION}<|im_end|>\\n<|im_start|>
  assistant\\n`, truncating the article so the prompt has `seq_len` tokens at
  most; rows are right-padded (causal attention ignores the padding).

  Returns:
    `(tokens (n, seq_len), lengths (n,), labels (n,))`, int32.
  """
  template = G.chat_prompt('\x00', system=None)
  head, tail = template.split('\x00')
  head_ids, tail_ids = tok.encode(head), tok.encode(QUESTION + tail)
  room = seq_len - len(head_ids) - len(tail_ids)
  if room < 8:
    raise ValueError(f'cls seq_len {seq_len} leaves {room} article tokens.')
  texts = [text for text, _ in examples]
  encoded = tok.tokenizer.encode_batch(texts, add_special_tokens=False)
  tokens = np.full((len(texts), seq_len), tok.eos_id, np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for row, enc in enumerate(encoded):
    ids = head_ids + enc.ids[:room] + tail_ids
    tokens[row, :len(ids)] = ids
    lengths[row] = len(ids)
  labels = np.asarray([label for _, label in examples], np.int32)
  return tokens, lengths, labels


def load_cls_data(tok: G.GGUFTokenizer, seq_len: int) -> ClsData:
  """BBC topics; dev = a fixed `DEV_FRACTION` of the training articles."""
  bbc = D.load_bbc_classification()
  words = [w.lower() for w in VERBALISER]
  if [n.lower() for n in bbc.label_names] != words:
    raise ValueError(f'Unexpected labels {bbc.label_names}.')
  first = [tok.encode(w)[0] for w in VERBALISER]
  if len(set(first)) != len(first):
    raise ValueError('Verbaliser first tokens collide.')
  order = np.random.default_rng(_DEV_SEED).permutation(len(bbc.train))
  n_dev = int(len(order) * DEV_FRACTION)
  dev = [bbc.train[i] for i in sorted(order[:n_dev])]
  train = [bbc.train[i] for i in sorted(order[n_dev:])]
  enc = functools.partial(encode_prompts, tok=tok, seq_len=seq_len)
  return ClsData(enc(train), enc(dev), enc(bbc.validation),
                 np.asarray(first, np.int32), bbc.label_names)


def spread_windows(tokens: np.ndarray, n: int, seq_len: int) -> np.ndarray:
  """`n` evenly spaced `(seq_len + 1)`-token windows of a stream."""
  starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
  return np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(
    np.int32)


# ------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------
# Optimizers
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptSettings:
  """Everything that defines an optimizer except its learning rate."""
  name: str
  weight_decay: float = 0.0
  clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  sgg_k: int = 3
  sgg_interval: int = 2
  sgg_beta3: float = 0.9
  sgg_momentum: bool = True
  sgg_rule: str = 'mda'
  sgg_cluster_decay: float = 0.95


@functools.lru_cache(maxsize=None)
def make_direction(s: OptSettings) -> optax.GradientTransformation:
  """The optimizer without its learning rate (one object per settings, so
  that jitted steps are reused across learning rates and seeds).

  `adamw`: clip, `scale_by_adam`, decoupled weight decay. `adamw_sgg`: clip,
  `sgg_optax.adamw_sgg(1.0, ...)` with the sign flipped back, i.e. the same
  chain with SGG after Adam (and before the decay).
  """
  clip = optax.clip_by_global_norm(s.clip) if s.clip else optax.identity()
  if s.name == 'adamw':
    return optax.chain(clip, optax.scale_by_adam(s.b1, s.b2),
                       optax.add_decayed_weights(s.weight_decay))
  if s.name == 'adamw_sgg':
    return optax.chain(clip, sgg_optax.adamw_sgg(
      -1.0, s.b1, s.b2, weight_decay=s.weight_decay, num_clusters=s.sgg_k,
      recluster_interval=s.sgg_interval, beta3=s.sgg_beta3,
      cluster_momentum=s.sgg_momentum, scale_rule=s.sgg_rule,
      cluster_decay=s.sgg_cluster_decay))
  raise ValueError(f'Unknown optimizer {s.name!r}.')


def lr_at(step: jax.Array, peak: jax.Array, steps: int,
          warmup_frac: float) -> jax.Array:
  """Linear warmup, then cosine decay to 10% of the peak."""
  warmup = max(1, int(round(warmup_frac * steps)))
  sched = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, warmup, max(steps, warmup + 1), end_value=0.1)
  return peak * sched(step + 1)


# ------------------------------------------------------------------------------
# Jitted steps
# ------------------------------------------------------------------------------


def _merge(graphdef, params, rngs, frozen):
  return nnx.merge(graphdef, params, rngs, frozen)


def _loss(model: M.Llama, task: str, batch: dict[str, jax.Array],
          ids: jax.Array) -> jax.Array:
  if task == 'lm':
    return M.loss_fn(model, batch['tokens'])
  logits = class_logits(model, batch['tokens'], batch['lengths'], ids)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, batch['labels']).mean()


@functools.partial(jax.jit, static_argnames=('graphdef', 'task', 'tx',
                                             'steps', 'warmup_frac'),
                   donate_argnames=('params', 'opt_state', 'rngs'))
def train_step(params, opt_state, rngs, frozen, batch, ids, lr, step, *,
               graphdef, task, tx, steps, warmup_frac):
  """One optimizer step on the trainable `params` only."""

  def loss_of(p, r):
    model = _merge(graphdef, p, r, frozen)
    loss = _loss(model, task, batch, ids)
    return loss, nnx.state(model, nnx.RngState)

  (loss, rngs), grads = jax.value_and_grad(loss_of, has_aux=True)(
    params, rngs)
  updates, opt_state = tx.update(grads, opt_state, params)
  scale = -lr_at(step, lr, steps, warmup_frac)
  updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
  params = optax.apply_updates(params, updates)
  return params, opt_state, rngs, loss


@functools.partial(jax.jit, static_argnames=('graphdef', 'task'))
def eval_step(params, rngs, frozen, batch, ids, *, graphdef, task):
  """LM: mean NLL of the batch; cls: (B, 5) verbaliser logits."""
  model = _merge(graphdef, params, rngs, frozen)
  model.eval()
  if task == 'lm':
    return M.loss_fn(model, batch['tokens'])
  return class_logits(model, batch['tokens'], batch['lengths'], ids)


# ------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run."""
  task: str
  method: str
  opt: OptSettings
  lr: float
  seed: int
  steps: int
  batch_size: int
  seq_len: int
  lora: L.LoRAConfig
  warmup_frac: float = 0.1

  @property
  def name(self) -> str:
    return (f'{self.task}-{self.method}-{self.opt.name}-lr{self.lr:g}'
            f'-s{self.seed}')


class Experiment:
  """Data, base models and the evaluation sets shared by every run."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.tok = G.load_smollm2_tokenizer()
    self.bases = BaseModels(args.n_layers, _dtype(args.dtype))
    self._lm = self._cls = None

  def lm(self) -> LMData:
    if self._lm is None:
      self._lm = load_lm_data(self.tok)
    return self._lm

  def cls(self) -> ClsData:
    if self._cls is None:
      self._cls = load_cls_data(self.tok, self.args.cls_seq_len)
    return self._cls

  def build(self, spec: RunSpec):
    """A fresh model for `spec`, split into trainable / rng / frozen."""
    model = self.bases.get('qlora' if spec.method == 'qlora' else 'f32')
    if spec.method != 'full':
      L.apply_lora(model, spec.lora, rngs=spec.seed)
    wrt = L.trainable_filter(spec.method)
    summary = L.param_summary(model)
    graphdef, params, rngs, frozen = nnx.split(model, wrt, nnx.RngState, ...)
    if spec.method == 'full':  # Donated below: do not consume the cache.
      params = jax.tree.map(jnp.copy, params)
    return graphdef, params, rngs, frozen, summary

  def evaluate(self, task: str, split: str, graphdef, params, rngs,
               frozen) -> dict[str, float]:
    """Validation (or dev) metrics of the current parameters."""
    a = self.args
    if task == 'lm':
      data = self.lm()
      stream = data.validation if split == 'validation' else data.dev
      n = a.eval_windows if split == 'validation' else a.dev_windows
      windows = spread_windows(stream, n, a.seq_len)
      nll = []
      for i in range(0, n, a.eval_batch_size):
        batch = {'tokens': jnp.asarray(windows[i:i + a.eval_batch_size])}
        nll.append(float(eval_step(params, rngs, frozen, batch, None,
                                   graphdef=graphdef, task='lm'))
                   * len(batch['tokens']))
      loss = sum(nll) / n
      return {'loss': loss, 'ppl': math.exp(loss)}
    data = self.cls()
    tokens, lengths, labels = getattr(data, split)
    limit = a.eval_examples if split == 'dev' else a.val_examples
    if limit:
      tokens, lengths, labels = (x[:limit] for x in (tokens, lengths, labels))
    ids = jnp.asarray(data.verbaliser_ids)
    logits = []
    bs = a.eval_batch_size
    for i in range(0, len(labels), bs):
      t, n = tokens[i:i + bs], lengths[i:i + bs]
      pad = bs - len(t)
      if pad:
        t = np.concatenate([t, np.repeat(t[:1], pad, 0)])
        n = np.concatenate([n, np.repeat(n[:1], pad, 0)])
      out = eval_step(params, rngs, frozen,
                      {'tokens': jnp.asarray(t), 'lengths': jnp.asarray(n)},
                      ids, graphdef=graphdef, task='cls')
      logits.append(np.asarray(out)[:bs - pad])
    logits = np.concatenate(logits)
    logp = logits - _logsumexp(logits)
    return {'accuracy': float(np.mean(logits.argmax(-1) == labels)),
            'loss': float(-np.mean(logp[np.arange(len(labels)), labels]))}

  def batch(self, spec: RunSpec, step: int) -> dict[str, jax.Array]:
    if spec.task == 'lm':
      return {'tokens': jnp.asarray(D.train_batch(
        self.lm().train, step, batch_size=spec.batch_size,
        seq_len=spec.seq_len, seed=spec.seed))}
    tokens, lengths, labels = self.cls().train
    rows = np.random.default_rng([spec.seed, step]).integers(
      0, len(labels), spec.batch_size)
    return {'tokens': jnp.asarray(tokens[rows]),
            'lengths': jnp.asarray(lengths[rows]),
            'labels': jnp.asarray(labels[rows])}

  def tokens_per_step(self, spec: RunSpec) -> int:
    if spec.task == 'lm':
      return spec.batch_size * spec.seq_len
    return spec.batch_size * self.args.cls_seq_len

  def run(self, spec: RunSpec, path: pathlib.Path) -> dict[str, Any]:
    """Trains, evaluates on dev and validation, and writes `path` (JSON)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    graphdef, params, rngs, frozen, summary = self.build(spec)
    tx = make_direction(spec.opt)
    opt_state = tx.init(params)
    state_bytes = L.tree_bytes(opt_state)
    sgg_states = sgg_optax.find_sgg_states(opt_state)
    sgg_bytes = L.tree_bytes(sgg_states)
    ids = (jnp.asarray(self.cls().verbaliser_ids) if spec.task == 'cls'
           else None)
    step_fn = functools.partial(
      train_step, graphdef=graphdef, task=spec.task, tx=tx,
      steps=spec.steps, warmup_frac=spec.warmup_frac)
    lr = jnp.float32(spec.lr)
    losses, pending, times = [], [], []
    per_step = self.tokens_per_step(spec)
    log_every = max(1, self.args.log_every)
    bar = tqdm(range(spec.steps), desc=spec.name, leave=False,
               mininterval=1.0, file=sys.stdout, disable=self.args.quiet)
    t_prev = time.perf_counter()
    compile_s = None
    for step in bar:
      batch = self.batch(spec, step)
      params, opt_state, rngs, loss = step_fn(
        params, opt_state, rngs, frozen, batch, ids, lr, jnp.int32(step))
      pending.append(loss)
      if step == 0 or (step + 1) % log_every == 0 or step + 1 == spec.steps:
        values = [float(x) for x in pending]
        now = time.perf_counter()
        if step == 0:
          compile_s = now - t_prev
        else:
          times.append((now - t_prev) / len(pending))
        t_prev = now
        losses.extend(values)
        pending = []
        post = {'loss': f'{values[-1]:.3f}'}
        if spec.task == 'lm':
          post['ppl'] = f'{math.exp(min(values[-1], 50)):.1f}'
        if times:
          post['tok/s'] = f'{per_step / times[-1]:.0f}'
        bar.set_postfix(post)
    bar.close()
    train_s = time.perf_counter() - t_start
    dev = self.evaluate(spec.task, 'dev', graphdef, params, rngs, frozen)
    val = self.evaluate(spec.task, 'validation', graphdef, params, rngs,
                        frozen)
    step_s = float(np.median(times)) if times else float('nan')
    result = {
      'name': spec.name, 'task': spec.task, 'method': spec.method,
      'optimizer': spec.opt.name, 'lr': spec.lr, 'seed': spec.seed,
      'steps': spec.steps, 'batch_size': spec.batch_size,
      'seq_len': (spec.seq_len if spec.task == 'lm'
                  else self.args.cls_seq_len),
      'tokens_per_step': per_step, 'train_tokens': per_step * spec.steps,
      'opt_settings': dataclasses.asdict(spec.opt),
      'lora': ({**dataclasses.asdict(spec.lora),
                'param_dtype': str(jnp.dtype(spec.lora.param_dtype))}
               if spec.method != 'full' else None),
      'precision': _precision(spec.method, self.args.dtype),
      'n_layers': self.bases.get('f32').config.n_layers,
      'train_loss': losses, 'dev': dev, 'validation': val,
      'step_seconds_median': step_s, 'compile_seconds': compile_s,
      'tokens_per_second': per_step / step_s if times else None,
      'opt_state_bytes': state_bytes, 'sgg_state_bytes': sgg_bytes,
      'opt_state_leaves': len(jax.tree.leaves(opt_state)),
      'trainable_params': L.tree_size(params),
      **summary,
      'wall_seconds': time.perf_counter() - t_start, 'train_seconds': train_s,
      'device': jax.devices()[0].device_kind,
    }
    if sgg_states:
      cs = sgg_optax.cluster_summary(opt_state)
      result['sgg_scales'] = {
        'min': float(cs.scales.min()), 'median': float(np.median(cs.scales)),
        'max': float(cs.scales.max()), 'global_stat': cs.global_stat,
        'count': cs.count}
    _write_json(path, result)
    return result

  def zero_shot(self, task: str, precision: str, path: pathlib.Path
                ) -> dict[str, Any]:
    """Metrics of the untouched base model (f32 or the Q-LoRA base)."""
    model = self.bases.get(precision)
    graphdef, params, rngs, frozen = nnx.split(model, nnx.Param,
                                               nnx.RngState, ...)
    result = {
      'task': task, 'precision': precision,
      'dev': self.evaluate(task, 'dev', graphdef, params, rngs, frozen),
      'validation': self.evaluate(task, 'validation', graphdef, params,
                                  rngs, frozen)}
    _write_json(path, result)
    return result


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = x.max(-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def _dtype(name: str) -> Any:
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def _precision(method: str, dtype: str) -> str:
  if method == 'qlora':
    return (f'base int8 kernels (per-output-channel f32 scales) + bf16 '
            f'embedding/norms, {dtype} compute, f32 adapters')
  if method == 'lora':
    return f'base f32 (frozen), {dtype} compute, f32 adapters'
  return f'f32 params, {dtype} compute'


def _write_json(path: pathlib.Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
  os.replace(tmp, path)


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  return str(x)


# ------------------------------------------------------------------------------
# Sweep
# ------------------------------------------------------------------------------


def _better(task: str) -> Callable[[dict, dict], bool]:
  """Whether run `a` beats run `b` on dev (accuracy, then loss; or ppl)."""
  if task == 'lm':
    return lambda a, b: a['dev']['ppl'] < b['dev']['ppl']
  return lambda a, b: ((a['dev']['accuracy'], -a['dev']['loss'])
                       > (b['dev']['accuracy'], -b['dev']['loss']))


def sgg_interval(args: argparse.Namespace) -> int:
  """SGG's T: given, or 5% of the run (at least 1)."""
  if args.sgg_interval:
    return args.sgg_interval
  return max(1, int(round(args.sgg_interval_frac * args.steps)))


def opt_settings(args: argparse.Namespace, name: str) -> OptSettings:
  return OptSettings(
    name=name, weight_decay=args.weight_decay, clip=args.clip,
    sgg_k=args.sgg_k, sgg_interval=sgg_interval(args),
    sgg_beta3=args.sgg_beta3, sgg_momentum=args.sgg_form == 'momentum',
    sgg_rule=args.sgg_rule, sgg_cluster_decay=args.sgg_cluster_decay)


def sweep(args: argparse.Namespace) -> None:
  """Tunes the learning rate per (task, method, optimizer), then seeds."""
  out = pathlib.Path(args.out)
  runs_dir = out / 'runs'
  exp = Experiment(args)
  print(f'SmolLM2 loaded in {exp.bases.load_seconds:.1f} s '
        f'({exp.bases.get("f32").config.n_layers} layers); '
        f'SGG T={sgg_interval(args)}, beta3={args.sgg_beta3}, '
        f'K={args.sgg_k}', flush=True)
  lora_cfg = L.LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                          dropout=args.lora_dropout,
                          targets=_targets(args.lora_targets))
  for task in args.tasks:
    for precision in sorted({'qlora' if m == 'qlora' else 'f32'
                             for m in args.methods}):
      path = runs_dir / f'zeroshot-{task}-{precision}.json'
      if args.zero_shot and not path.exists():
        r = exp.zero_shot(task, precision, path)
        print(f'zero-shot {task}/{precision}: {r["validation"]}', flush=True)
    methods = args.methods
    if args.smoke and task == 'cls':  # Keeps CI short: the cls loss path.
      methods = [m for m in methods if m == 'lora'] or methods[:1]
    for method in methods:
      grid = args.lrs_full if method == 'full' else args.lrs_lora
      for opt_name in args.optimizers:
        opt = opt_settings(args, opt_name)
        spec_of = functools.partial(
          RunSpec, task=task, method=method, opt=opt, steps=args.steps,
          batch_size=(args.batch_size if task == 'lm'
                      else args.cls_batch_size),
          seq_len=args.seq_len, lora=lora_cfg, warmup_frac=args.warmup_frac)

        def get(lr: float, seed: int, spec_of=spec_of,
                task=task) -> dict[str, Any]:
          spec = spec_of(lr=lr, seed=seed)
          path = runs_dir / f'{spec.name}.json'
          if path.exists():
            return json.loads(path.read_text())
          r = exp.run(spec, path)
          metric = ('ppl', 'accuracy')[task == 'cls']
          print(f'{spec.name}: dev {metric} {r["dev"][metric]:.4g}, val '
                f'{metric} {r["validation"][metric]:.4g}, '
                f'{r["step_seconds_median"]:.3f} s/step, '
                f'{r["wall_seconds"]:.0f} s', flush=True)
          return r

        best = None
        for lr in (grid if len(grid) > 1 else grid[:1]):
          r = get(lr, args.tune_seed)
          if best is None or _better(task)(r, best):
            best = r
        for seed in args.seeds:
          get(best['lr'], seed)
  summarize(out, args)


def _targets(spec: str) -> str | tuple[str, ...]:
  return spec if spec in L.TARGET_PRESETS else tuple(spec.split(','))


# ------------------------------------------------------------------------------
# Summary and plots
# ------------------------------------------------------------------------------


def _load_runs(out: pathlib.Path) -> list[dict[str, Any]]:
  runs = []
  for f in sorted(glob.glob(str(out / 'runs' / '*.json'))):
    r = json.loads(pathlib.Path(f).read_text())
    if 'method' in r:
      runs.append(r)
  return runs


def summarize(out: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
  """Picks each group's tuned rate and aggregates its seeds; writes
  `summary.json`, `summary.md` and one PNG per task."""
  runs = _load_runs(out)
  seeds = set(args.seeds)
  summary: dict[str, Any] = {'groups': [], 'zero_shot': []}
  for f in sorted(glob.glob(str(out / 'runs' / 'zeroshot-*.json'))):
    summary['zero_shot'].append(json.loads(pathlib.Path(f).read_text()))
  keys = sorted({(r['task'], r['method'], r['optimizer']) for r in runs},
                key=lambda k: (TASKS.index(k[0]), METHODS.index(k[1]),
                               OPTIMIZERS.index(k[2])))
  for task, method, opt in keys:
    group = [r for r in runs if (r['task'], r['method'], r['optimizer'])
             == (task, method, opt)]
    tune = [r for r in group if r['seed'] == args.tune_seed] or group
    best = tune[0]
    for r in tune[1:]:
      if _better(task)(r, best):
        best = r
    chosen = sorted([r for r in group if r['lr'] == best['lr']
                     and r['seed'] in seeds], key=lambda r: r['seed'])
    metric = 'ppl' if task == 'lm' else 'accuracy'
    vals = np.array([r['validation'][metric] for r in chosen])
    vloss = np.array([r['validation']['loss'] for r in chosen])
    summary['groups'].append({
      'task': task, 'method': method, 'optimizer': opt, 'lr': best['lr'],
      'metric': metric, 'seeds': [r['seed'] for r in chosen],
      'values': vals.tolist(), 'mean': float(vals.mean()),
      'std': float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
      'val_loss_mean': float(vloss.mean()),
      'val_loss_std': float(vloss.std(ddof=1)) if len(vloss) > 1 else 0.0,
      'lr_grid': {f'{r["lr"]:g}': r['dev'][metric] for r in
                  sorted(tune, key=lambda r: r['lr'])},
      'step_seconds_median': float(np.median(
        [r['step_seconds_median'] for r in chosen])),
      'tokens_per_second': float(np.median(
        [r['tokens_per_second'] or 0 for r in chosen])),
      'opt_state_bytes': chosen[0]['opt_state_bytes'],
      'sgg_state_bytes': chosen[0]['sgg_state_bytes'],
      'trainable_params': chosen[0]['trainable_params'],
      'steps': chosen[0]['steps'], 'train_tokens': chosen[0]['train_tokens'],
      'sgg_scales': [r.get('sgg_scales') for r in chosen],
    })
  # Paired SGG - AdamW differences (same seeds: same data order and init).
  summary['paired'] = []
  by = {(g['task'], g['method'], g['optimizer']): g
        for g in summary['groups']}
  for (task, method, opt), g in by.items():
    base = by.get((task, method, 'adamw'))
    if opt != 'adamw_sgg' or base is None:
      continue
    common = sorted(set(g['seeds']) & set(base['seeds']))
    diff = np.array([g['values'][g['seeds'].index(s)]
                     - base['values'][base['seeds'].index(s)]
                     for s in common])
    if len(diff):
      summary['paired'].append({
        'task': task, 'method': method, 'metric': g['metric'],
        'sgg_minus_adamw': diff.tolist(), 'mean': float(diff.mean()),
        'std': float(diff.std(ddof=1)) if len(diff) > 1 else 0.0})
  _write_json(out / 'summary.json', summary)
  (out / 'summary.md').write_text(_markdown(summary))
  for task in {g['task'] for g in summary['groups']}:
    plot(task, runs, summary, out / f'finetune_{task}.png')
  print(_markdown(summary))
  return summary


def _markdown(summary: dict[str, Any]) -> str:
  lines = ['| task | method | optimizer | lr | metric | mean ± std (seeds) '
           '| val loss | s/step | tok/s | opt-state MiB (SGG part) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for g in summary['groups']:
    scale = 100 if g['metric'] == 'accuracy' else 1
    unit = '%' if g['metric'] == 'accuracy' else ''
    lines.append(
      f'| {g["task"]} | {g["method"]} | {g["optimizer"]} | {g["lr"]:g} | '
      f'{g["metric"]} | {scale * g["mean"]:.2f}{unit} ± '
      f'{scale * g["std"]:.2f} ({len(g["values"])}) | '
      f'{g["val_loss_mean"]:.4f} ± {g["val_loss_std"]:.4f} | '
      f'{g["step_seconds_median"]:.3f} | {g["tokens_per_second"]:.0f} | '
      f'{g["opt_state_bytes"] / 2**20:.2f} '
      f'({g["sgg_state_bytes"] / 2**20:.2f}) |')
  if summary.get('paired'):
    lines += ['', '| task | method | SGG − AdamW per seed | mean ± std |',
              '|---|---|---|---|']
    for p in summary['paired']:
      scale = 100 if p['metric'] == 'accuracy' else 1
      vals = ', '.join(f'{scale * d:+.2f}' for d in p['sgg_minus_adamw'])
      lines.append(f'| {p["task"]} | {p["method"]} | {vals} | '
                   f'{scale * p["mean"]:+.2f} ± {scale * p["std"]:.2f} |')
  if summary.get('zero_shot'):
    lines += ['', '| zero-shot task | precision | validation |',
              '|---|---|---|']
    for z in summary['zero_shot']:
      v = z['validation']
      shown = (f'ppl {v["ppl"]:.2f}' if 'ppl' in v
               else f'accuracy {100 * v["accuracy"]:.1f}%')
      lines.append(f'| {z["task"]} | {z["precision"]} | {shown} |')
  return '\n'.join(lines) + '\n'


def plot(task: str, runs: list[dict[str, Any]], summary: dict[str, Any],
         path: pathlib.Path) -> None:
  """Training-loss curves (mean over seeds), the LR sweep, final metric."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  groups = [g for g in summary['groups'] if g['task'] == task]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  colors = {'full': 'C0', 'lora': 'C1', 'qlora': 'C2'}
  for g in groups:
    style = '-' if g['optimizer'] == 'adamw' else '--'
    label = f'{g["method"]} {g["optimizer"]}'
    curves = np.array([r['train_loss'] for r in runs
                       if r['task'] == task and r['method'] == g['method']
                       and r['optimizer'] == g['optimizer']
                       and r['lr'] == g['lr'] and r['seed'] in g['seeds']])
    if curves.size:
      k = max(1, curves.shape[1] // 20)
      kernel = np.ones(k) / k
      smooth = np.array([np.convolve(c, kernel, 'valid') for c in curves])
      x = np.arange(smooth.shape[1]) + k
      m, s = smooth.mean(0), smooth.std(0)
      axes[0].plot(x, m, style, color=colors[g['method']], label=label)
      axes[0].fill_between(x, m - s, m + s, color=colors[g['method']],
                           alpha=0.1)
    lrs = sorted(g['lr_grid'], key=float)
    axes[1].plot([float(x) for x in lrs], [g['lr_grid'][x] for x in lrs],
                 style + 'o', color=colors[g['method']], label=label)
  axes[0].set(xlabel='step', ylabel='train loss (moving average)',
              title=f'{task}: training loss, mean ± std over seeds')
  metric = 'perplexity' if task == 'lm' else 'accuracy'
  axes[1].set(xscale='log', xlabel='peak learning rate',
              ylabel=f'dev {metric} (tuning seed)', title='learning-rate grid')
  names = [f'{g["method"]}\n{g["optimizer"]}' for g in groups]
  axes[2].bar(range(len(groups)), [g['mean'] for g in groups],
              yerr=[g['std'] for g in groups], capsize=4,
              color=[colors[g['method']] for g in groups],
              hatch=None, alpha=0.8)
  for i, g in enumerate(groups):
    axes[2].scatter([i] * len(g['values']), g['values'], color='k', s=8,
                    zorder=3)
  lo = min(min(g['values']) for g in groups)
  hi = max(max(g['values']) for g in groups)
  pad = 0.15 * (hi - lo + 1e-9)
  axes[2].set_ylim(lo - 3 * pad, hi + pad)
  axes[2].set_xticks(range(len(groups)), names, fontsize=8)
  axes[2].set(ylabel=f'validation {metric}',
              title='validation, mean ± std (dots: seeds)')
  for ax in axes[:2]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------


def _floats(s: str) -> list[float]:
  return [float(x) for x in s.split(',') if x]


def _ints(s: str) -> list[int]:
  return [int(x) for x in s.split(',') if x]


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
  def parse(s: str) -> list[str]:
    names = [x for x in s.split(',') if x]
    bad = [x for x in names if x not in choices]
    if bad:
      raise argparse.ArgumentTypeError(f'{bad} not in {choices}')
    return names
  return parse


def parser() -> argparse.ArgumentParser:
  """The command-line interface."""
  p = argparse.ArgumentParser(
    prog='python -m experiments.finetune', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter)
  a = p.add_argument
  a('--out', default='experiments/results/finetune',
    help='output folder: runs/*.json, summary.{json,md}, finetune_*.png')
  a('--tasks', type=_names(TASKS), default=list(TASKS))
  a('--methods', type=_names(METHODS), default=list(METHODS))
  a('--optimizers', type=_names(OPTIMIZERS), default=list(OPTIMIZERS))
  a('--steps', type=int, default=40, help='optimizer steps per run')
  a('--batch-size', type=int, default=4, help='lm sequences per step')
  a('--seq-len', type=int, default=64, help='lm tokens predicted per row')
  a('--cls-batch-size', type=int, default=8, help='cls prompts per step')
  a('--cls-seq-len', type=int, default=64,
    help='cls prompt length (article truncated to fit)')
  a('--lrs-full', type=_floats, default=[1e-5, 3e-5, 1e-4],
    help='peak learning-rate grid of full fine-tuning')
  a('--lrs-lora', type=_floats, default=[3e-4, 1e-3, 3e-3],
    help='peak learning-rate grid of LoRA and Q-LoRA')
  a('--seeds', type=_ints, default=[0, 1, 2])
  a('--tune-seed', type=int, default=0,
    help='seed of the learning-rate search (its runs are reused)')
  a('--warmup-frac', type=float, default=0.1)
  a('--weight-decay', type=float, default=0.0)
  a('--clip', type=float, default=1.0, help='global-norm clip (0: none)')
  a('--lora-rank', type=int, default=8)
  a('--lora-alpha', type=float, default=16.0)
  a('--lora-dropout', type=float, default=0.0)
  a('--lora-targets', default='all',
    help=f'one of {sorted(L.TARGET_PRESETS)} or comma-separated names')
  a('--sgg-k', type=int, default=3, help="SGG's K")
  a('--sgg-interval', type=int, default=0,
    help="SGG's T (0: --sgg-interval-frac of --steps)")
  a('--sgg-interval-frac', type=float, default=0.05)
  a('--sgg-beta3', type=float, default=0.9, help='scale EMA decay')
  a('--sgg-form', choices=('momentum', 'update'), default='momentum',
    help="cluster Adam's first moment (paper, with_sgg) or the update (sgg)")
  a('--sgg-rule', choices=('mda', 'reference'), default='mda')
  a('--sgg-cluster-decay', type=float, default=0.95,
    help='reference rule only: decay of the cluster-mean EMA')
  a('--sgg-preset', choices=('none', 'paper_llava'), default='none',
    help='paper_llava: K=3, T=1000, reference rule, decays (0.95, 0.9)')
  a('--eval-windows', type=int, default=64,
    help='lm validation windows (evenly spaced over the split)')
  a('--dev-windows', type=int, default=32)
  a('--eval-examples', type=int, default=0,
    help='cls dev examples (0: all)')
  a('--val-examples', type=int, default=0,
    help='cls validation examples (0: all 209)')
  a('--eval-batch-size', type=int, default=16)
  a('--no-zero-shot', dest='zero_shot', action='store_false',
    help='skip evaluating the untouched base models')
  a('--dtype', choices=('float32', 'bfloat16'), default='float32',
    help='compute dtype')
  a('--n-layers', type=int, default=0,
    help='keep only the first N pretrained blocks (0: all 30)')
  a('--log-every', type=int, default=1, help='steps between host syncs')
  a('--quiet', action='store_true', help='no progress bar')
  a('--summary-only', action='store_true',
    help='only rebuild summary and plots from existing run JSONs')
  a('--smoke', action='store_true',
    help='CI: the first pretrained block only, 3 steps; lm with every '
    'method and optimizer, cls with LoRA and LoRA+SGG')
  return p


def apply_smoke(args: argparse.Namespace) -> argparse.Namespace:
  """Tiny settings that still exercise every code path."""
  args.n_layers = args.n_layers or 1
  args.zero_shot = False
  args.steps, args.batch_size, args.seq_len = 3, 2, 32
  args.cls_batch_size, args.cls_seq_len = 2, 48
  args.lrs_full, args.lrs_lora = [1e-4], [1e-3]
  args.seeds, args.tune_seed = [0], 0
  args.sgg_interval = 1
  args.eval_windows = args.dev_windows = 2
  args.eval_examples = args.val_examples = args.eval_batch_size = 4
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parser().parse_args(argv)
  if args.smoke:
    apply_smoke(args)
  if args.sgg_preset == 'paper_llava':
    args.sgg_k, args.sgg_interval, args.sgg_rule = 3, 1000, 'reference'
    args.sgg_cluster_decay, args.sgg_beta3 = 0.95, 0.9
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.summary_only:
    summarize(out, args)
    return
  (out / 'args.json').write_text(json.dumps(vars(args), indent=1))
  sweep(args)


if __name__ == '__main__':
  main()
