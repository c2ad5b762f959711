"""Small C4-format shards and a word-level ``tokenizers`` file, written here.

Document ``i`` of shard ``s`` reads ``"s<s> n<i> w.. w.."``: its first two
words name it, so a test can tell from token ids which documents a batch
holds (`doc_ids`).
"""

import gzip
import json
import pathlib

import numpy as np

WORDS = [f'w{i}' for i in range(20)]
SHARDS, DOCS = 3, 40


def write_tokenizer(path: pathlib.Path) -> pathlib.Path:
  """A word-level tokenizer: <unk>, </s>, s0.., n0.., w0.. (whitespace)."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  names = (['<unk>', '</s>'] + [f's{s}' for s in range(SHARDS + 1)]
           + [f'n{i}' for i in range(DOCS)] + WORDS)
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)},
                                   unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(path))
  return path


def _doc(rng: np.random.Generator, shard: int, i: int) -> str:
  n = int(rng.integers(2, 30))
  return f's{shard} n{i} ' + ' '.join(rng.choice(WORDS, n))


def write_shards(folder: pathlib.Path) -> dict[str, list[str]]:
  """Train shards (2 gzipped, 1 plain JSON lines) and a validation shard.

  Returns:
    ``{'train': texts in shard order, 'validation': texts}``.
  """
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  texts = {'train': [], 'validation': []}
  for s in range(SHARDS + 1):
    split = 'validation' if s == SHARDS else 'train'
    docs = [_doc(rng, s, i) for i in range(DOCS)]
    lines = ''.join(json.dumps({'text': d, 'url': 'u', 'timestamp': 't'})
                    + '\n' for d in docs)
    if s == 1:
      (folder / f'c4-{split}.{s:05d}-of-00003.jsonl').write_text(lines)
    else:
      with gzip.open(folder / f'c4-{split}.{s:05d}-of-00003.json.gz',
                     'wt') as f:
        f.write(lines)
    texts[split] += docs
  return texts


def doc_ids(batches: np.ndarray, tokenizer) -> set[tuple[int, int]]:
  """``(shard, doc)`` of every document that starts in ``batches``."""
  vocab = tokenizer._tok.get_vocab()
  shard_of = {vocab[f's{s}']: s for s in range(SHARDS + 1)}
  doc_of = {vocab[f'n{i}']: i for i in range(DOCS)}
  flat = np.asarray(batches).ravel()
  return {(shard_of[a], doc_of[b]) for a, b in zip(flat[:-1], flat[1:])
          if a in shard_of and b in doc_of}
