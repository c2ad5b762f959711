"""Dev/test splits of the pre-training streams and the windows scored on them.

Three splits, all fixed for a corpus and tokenizer:

* **train**: the corpus's training documents (`experiments.common.corpora`),
  minus dev;
* **dev**: every `DEV_EVERY`-th piece of the training stream (a piece
  is one document, or `PIECE_TOKENS` tokens of a longer one), held out of
  training. Pieces follow the documents' id order, so dev is spread evenly
  over the whole stream (every BBC topic, every novel). Every tuning choice
  (learning rate, grid extension) reads dev only;
* **test**: the corpus's held-out ("validation") documents, reported only.

A split is scored on `num_windows` windows of ``seq_len + 1`` tokens whose
starts are evenly spaced from the first to the last possible offset of the
split's stream (`window_starts`): the same windows for every optimizer,
batch size and device count, covering the split end to end
(`eval_span` ~ 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

DEV_EVERY = 10  # one piece in ten of the training stream is dev
DEV_OFFSET = DEV_EVERY // 2  # pieces 5, 15, 25, ... (not the first)
PIECE_TOKENS = 4096  # longer documents are cut into pieces of this length


def piece_bounds(tokens: np.ndarray, eos_id: int | None,
                 piece_tokens: int = PIECE_TOKENS) -> np.ndarray:
  """Starts of the stream's pieces, then its length.

  A piece is a document (ending with ``eos_id``) or, inside a document
  longer than ``piece_tokens``, a run of ``piece_tokens`` tokens.

  Args:
    tokens: 1-D token stream.
    eos_id: the end-of-document token (None: fixed-length pieces only).
    piece_tokens: the longest piece.

  Returns:
    Increasing int64 offsets, first 0, last ``len(tokens)``.
  """
  n = len(tokens)
  ends = (np.flatnonzero(np.asarray(tokens) == eos_id) + 1
          if eos_id is not None else np.zeros(0, np.int64))
  ends = np.union1d(ends, [n]).astype(np.int64)
  starts = np.concatenate([[0], ends[:-1]])
  bounds = [np.arange(s, e, piece_tokens) for s, e in zip(starts, ends)
            if e > s]
  return np.concatenate(bounds + [np.array([n])]).astype(np.int64)


def split_dev(tokens: np.ndarray, eos_id: int | None,
              every: int = DEV_EVERY, offset: int = DEV_OFFSET
              ) -> tuple[np.ndarray, np.ndarray]:
  """Splits a training stream into (train, dev): piece i is dev iff
  ``i % every == offset``.

  Args:
    tokens: the corpus's training stream.
    eos_id: the end-of-document token.
    every: one piece in ``every`` goes to dev.
    offset: which one.

  Returns:
    ``(train, dev)`` streams, each in the original order.
  """
  bounds = piece_bounds(tokens, eos_id)
  is_dev = np.arange(len(bounds) - 1) % every == offset
  mask = np.repeat(is_dev, np.diff(bounds))
  return tokens[~mask], tokens[mask]


def window_starts(num_tokens: int, seq_len: int, num_windows: int
                  ) -> np.ndarray:
  """Evenly spaced starts of ``seq_len + 1``-token windows over a stream.

  Args:
    num_tokens: length of the stream.
    seq_len: predicted tokens per window.
    num_windows: how many windows (0: every non-overlapping window, tiling
      the stream).

  Returns:
    int64 starts, the first 0, the last ``num_tokens - seq_len - 1``
    (deterministic: a function of the three arguments only).
  """
  last = num_tokens - seq_len - 1
  if last < 0:
    raise ValueError(f'a stream of {num_tokens} tokens is shorter than one '
                     f'window of {seq_len + 1}')
  if num_windows <= 0:
    return np.arange(0, last + 1, seq_len, dtype=np.int64)
  return np.round(np.linspace(0, last, num_windows)).astype(np.int64)


def eval_span(num_tokens: int, starts: np.ndarray, seq_len: int) -> float:
  """Fraction of the stream between the first and last window's ends."""
  if not len(starts) or not num_tokens:
    return 0.0
  return float((starts.max() + seq_len + 1 - starts.min()) / num_tokens)


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One split's evaluation windows, batched and placed on the mesh.

  Attributes:
    name: 'dev' or 'test'.
    batches: ``(tokens, weights)`` global arrays per batch; padding rows
      (to fill the last batch) have weight 0.
    num_windows: real windows.
    num_tokens: length of the split's stream.
    span: `eval_span` of the windows.
  """

  name: str
  batches: tuple[tuple[jax.Array, jax.Array], ...]
  num_windows: int
  num_tokens: int
  span: float


def make_eval_set(name: str, tokens: np.ndarray, *, seq_len: int,
                  num_windows: int, batch_size: int,
                  sharding: NamedSharding) -> EvalSet:
  """`window_starts` windows of ``tokens``, in global batches.

  Every process builds its own rows of each batch (the contiguous block of
  process ``p``), as `experiments.common.batches` does for training batches.
  """
  starts = window_starts(len(tokens), seq_len, num_windows)
  pad = -len(starts) % batch_size
  weights = np.concatenate([np.ones(len(starts)), np.zeros(pad)])
  starts = np.concatenate([starts, np.zeros(pad, np.int64)])
  pid, pcount = jax.process_index(), jax.process_count()
  per = batch_size // pcount
  rows = slice(pid * per, (pid + 1) * per)
  offsets = np.arange(seq_len + 1)
  batches = []
  for b in range(0, len(starts), batch_size):
    s, w = starts[b:b + batch_size][rows], weights[b:b + batch_size][rows]
    windows = np.asarray(tokens[s[:, None] + offsets], np.int32)
    batches.append((
      jax.make_array_from_process_local_data(
        sharding, windows, (batch_size, seq_len + 1)),
      jax.make_array_from_process_local_data(
        sharding, w.astype(np.float32), (batch_size,))))
  n = len(starts) - pad
  return EvalSet(name, tuple(batches), n, len(tokens),
                 eval_span(len(tokens), starts[:n], seq_len))


@nnx.jit
def _weighted_loss(model: nnx.Module, batch: jax.Array,
                   weights: jax.Array) -> jax.Array:
  """Sum over rows of weight x the row's mean next-token loss."""
  logits = model(batch[:, :-1]).astype(jnp.float32)
  per_token = optax.softmax_cross_entropy_with_integer_labels(
    logits, batch[:, 1:])
  return jnp.sum(per_token.mean(axis=1) * weights)


def evaluate(model: nnx.Module, eval_set: EvalSet) -> float:
  """Mean next-token loss over the set's windows (every window counts once)."""
  sums = [_weighted_loss(model, b, w) for b, w in eval_set.batches]
  return float(np.sum(jax.device_get(sums)) / max(eval_set.num_windows, 1))
