"""Scores a fine-tuned (or untouched) model on a dev or test `EvalSet`."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.finetuning import data as FD
from experiments.finetuning import step as FS

Score = Callable[[dict[str, jax.Array]], jax.Array]


def _batches(rows: dict[str, np.ndarray], batch_size: int):
  """Fixed-size batches (the last padded by repeating row 0) and the number
  of real rows in each, so that every batch reuses one compiled step."""
  n = len(next(iter(rows.values())))
  for i in range(0, n, batch_size):
    part = {k: v[i:i + batch_size] for k, v in rows.items()}
    real = len(next(iter(part.values())))
    if real < batch_size:
      part = {k: np.concatenate([v, np.repeat(v[:1], batch_size - real, 0)])
              for k, v in part.items()}
    yield {k: jnp.asarray(v) for k, v in part.items()}, real


def lm_metrics(score: Score, windows: np.ndarray, batch_size: int
               ) -> dict[str, float]:
  """Mean next-token NLL over all windows, and its perplexity."""
  total = 0.0
  for i in range(0, len(windows), batch_size):
    part = windows[i:i + batch_size]  # a short last batch: exact mean
    total += float(score({'tokens': jnp.asarray(part)})) * len(part)
  loss = total / len(windows)
  return {'loss': loss, 'ppl': math.exp(loss)}


def cls_metrics(score: Score, rows: dict[str, np.ndarray], batch_size: int
                ) -> dict[str, float]:
  """Accuracy and mean cross-entropy of the 5 verbaliser logits."""
  inputs = {'tokens': rows['tokens'], 'lengths': rows['lengths']}
  logits = np.concatenate([np.asarray(score(b))[:real]
                           for b, real in _batches(inputs, batch_size)])
  labels = rows['labels']
  m = logits.max(-1, keepdims=True)
  logp = logits - (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))
  return {'accuracy': float(np.mean(logits.argmax(-1) == labels)),
          'loss': float(-np.mean(logp[np.arange(len(labels)), labels]))}


def evaluate(task: str, eval_set: FD.EvalSet, graphdef, params, rngs,
             frozen, *, batch_size: int, ids: np.ndarray | None = None
             ) -> dict[str, float]:
  """lm: `loss`, `ppl`; cls: `accuracy`, `loss`, on `eval_set`."""
  ids = None if ids is None else jnp.asarray(ids)

  def score(batch):
    return FS.eval_step(params, rngs, frozen, batch, ids, graphdef=graphdef,
                        task=task)

  if task == 'lm':
    return lm_metrics(score, eval_set.rows['tokens'], batch_size)
  return cls_metrics(score, eval_set.rows, batch_size)
