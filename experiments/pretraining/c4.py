"""Training data in C4's own format, read with grain, resumable, per process.

C4 (``allenai/c4``, ``en``) ships as gzipped JSON-lines shards
(``c4-train.00000-of-01024.json.gz``, ...), one document per line with a
``text`` field. `train_dataset` reads a glob of such shards (``*.json.gz``
or ``*.jsonl``), tokenizes each document with a ``tokenizers`` JSON file
the user names (`load_tokenizer`; the paper uses the T5 tokenizer) and an
end-of-text token after it, packs the token stream into windows of
``seq_len + 1`` tokens (grain's ``ConcatThenSplitIterDataset``: no padding,
documents cut at window boundaries) and batches this process's rows:

* **Per process.** Process ``p`` of ``P`` reads shards ``p, p + P, ...``
  of the sorted glob; with fewer shards than processes, every process
  reads every shard and keeps lines ``p, p + P, ...``. The processes read
  disjoint documents, and ``jax.make_array_from_process_local_data``
  stacks their rows into the global batch.
* **Epochs.** Each epoch visits the process's shards in an order drawn
  from ``(seed, epoch)``, forever.
* **Resumable.** The iterator's state (the epoch, the shard, the byte
  offset in it, and the packing buffer) is a small JSON object, saved in
  every checkpoint (grain's orbax handler: one file per process) and
  restored with it, so a killed run continues with the same batches.

`eval_streams` reads the validation shards (the same on every process)
into the dev and test token streams of `experiments.pretraining.streams`.
"""

from __future__ import annotations

import glob
import gzip
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from experiments.pretraining import evaluation

# Tokens of the validation shards read for dev and test (GaLore evaluates
# on 10M tokens of C4's validation split).
EVAL_TOKENS = 10_000_000
# End-of-text tokens looked for in a tokenizer's vocabulary, in this order.
EOS_TOKENS = ('</s>', '<|endoftext|>', '<eos>', '[SEP]')


class Tokenizer:
  """A ``tokenizers`` JSON file and its end-of-text id.

  Attributes:
    path: the file.
    vocab_size: ids it can produce (special tokens included).
    eos_id: the end-of-text id appended to every document.
  """

  def __init__(self, path: str | pathlib.Path):
    from tokenizers import Tokenizer as HFTokenizer

    self.path = str(path)
    self._tok = HFTokenizer.from_file(self.path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    found = [self._tok.token_to_id(t) for t in EOS_TOKENS]
    found = [i for i in found if i is not None]
    if not found:
      raise ValueError(f'{path}: none of the end-of-text tokens '
                       f'{EOS_TOKENS} is in the vocabulary')
    self.eos_id = found[0]

  def encode(self, text: str) -> np.ndarray:
    """The text's ids, then end-of-text (no other special token)."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return np.asarray(ids + [self.eos_id], np.int32)


def load_tokenizer(path: str) -> Tokenizer:
  return Tokenizer(path)


def shard_files(pattern: str) -> list[str]:
  """The sorted ``*.json.gz`` / ``*.jsonl`` files a glob matches.

  Raises:
    ValueError: the glob matches none.
  """
  files = sorted(f for f in glob.glob(pattern)
                 if f.endswith(('.json.gz', '.jsonl', '.json')))
  if not files:
    raise ValueError(f'no *.json.gz or *.jsonl shard matches {pattern!r}')
  return files


def process_share(files: Sequence[str], process_index: int,
                  process_count: int) -> tuple[list[str], int, int]:
  """``(files, line_stride, line_offset)`` this process reads."""
  if len(files) >= process_count:
    return list(files[process_index::process_count]), 1, 0
  return list(files), process_count, process_index


def _open(path: str) -> Any:
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


class _ShardsIterator(grain.DatasetIterator):
  """Texts of a process's shards, epoch after epoch; state is a position."""

  def __init__(self, files: list[str], stride: int, offset: int, seed: int):
    super().__init__()
    self._files, self._stride, self._offset = files, stride, offset
    self._seed = seed
    self._epoch, self._index, self._pos, self._line = 0, 0, 0, 0
    self._handle = None

  def _order(self) -> np.ndarray:
    return np.random.default_rng([self._seed, self._epoch]).permutation(
      len(self._files))

  def _reopen(self) -> None:
    if self._handle is not None:
      self._handle.close()
    self._handle = _open(self._files[self._order()[self._index]])
    self._handle.seek(self._pos)

  def __next__(self) -> str:
    if self._handle is None:
      self._reopen()
    while True:
      raw = self._handle.readline()
      if not raw:  # next shard (and next epoch)
        self._index, self._pos, self._line = self._index + 1, 0, 0
        if self._index == len(self._files):
          self._epoch, self._index = self._epoch + 1, 0
        self._reopen()
        continue
      self._pos += len(raw)
      self._line += 1
      if (self._line - 1) % self._stride != self._offset or not raw.strip():
        continue
      return json.loads(raw)['text']

  def get_state(self) -> dict[str, Any]:
    return {'epoch': self._epoch, 'shard': self._index, 'offset': self._pos,
            'line': self._line}

  def set_state(self, state: dict[str, Any]) -> None:
    self._epoch, self._index = state['epoch'], state['shard']
    self._pos, self._line = state['offset'], state['line']
    self._reopen()

  def close(self) -> None:
    if self._handle is not None:
      self._handle.close()
      self._handle = None


class ShardsDataset(grain.IterDataset):
  """The ``text`` of every document of some shards, forever (an epoch per
  pass, shards in an order drawn from ``(seed, epoch)``).

  Args:
    files: the shards (JSON lines, optionally gzipped).
    stride: keep one line in ``stride``...
    offset: ...starting at line ``offset``.
    seed: seeds the shard order of every epoch.
  """

  def __init__(self, files: Sequence[str], *, stride: int = 1,
               offset: int = 0, seed: int = 0):
    super().__init__()
    self._args = (list(files), stride, offset, seed)

  def __iter__(self) -> _ShardsIterator:
    return _ShardsIterator(*self._args)


class _JsonStateIterator(grain.DatasetIterator):
  """Passes elements through; restores a state that went through JSON."""

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)

  def __next__(self) -> Any:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    # grain's packing compares its slices with a tuple; JSON (and grain's
    # own checkpoint handler) gives lists, which it would take for a
    # remainder and so skip documents.
    state = dict(state, remainder_slices={
      k: tuple(v) for k, v in state['remainder_slices'].items()})
    self._parent.set_state(state)


