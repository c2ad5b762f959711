"""Fine-tuning data: train / dev / test splits of BBC News, stratified by topic.

Three splits for both tasks:

* **train**: the training split of `experiments.common.corpora` minus dev;
* **dev**: carved from the training split, stratified by topic; every tuning
  choice (learning rate, SGG's T and beta3) is made on it;
* **test**: the fixed held-out split of `experiments.common.corpora`
  (`validation` there), reported only.

`lm` dev holds `DEV_FRACTION` of each topic's training articles; `cls` dev
holds the same number of articles of every topic. Evaluation sets hold their
articles topic by topic, and their rows (lm windows, cls prompts) are spread
evenly within each topic's block, an equal number per topic: they cover every
topic and span the whole split. The test rows are the same for every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from experiments.common import batches, corpora, tokenizer
from experiments.common import gguf as G

VERBALISER = ('Business', 'Entertainment', 'Politics', 'Sports', 'Tech')
QUESTION = ('\n\nIs this news article about Business, Entertainment, '
            'Politics, Sports or Tech?')
PROMPT_TOKENS = 26  # chat template + QUESTION, measured with SmolLM2's BPE
MIN_ARTICLE_TOKENS = 8
DEV_FRACTION = 0.1  # lm: of each topic's training articles
DEV_SEED = 1234
MIN_EVAL_SPAN = 0.9  # test rows must reach across 90% of the split at least


@dataclasses.dataclass(frozen=True)
class Articles:
  """Tokenized articles (no EOS) and their topic index."""
  tokens: tuple[np.ndarray, ...]
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """What one split is scored on: rows, their topics and their span.

  `span` is the fraction of the split between the start of the first row and
  the end of the last one (1.0: the rows reach both ends of the split).
  """
  rows: dict[str, np.ndarray]
  topics: np.ndarray
  span: float

  def topic_counts(self) -> dict[str, int]:
    return {VERBALISER[t]: int((self.topics == t).sum())
            for t in range(len(VERBALISER))}


def _check_span(test: EvalSet) -> EvalSet:
  if test.span < MIN_EVAL_SPAN:
    raise ValueError(f'The test rows span {test.span:.2f} of the held-out '
                     f'split (at least {MIN_EVAL_SPAN} wanted).')
  return test


@dataclasses.dataclass(frozen=True)
class LMData:
  """The lm training stream and its dev / test evaluation windows."""
  train: np.ndarray
  dev: EvalSet
  test: EvalSet


@dataclasses.dataclass(frozen=True)
class ClsData:
  """Encoded prompts of the training set and the dev / test sets."""
  train: dict[str, np.ndarray]
  dev: EvalSet
  test: EvalSet
  verbaliser_ids: np.ndarray


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


def _topic_index(label: str) -> int:
  return [w.lower() for w in VERBALISER].index(label.lower())


def articles(split: str, tok: G.GGUFTokenizer) -> Articles:
  """One split's articles, from the cached token stream of `data`.

  The stream is `doc EOS doc EOS ...` in id order; cutting it at the EOS
  tokens gives back the articles, checked against the corpus.
  """
  docs = corpora.load_corpus('bbc_news').split(split)
  stream = tokenizer.tokenize_split('bbc_news', split, _StreamTokenizer(tok))
  ends = np.flatnonzero(stream == tok.eos_id)
  if len(ends) != len(docs):
    raise ValueError(f'{split}: {len(ends)} EOS tokens for {len(docs)} '
                     'articles.')
  starts = np.concatenate([[0], ends[:-1] + 1])
  return Articles(tuple(stream[s:e] for s, e in zip(starts, ends)),
                  np.asarray([_topic_index(d.label) for d in docs]))


def stratified_dev(labels: np.ndarray, *, per_topic: int | None = None,
                   fraction: float | None = None) -> np.ndarray:
  """Dev indices: `per_topic` (or `fraction` of each topic) drawn per topic.

  Returned topic by topic, in id order within a topic. The draw is fixed
  (`DEV_SEED`).
  """
  rng = np.random.default_rng(DEV_SEED)
  chosen = []
  for t in range(len(VERBALISER)):
    members = np.flatnonzero(labels == t)
    n = per_topic if per_topic is not None else round(fraction * len(members))
    if not 0 < n < len(members):
      raise ValueError(f'dev takes {n} of {len(members)} {VERBALISER[t]} '
                       'articles.')
    chosen.append(np.sort(rng.choice(members, n, replace=False)))
  return np.concatenate(chosen)


def _stream(arts: Articles, order: np.ndarray, eos_id: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated articles in `order` with EOS after each; their starts."""
  pieces, starts, pos = [], [], 0
  for i in order:
    starts.append(pos)
    pieces += [arts.tokens[i], np.asarray([eos_id])]
    pos += len(arts.tokens[i]) + 1
  return np.concatenate(pieces).astype(np.int32), np.asarray(starts)


