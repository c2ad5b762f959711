"""Language-model batches of a token stream, and padded classification rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from experiments.common.tokenizer import Tokenizer

# Multi-host sharding: every process computes the same global batch from the
# seed and the step, then keeps the contiguous block of rows
# ``[p * B / P, (p + 1) * B / P)`` for process ``p`` of ``P`` (``B`` the global
# batch size). Stacking the processes' blocks in process order gives back the
# single-process batch exactly, which is the layout that
# ``jax.make_array_from_process_local_data`` expects for an array sharded
# along its first axis over all devices.


def _local_rows(batch_size: int, process_index: int,
                process_count: int) -> slice:
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got "
                     f"{process_index} and {process_count}")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by "
                     f"process_count {process_count}")
  per_process = batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int
             ) -> np.ndarray:
  offsets = np.arange(seq_len + 1)
  return np.asarray(tokens[starts[:, None] + offsets], dtype=np.int32)


def train_batch(tokens: np.ndarray, step: int, *, batch_size: int,
                seq_len: int, seed: int, process_index: int = 0,
                process_count: int = 1) -> np.ndarray:
  """Returns this process's rows of the training batch of one step.

  Each of the ``batch_size`` rows of the global batch is the window
  ``tokens[s : s + seq_len + 1]`` at a start ``s`` drawn uniformly, with
  replacement, by a generator seeded with ``(seed, step)``. A batch depends
  only on the seed and the step, so a run resumes at any step. Inputs are
  ``batch[:, :-1]`` and next-token targets ``batch[:, 1:]``; windows may cross
  document boundaries, marked by end-of-text tokens.

  Args:
    tokens: 1-D token stream, such as one from `tokenize_split`.
    step: Training step, from 0.
    batch_size: Global batch size, over all processes.
    seq_len: Number of predicted tokens per row.
    seed: Seed of the sampling.
    process_index: This process's index, as ``jax.process_index()``.
    process_count: Number of processes, as ``jax.process_count()``.

  Returns:
    ``(batch_size // process_count, seq_len + 1)`` ``int32`` windows.
  """
  rows = _local_rows(batch_size, process_index, process_count)
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if step < 0 or seed < 0:
    raise ValueError(f"step and seed must be non-negative, got {step}, {seed}")
  if len(tokens) < seq_len + 1:
    raise ValueError(f"{len(tokens)} tokens are too few for seq_len "
                     f"{seq_len}")
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  return _windows(tokens, starts[rows], seq_len)


def train_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                  seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[np.ndarray]:
  """Yields `train_batch` for ``start_step``, ``start_step + 1``, ... forever.

  Args:
    tokens: 1-D token stream.
    batch_size: Global batch size, over all processes.
    seq_len: Number of predicted tokens per row.
    seed: Seed of the sampling.
    start_step: First step, to resume a run.
    process_index: This process's index.
    process_count: Number of processes.

  Yields:
    ``(batch_size // process_count, seq_len + 1)`` ``int32`` windows.
  """
  step = start_step
  while True:
    yield train_batch(tokens, step, batch_size=batch_size, seq_len=seq_len,
                      seed=seed, process_index=process_index,
                      process_count=process_count)
    step += 1


def num_eval_batches(num_tokens: int, *, batch_size: int, seq_len: int) -> int:
  """Returns how many full batches `eval_batches` can make of a stream."""
  if seq_len <= 0 or batch_size <= 0:
    raise ValueError("batch_size and seq_len must be positive")
  return max(num_tokens - 1, 0) // seq_len // batch_size


def eval_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                 num_batches: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[np.ndarray]:
  """Yields fixed validation batches that predict each token at most once.

  Window ``i`` is ``tokens[i * seq_len : (i + 1) * seq_len + 1]``: windows
  share only their boundary token, so their targets tile the stream without
  overlap. Global batch ``b`` holds windows ``b * batch_size`` to
  ``(b + 1) * batch_size - 1``, sharded over processes like `train_batch`.
  The tail that does not fill a whole batch is dropped.

  Args:
    tokens: 1-D token stream, such as the validation split.
    batch_size: Global batch size, over all processes.
    seq_len: Number of predicted tokens per row.
    num_batches: Number of batches; all full batches when ``None``.
    process_index: This process's index.
    process_count: Number of processes.

  Yields:
    ``(batch_size // process_count, seq_len + 1)`` ``int32`` windows.

  Raises:
    ValueError: If the stream holds fewer than ``num_batches`` batches.
  """
  rows = _local_rows(batch_size, process_index, process_count)
  available = num_eval_batches(len(tokens), batch_size=batch_size,
                               seq_len=seq_len)
  if num_batches is None:
    num_batches = available
  if not 0 <= num_batches <= available:
    raise ValueError(f"asked for {num_batches} batches, the stream of "
                     f"{len(tokens)} tokens holds {available}")
  for batch in range(num_batches):
    windows = np.arange(batch * batch_size, (batch + 1) * batch_size)
    yield _windows(tokens, windows[rows] * seq_len, seq_len)


def encode_classification(examples: Sequence[tuple[str, int]],
                          tokenizer: Tokenizer, seq_len: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Encodes labelled texts into padded, fixed-length rows.

  Each row is the text's first ``seq_len - 1`` tokens (or fewer), then
  ``tokenizer.eos_id``, then ``tokenizer.pad_id`` up to ``seq_len``. The last
  real token of every row is end-of-text, so a causal model can classify from
  its state at position ``lengths - 1``.

  Args:
    examples: ``(text, label)`` pairs, as in `ClassificationData`.
    tokenizer: Tokenizer to encode with.
    seq_len: Row length.

  Returns:
    ``(tokens, lengths, labels)``: ``(n, seq_len)``, ``(n,)`` and ``(n,)``
    ``int32`` arrays.
  """
  if seq_len < 2:
    raise ValueError(f"seq_len must be at least 2, got {seq_len}")
  encoded = tokenizer.encode_batch([text for text, _ in examples])
  tokens = np.full((len(examples), seq_len), tokenizer.pad_id, np.int32)
  lengths = np.zeros(len(examples), np.int32)
  for row, ids in enumerate(encoded):
    kept = [*ids[:seq_len - 1], tokenizer.eos_id]
    tokens[row, :len(kept)] = kept
    lengths[row] = len(kept)
  labels = np.asarray([label for _, label in examples], np.int32)
  return tokens, lengths, labels
