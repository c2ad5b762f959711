"""Tokenizers (UTF-8 bytes, a BPE per corpus) and tokenized corpus splits.

Both the trained BPE and every tokenized split are cached on disk
(`cache_dir`), under names that hash everything they depend on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np

from experiments.common.corpora import TRAIN, Corpus, _check_split, load_corpus

if TYPE_CHECKING:
  import tokenizers

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 8192
CACHE_ENV_VAR = "SGG_OPTAX_CACHE"

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Bump when the meaning of a cached file changes, to invalidate old caches.
_CACHE_FORMAT = 1


# ------------------------------------------------------------------------------
# Disk cache
# ------------------------------------------------------------------------------


def _cache_file(cache: str | os.PathLike | None, folder: str, stem: str,
                suffix: str, *inputs: object) -> pathlib.Path:
  """``<cache or cache_dir()>/<folder>/<stem>-<hash of inputs><suffix>``."""
  key = hashlib.sha256(
    "/".join(map(str, (_CACHE_FORMAT,) + inputs)).encode()).hexdigest()[:16]
  root = pathlib.Path(cache) if cache is not None else cache_dir()
  return root / folder / f"{stem}-{key}{suffix}"


def cache_dir() -> pathlib.Path:
  """Returns ``$SGG_OPTAX_CACHE``, or ``~/.cache/sgg_optax`` when unset."""
  override = os.environ.get(CACHE_ENV_VAR)
  if override:
    return pathlib.Path(override).expanduser()
  return pathlib.Path.home() / ".cache" / "sgg_optax"


def _atomic_write(path: pathlib.Path,
                  write: Callable[[BinaryIO], object]) -> None:
  """Writes ``path`` by renaming a finished temporary file onto it.

  Readers never see a partial file, even when several processes fill the same
  cache at once.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as handle:
      write(handle)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; let others read them.
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


# ------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------


class Tokenizer(Protocol):
  """What the experiments need from a tokenizer.

  Attributes:
    vocab_size: Number of token ids, special tokens included.
    eos_id: Id of the end-of-text token, put after every document.
    pad_id: Id of the padding token.
    bos_id: Id of a beginning-of-text token, or ``None`` when there is none.
    fingerprint: A string that changes whenever encoding changes; keys the
      token cache.
  """

  vocab_size: int
  eos_id: int
  pad_id: int
  bos_id: int | None
  fingerprint: str

  def encode(self, text: str) -> list[int]:
    """Returns the ids of ``text``, without special tokens."""
    ...

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Returns the ids of each text."""
    ...

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of ``ids``, skipping special tokens."""
    ...


class ByteTokenizer:
  """UTF-8 bytes as tokens: ids 0-255, then end-of-text (256) and pad (257).

  It needs nothing beyond the standard library, and every string round-trips.
  """

  vocab_size = 258
  eos_id = 256
  pad_id = 257
  bos_id = None
  fingerprint = "bytes-v1"

  def encode(self, text: str) -> list[int]:
    """Returns the UTF-8 bytes of ``text``."""
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Returns the UTF-8 bytes of each text."""
    return [self.encode(text) for text in texts]

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of byte ids; invalid UTF-8 becomes U+FFFD."""
    data = bytes(i for i in ids if 0 <= i < 256)
    return data.decode("utf-8", errors="replace")