def per_topic_counts(n: int) -> list[int]:
  """`n` split over the topics as evenly as possible (first topics first)."""
  k = len(VERBALISER)
  return [n // k + (t < n % k) for t in range(k)]


def spread_windows(stream: np.ndarray, doc_starts: np.ndarray,
                   doc_topics: np.ndarray, n: int, seq_len: int) -> EvalSet:
  """`n` `(seq_len + 1)`-token windows spread evenly within each topic.

  The stream holds its articles topic by topic; each topic's block gets
  `per_topic_counts(n)` windows, evenly spaced from the block's first token
  to its last, so the windows cover every topic and span the whole stream.
  """
  bounds = np.append(doc_starts, len(stream))
  starts, topics = [], []
  for t, k in enumerate(per_topic_counts(n)):
    docs = np.flatnonzero(doc_topics == t)
    lo, hi = bounds[docs[0]], bounds[docs[-1] + 1] - seq_len - 1
    if hi < lo or np.any(np.diff(docs) != 1):
      raise ValueError(f'{VERBALISER[t]}: no room for {seq_len}-token '
                       'windows, or its articles are not contiguous.')
    starts += list(np.linspace(lo, hi, k).round().astype(np.int64))
    topics += [t] * k
  windows = np.stack([stream[s:s + seq_len + 1] for s in starts])
  span = (starts[-1] + seq_len + 1 - starts[0]) / len(stream)
  return EvalSet({'tokens': windows.astype(np.int32)}, np.asarray(topics),
                 float(span))


def by_topic(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """`idx` ordered topic by topic (stable: id order within a topic)."""
  return idx[np.argsort(labels[idx], kind='stable')]


def load_lm_data(tok: G.GGUFTokenizer, *, seq_len: int, dev_windows: int,
                 test_windows: int) -> LMData:
  """Train stream (id order); dev and test windows spread within each topic."""
  train = articles(corpora.TRAIN, tok)
  dev_idx = stratified_dev(train.labels, fraction=DEV_FRACTION)
  rest = np.setdiff1d(np.arange(len(train.labels)), dev_idx)
  train_stream, _ = _stream(train, rest, tok.eos_id)
  dev_stream, dev_starts = _stream(train, dev_idx, tok.eos_id)
  test = articles(corpora.VALIDATION, tok)
  test_idx = by_topic(test.labels, np.arange(len(test.labels)))
  test_stream, test_starts = _stream(test, test_idx, tok.eos_id)
  return LMData(
    train_stream,
    spread_windows(dev_stream, dev_starts, train.labels[dev_idx],
                   dev_windows, seq_len),
    _check_span(spread_windows(test_stream, test_starts,
                               test.labels[test_idx], test_windows, seq_len)))


def encode_prompts(texts: Sequence[str], tok: G.GGUFTokenizer, seq_len: int
                   ) -> dict[str, np.ndarray]:
  """Chat-template prompts holding each article's first tokens.

  `<|im_start|>user\\n{article[:n]}{QUESTION}<|im_end|>\\n<|im_start|>
  assistant\\n`, truncating the article so the prompt has `seq_len` tokens at
  most; rows are right-padded (causal attention ignores the padding).

  Returns:
    `{'tokens': (n, seq_len), 'lengths': (n,)}`, int32.
  """
  head, tail = G.chat_prompt('\x00', system=None).split('\x00')
  head_ids, tail_ids = tok.encode(head), tok.encode(QUESTION + tail)
  room = seq_len - len(head_ids) - len(tail_ids)
  if room < MIN_ARTICLE_TOKENS:
    raise ValueError(f'cls seq_len {seq_len} leaves {room} article tokens.')
  encoded = tok.tokenizer.encode_batch(list(texts), add_special_tokens=False)
  tokens = np.full((len(texts), seq_len), tok.eos_id, np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for row, enc in enumerate(encoded):
    ids = head_ids + enc.ids[:room] + tail_ids
    tokens[row, :len(ids)] = ids
    lengths[row] = len(ids)
  return {'tokens': tokens, 'lengths': lengths}


def verbaliser_ids(tok: G.GGUFTokenizer) -> np.ndarray:
  """First token of each topic word; they must differ."""
  first = [tok.encode(w)[0] for w in VERBALISER]
  if len(set(first)) != len(first):
    raise ValueError('Verbaliser first tokens collide.')
  return np.asarray(first, np.int32)


def _cls_set(examples, order: np.ndarray, tok: G.GGUFTokenizer,
             seq_len: int, span: float) -> EvalSet:
  rows = encode_prompts([examples[i][0] for i in order], tok, seq_len)
  labels = np.asarray([examples[i][1] for i in order], np.int32)
  return EvalSet({**rows, 'labels': labels}, labels, span)


def even_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Indices of `n` examples (all if 0), topic by topic, spread evenly from
  the first to the last example of each topic (`per_topic_counts(n)`)."""
  order = by_topic(labels, np.arange(len(labels)))
  if n <= 0 or n >= len(labels):
    return order
  out = []
  for t, k in enumerate(per_topic_counts(n)):
    members = order[labels[order] == t]
    out += list(members[np.unique(np.linspace(
      0, len(members) - 1, k).round().astype(np.int64))])
  return np.asarray(out, np.int64)


def load_cls_data(tok: G.GGUFTokenizer, *, seq_len: int, dev_per_topic: int,
                  test_examples: int = 0) -> ClsData:
  """BBC topics. Dev: `dev_per_topic` training articles of every topic.

  Test: the held-out articles (id order, so topic by topic), all of them or
  `test_examples` spread evenly from the first to the last.
  """
  bbc = corpora.load_bbc_classification()
  if [n.lower() for n in bbc.label_names] != [w.lower() for w in VERBALISER]:
    raise ValueError(f'Unexpected labels {bbc.label_names}.')
  labels = np.asarray([y for _, y in bbc.train])
  dev_idx = stratified_dev(labels, per_topic=dev_per_topic)
  train_idx = np.setdiff1d(np.arange(len(labels)), dev_idx)
  train = _cls_set(bbc.train, train_idx, tok, seq_len, 1.0)
  test_labels = np.asarray([y for _, y in bbc.validation])
  test_idx = even_subset(test_labels, test_examples)
  rank = np.empty(len(test_labels), np.int64)  # position, topic by topic
  rank[by_topic(test_labels, np.arange(len(test_labels)))] = np.arange(
    len(test_labels))
  span = (rank[test_idx].max() - rank[test_idx].min() + 1) / len(test_labels)
  return ClsData(
    train.rows, _cls_set(bbc.train, dev_idx, tok, seq_len, 1.0),
    _check_span(_cls_set(bbc.validation, test_idx, tok, seq_len,
                         float(span))),
    verbaliser_ids(tok))


def train_batch(train: np.ndarray | dict[str, np.ndarray], task: str,
                step: int, *, batch_size: int, seq_len: int, seed: int
                ) -> dict[str, np.ndarray]:
  """The batch of one step: depends only on (seed, step), so runs resume.

  lm: `batch_size` random windows of the training stream (`data`'s sampler);
  cls: `batch_size` training prompts drawn with replacement.
  """
  if task == 'lm':
    return {'tokens': batches.train_batch(train, step, batch_size=batch_size,
                                          seq_len=seq_len, seed=seed)}
  rows = np.random.default_rng([seed, step]).integers(
    0, len(train['labels']), batch_size)
  return {k: v[rows] for k, v in train.items()}
