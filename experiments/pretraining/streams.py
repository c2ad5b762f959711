"""The token streams of a pre-training run, and its global batches."""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding

from experiments.common import corpora, tokenizer
from experiments.pretraining import evaluation
from experiments.pretraining.config import TrainConfig


class Streams(NamedTuple):
  """The token streams of a run: train, dev (carved from train) and test.

  ``train`` is None for C4-format shards (`cfg.data_glob`), read as the
  run goes (`c4_batches`).
  """

  train: np.ndarray | None
  dev: np.ndarray
  test: np.ndarray
  vocab_size: int


def _stream_name(cfg: TrainConfig) -> str:
  kind = 'bytes' if cfg.tokenizer == 'bytes' else f'bpe{cfg.vocab_size}'
  return f'{cfg.corpus}-{kind}'


def exported_streams(cfg: TrainConfig) -> pathlib.Path | None:
  """The metadata file of `cfg.data_dir`'s exported streams, if present."""
  if not cfg.data_dir:
    return None
  meta = pathlib.Path(cfg.data_dir) / f'{_stream_name(cfg)}.json'
  return meta if meta.exists() else None


def _data_py_streams(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int,
                                                int | None]:
  """The corpus's train and held-out streams, vocabulary size and EOS id."""
  name = _stream_name(cfg)
  meta = exported_streams(cfg)
  if meta is not None:
    info = json.loads(meta.read_text())
    root = meta.parent
    return (np.load(root / f'{name}-train.npy').astype(np.int32),
            np.load(root / f'{name}-validation.npy').astype(np.int32),
            info['vocab_size'], info.get('eos_id'))
  tok = tokenizer.get_tokenizer(cfg.tokenizer, cfg.corpus, cfg.vocab_size)
  train = tokenizer.tokenize_split(cfg.corpus, corpora.TRAIN, tok)
  held_out = tokenizer.tokenize_split(cfg.corpus,
                                      corpora.VALIDATION, tok)
  if cfg.data_dir and jax.process_index() == 0:
    root = pathlib.Path(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    np.save(root / f'{name}-train.npy', train.astype(dtype))
    np.save(root / f'{name}-validation.npy', held_out.astype(dtype))
    (root / f'{name}.json').write_text(
      json.dumps({'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id}))
  return train, held_out, tok.vocab_size, tok.eos_id


def load_streams(cfg: TrainConfig) -> Streams:
  """Train, dev and test token streams and the vocabulary size.

  The corpus's fixed split (`experiments.common.corpora`) gives the
  training and held-out streams; the held-out one is **test**, and **dev**
  is carved out of the training stream (`evaluation.split_dev`: every tenth
  document, never trained on). With `cfg.data_dir`, streams saved there
  (`<corpus>-<tokenizer>-<split>.npy` plus a `.json` with the vocabulary
  size and end-of-text id) are read without the corpus packages, e.g. on an
  accelerator host; otherwise they are tokenized
  (`experiments.common.tokenizer`, cached) and, when `data_dir` is set,
  saved there.

  With `cfg.data_glob` (C4-format shards), dev and test come from the
  validation shards (`c4.eval_streams`) and the training batches from
  `c4_batches`.

  Args:
    cfg: the run's configuration.

  Returns:
    The streams.
  """
  if cfg.data_glob:
    from experiments.pretraining import c4

    tok = c4.load_tokenizer(cfg.tokenizer_file)
    dev, test = c4.eval_streams(cfg.eval_glob, tok)
    return Streams(None, dev, test, tok.vocab_size)
  train, test, vocab, eos_id = _data_py_streams(cfg)
  train, dev = evaluation.split_dev(train, eos_id)
  return Streams(train, dev, test, vocab)


def c4_batches(cfg: TrainConfig) -> Any:
  """This process's training batches of `cfg.data_glob`, from the start:
  a grain iterator whose state is the data position (`c4.train_dataset`).
  """
  from experiments.pretraining import c4

  return iter(c4.train_dataset(
    cfg.data_glob, c4.load_tokenizer(cfg.tokenizer_file),
    seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed,
    process_index=jax.process_index(), process_count=jax.process_count()))


def _global_batch(local: np.ndarray, sharding: NamedSharding,
                  global_rows: int) -> jax.Array:
  shape = (global_rows,) + local.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local, shape)