class BPETokenizer:
  """A byte-level BPE tokenizer from Hugging Face ``tokenizers``.

  Text is split GPT-2 style and mapped to bytes before merging, so any string
  encodes without unknown tokens and ``decode(encode(s)) == s``. Trained
  tokenizers have end-of-text as id 0 and pad as id 1; text that spells them
  is encoded as ordinary text, never as the special ids.
  """

  bos_id = None

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    """Wraps a trained ``tokenizers.Tokenizer`` that has both special tokens.

    Args:
      tokenizer: The tokenizer to wrap. Its ``encode_special_tokens`` is set,
        so that text spelling a special token is encoded as plain text.
    """
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    if eos_id is None or pad_id is None:
      raise ValueError(f"tokenizer lacks {EOS_TOKEN} or {PAD_TOKEN}")
    tokenizer.encode_special_tokens = True
    self._tokenizer = tokenizer
    self.eos_id: int = eos_id
    self.pad_id: int = pad_id
    self.vocab_size: int = tokenizer.get_vocab_size()
    serialized = tokenizer.to_str().encode("utf-8")
    self.fingerprint = "bpe-" + hashlib.sha256(serialized).hexdigest()

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
            min_frequency: int = 2) -> BPETokenizer:
    """Trains a tokenizer on ``texts``; deterministic for the same inputs.

    Args:
      texts: Training texts.
      vocab_size: Largest vocabulary to reach, special tokens and the 256
        byte symbols included. A small corpus may end with fewer tokens.
      min_frequency: Fewest occurrences for a pair to be merged.

    Returns:
      The trained tokenizer.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
      raise ValueError(f"vocab_size must be at least 258, got {vocab_size}")
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=min_frequency,
      special_tokens=[EOS_TOKEN, PAD_TOKEN],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return cls(tokenizer)

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
    """Loads a tokenizer saved with `save`."""
    from tokenizers import Tokenizer as HFTokenizer

    return cls(HFTokenizer.from_file(os.fspath(path)))

  def save(self, path: str | os.PathLike[str]) -> None:
    """Saves the tokenizer as ``tokenizers`` JSON, atomically."""
    data = self._tokenizer.to_str().encode("utf-8")
    _atomic_write(pathlib.Path(path), lambda handle: handle.write(data))

  def encode(self, text: str) -> list[int]:
    """Returns the ids of ``text``."""
    return self._tokenizer.encode(text).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Returns the ids of each text, encoding in parallel."""
    return [enc.ids for enc in self._tokenizer.encode_batch(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of ``ids``, skipping special tokens."""
    return self._tokenizer.decode(list(ids), skip_special_tokens=True)


def load_bpe_tokenizer(corpus: str | Corpus,
                       vocab_size: int = DEFAULT_VOCAB_SIZE,
                       *, cache: str | os.PathLike[str] | None = None
                       ) -> BPETokenizer:
  """Returns a BPE tokenizer trained on a corpus's training split, cached.

  The file is keyed by corpus name, vocabulary size, a hash of the training
  documents and the ``tokenizers`` version, so it is retrained whenever any of
  them changes. Validation documents are never seen.

  Args:
    corpus: A corpus or the name of one.
    vocab_size: See `BPETokenizer.train`.
    cache: Cache directory; `cache_dir` when ``None``.

  Returns:
    The tokenizer.
  """
  import tokenizers

  if isinstance(corpus, str):
    corpus = load_corpus(corpus)
  path = _cache_file(
    cache, "tokenizers", f"bpe-{corpus.name}-{vocab_size}", ".json",
    tokenizers.__version__, corpus.fingerprint(TRAIN))
  if path.exists():
    return BPETokenizer.load(path)
  logger.info("training a %d-token BPE on %s", vocab_size, corpus.name)
  tokenizer = BPETokenizer.train(corpus.texts(TRAIN), vocab_size)
  tokenizer.save(path)
  return tokenizer


def get_tokenizer(kind: str, corpus: str | Corpus = "bbc_news",
                  vocab_size: int = DEFAULT_VOCAB_SIZE,
                  *, cache: str | os.PathLike[str] | None = None
                  ) -> Tokenizer:
  """Returns a tokenizer by kind.

  Args:
    kind: ``"bpe"`` for `load_bpe_tokenizer`, or ``"bytes"`` for
      `ByteTokenizer`.
    corpus: Corpus whose training split trains the BPE.
    vocab_size: BPE vocabulary size; ignored for bytes.
    cache: Cache directory; `cache_dir` when ``None``.

  Returns:
    The tokenizer.
  """
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "bpe":
    return load_bpe_tokenizer(corpus, vocab_size, cache=cache)
  raise ValueError(f"kind must be 'bpe' or 'bytes', got {kind!r}")


# ------------------------------------------------------------------------------
# Token streams
# ------------------------------------------------------------------------------


def tokenize_split(corpus: str | Corpus, split: str, tokenizer: Tokenizer,
                   *, cache: str | os.PathLike[str] | None = None
                   ) -> np.ndarray:
  """Returns one split as a flat token stream, cached on disk.

  Documents follow each other in id order, each followed by
  ``tokenizer.eos_id``: ``doc_0 EOS doc_1 EOS ... doc_n EOS``. The stream is
  stored as ``uint16`` when the vocabulary fits, else ``int32``, under a name
  that holds the corpus, the split and hashes of the documents and of the
  tokenizer.

  Args:
    corpus: A corpus or the name of one.
    split: ``"train"`` or ``"validation"``.
    tokenizer: Tokenizer to encode with.
    cache: Cache directory; `cache_dir` when ``None``.

  Returns:
    A 1-D ``int32`` array.
  """
  _check_split(split)
  if isinstance(corpus, str):
    corpus = load_corpus(corpus)
  path = _cache_file(cache, "tokens", f"{corpus.name}-{split}", ".npy",
                     tokenizer.fingerprint, corpus.fingerprint(split))
  if path.exists():
    return np.load(path).astype(np.int32)
  logger.info("tokenizing %s/%s", corpus.name, split)
  encoded = tokenizer.encode_batch(corpus.texts(split))
  pieces = []
  for ids in encoded:
    pieces.append(np.asarray(ids, dtype=np.int32))
    pieces.append(np.asarray([tokenizer.eos_id], dtype=np.int32))
  tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  stored = tokens.astype(dtype)
  _atomic_write(path, lambda handle: np.save(handle, stored))
  return tokens