class _JsonState(grain.IterDataset):
  def __iter__(self) -> _JsonStateIterator:
    return _JsonStateIterator(iter(self._parent))


def train_dataset(pattern: str, tokenizer: Tokenizer, *, seq_len: int,
                  batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """This process's training batches of a glob of C4-format shards.

  Args:
    pattern: a glob of ``*.json.gz`` / ``*.jsonl`` shards.
    tokenizer: `load_tokenizer`'s.
    seq_len: predicted tokens per row (rows hold ``seq_len + 1``).
    batch_size: the global batch (rows over all processes).
    seed: the shard order's seed.
    process_index: this process.
    process_count: the processes.

  Returns:
    A grain dataset of ``(batch_size // process_count, seq_len + 1)``
    int32 batches; its iterator's ``get_state`` / ``set_state`` are the
    data position.
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by '
                     f'{process_count} processes')
  files, stride, offset = process_share(shard_files(pattern), process_index,
                                        process_count)
  ds = ShardsDataset(files, stride=stride, offset=offset, seed=seed)
  ds = ds.map(lambda text: {'tokens': tokenizer.encode(text)})
  ds = _JsonState(grain.experimental.ConcatThenSplitIterDataset(
    ds, length_struct={'tokens': seq_len + 1}))
  ds = ds.map(lambda packed: packed['tokens'].astype(np.int32))
  return ds.batch(batch_size // process_count, drop_remainder=True)


def config_errors(data_glob: str, eval_glob: str, tokenizer_file: str
                  ) -> list[tuple[str, str]]:
  """``(flag, message)`` for each of the three settings that cannot work."""
  errors = []
  for flag, pattern in (('--data-glob', data_glob),
                        ('--eval-glob', eval_glob)):
    try:
      shard_files(pattern) if pattern else None
    except ValueError as e:
      errors.append((flag, str(e)))
    if not pattern:
      errors.append((flag, 'C4-format data needs --data-glob, --eval-glob '
                     'and --tokenizer-file'))
  try:
    if tokenizer_file:
      load_tokenizer(tokenizer_file)
    else:
      errors.append(('--tokenizer-file', 'C4-format data needs a '
                     'tokenizers JSON file'))
  except Exception as e:  # noqa: BLE001  # any unreadable file
    errors.append(('--tokenizer-file', f'cannot read {tokenizer_file}: {e}'))
  return errors


def eval_tokens(pattern: str, tokenizer: Tokenizer,
                max_tokens: int = EVAL_TOKENS) -> np.ndarray:
  """The first ``max_tokens`` tokens of the validation shards, in order."""
  parts, total = [], 0
  for path in shard_files(pattern):
    with _open(path) as f:
      for raw in f:
        if not raw.strip():
          continue
        ids = tokenizer.encode(json.loads(raw)['text'])
        parts.append(ids)
        total += len(ids)
        if total >= max_tokens:
          return np.concatenate(parts)[:max_tokens]
  return np.concatenate(parts)


def eval_streams(pattern: str, tokenizer: Tokenizer,
                 max_tokens: int = EVAL_TOKENS
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``(dev, test)`` streams of the validation shards: dev is every tenth
  document (`evaluation.split_dev`), test the rest."""
  test, dev = evaluation.split_dev(eval_tokens(pattern, tokenizer,
                                               max_tokens),
                                   tokenizer.eos_id)
  return dev, test
