"""Dev/test splits, evaluation windows, LR grid extension and the run cache."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from experiments.common import corpora, records, tokenizer
from experiments.pretraining import evaluation, loop, pretrain_cli
from experiments.pretraining.config import TrainConfig
from experiments.pretraining.runner import Runner, _tag, next_lr, tune_lr


def _stream(doc_lengths, eos=0):
  """Documents of tokens 1.. (their index + 1), each followed by EOS."""
  parts = []
  for i, n in enumerate(doc_lengths):
    parts += [np.full(n, i + 1), [eos]]
  return np.concatenate(parts).astype(np.int32)


def test_dev_is_every_tenth_document_and_partitions_the_stream():
  tokens = _stream([5 + i % 7 for i in range(100)])
  tr, dev = evaluation.split_dev(tokens, eos_id=0)
  assert len(tr) + len(dev) == len(tokens)
  dev_docs = sorted(set(dev[dev > 0].tolist()))
  assert dev_docs == list(range(6, 101, 10))  # pieces 5, 15, ... (1-based)
  assert not set(dev_docs) & set(tr[tr > 0].tolist())


def test_a_long_document_is_cut_into_pieces():
  tokens = _stream([10_000])
  bounds = evaluation.piece_bounds(tokens, eos_id=0, piece_tokens=4096)
  assert bounds.tolist() == [0, 4096, 8192, 10_001]


@pytest.mark.parametrize('n,seq_len,windows', [
  (10_000, 128, 256), (1_000, 32, 7), (200, 16, 0), (500, 99, 1000)])
def test_windows_span_the_whole_split(n, seq_len, windows):
  starts = evaluation.window_starts(n, seq_len, windows)
  assert starts[0] == 0 and np.all(np.diff(starts) >= 0)
  if not windows:  # tiling: the tail left is shorter than one window
    assert np.all(np.diff(starts) == seq_len)
    assert n - seq_len - 1 - starts[-1] < seq_len
  else:
    assert starts[-1] == n - seq_len - 1
    assert len(starts) == windows
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
  assert evaluation.eval_span(n, starts, seq_len) >= 0.9


def test_the_same_windows_whatever_the_batch_size():
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  tokens = np.arange(5000, dtype=np.int32)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  sharding = NamedSharding(mesh, P('data'))
  seen = []
  for bs in (3, 8, 64):
    es = evaluation.make_eval_set('test', tokens, seq_len=16, num_windows=50,
                                  batch_size=bs, sharding=sharding)
    rows = [np.asarray(b)[np.asarray(w) > 0] for b, w in es.batches]
    seen.append(np.concatenate(rows))
    assert es.num_windows == 50 and es.span == 1.0
  for other in seen[1:]:
    np.testing.assert_array_equal(seen[0], other)


def test_test_windows_cover_every_bbc_topic():
  # The old evaluation read the first batches of the held-out stream in
  # document order: ~50 articles, 49 of them Business.
  corpus = corpora.load_corpus('bbc_news')
  tok = tokenizer.get_tokenizer('bytes')
  lengths = [len(ids) + 1 for ids in tok.encode_batch(
    corpus.texts(corpora.VALIDATION))]
  ends = np.cumsum(lengths)
  starts = evaluation.window_starts(int(ends[-1]), 128, 256)
  docs = np.searchsorted(ends, starts, side='right')
  topics = {corpus.validation[d].label for d in docs}
  assert topics == {'business', 'entertainment', 'politics', 'sports', 'tech'}
  old = np.searchsorted(ends, np.arange(256) * 128, side='right')
  assert len({corpus.validation[d].label for d in old}) < 5


class _FakeRunner:
  """Dev loss = (log10 lr - log10 best)^2: a known optimum."""

  def __init__(self, best):
    self.best, self.lrs, self.eval_every = best, [], set()

  def run(self, cfg):
    self.lrs.append(cfg.lr)
    self.eval_every.add(cfg.eval_every)
    loss = (math.log10(cfg.lr) - math.log10(self.best)) ** 2
    return {'dev_loss': loss, 'dev_ppl': math.exp(loss), 'test_loss': loss,
            'diverged': False}


@pytest.mark.parametrize('optimum,max_ext,chosen,tried,edge', [
  (5e-3, 2, 5e-3, [2.5e-3, 5e-3, 1e-2], False),
  (2e-2, 2, 2e-2, [2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2], False),
  (1e-3, 2, 1.25e-3, [6.25e-4, 1.25e-3, 2.5e-3, 5e-3, 1e-2], False),
  (1.0, 2, 4e-2, [2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2], True),
  (1.0, 0, 1e-2, [2.5e-3, 5e-3, 1e-2], True),
])
def test_an_optimum_at_the_grid_edge_extends_the_grid(optimum, max_ext,
                                                     chosen, tried, edge):
  runner = _FakeRunner(optimum)
  best, info = tune_lr(TrainConfig(), runner, [2.5e-3, 5e-3, 1e-2], [100],
                       max_ext)
  assert best == pytest.approx(chosen)
  assert info['lrs'] == pytest.approx(tried)
  assert info['lr_at_grid_edge'] == edge
  assert sorted(runner.lrs) == pytest.approx(tried)


@pytest.mark.parametrize('final_eval_only,expected', [(True, {0}),
                                                      (False, {25})])
def test_unreported_tuning_runs_evaluate_only_at_their_end(final_eval_only,
                                                           expected):
  runner = _FakeRunner(5e-3)
  tune_lr(TrainConfig(eval_every=25), runner, [2.5e-3, 5e-3, 1e-2], [100], 0,
          final_eval_only=final_eval_only)
  assert runner.eval_every == expected


def test_next_lr_follows_the_grid_ratio():
  assert next_lr(pretrain_cli.PAPER_LRS, True) == pytest.approx(2e-2)
  assert next_lr(pretrain_cli.PAPER_LRS, False) == pytest.approx(2.5e-4)


def test_the_run_cache_never_reuses_a_run_of_other_code(tmp_path,
                                                        monkeypatch):
  calls = []

  def fake_train(cfg, *, out, **_):
    calls.append(cfg)
    result = {'config': dataclasses.asdict(cfg),
              'provenance': records.provenance([])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result

  monkeypatch.setattr(loop, 'train', fake_train)
  runner = Runner(tmp_path, fresh=False, progress=False)
  runner._streams = {('bbc_news', 'bpe', 4096, ''): None}
  cfg = TrainConfig()
  runner.run(cfg)
  runner.run(cfg)
  assert len(calls) == 1 and runner.n_reused == 1
  # Same file name, but written by other code: trained again.
  path = next((tmp_path / 'runs').glob('*.json'))
  stale = json.loads(path.read_text())
  stale['provenance']['sgg_optax_source_sha256'] = 'another version'
  path.write_text(json.dumps(stale))
  runner.run(cfg)
  assert len(calls) == 2
  # Other code also means another file name.
  monkeypatch.setattr(records, 'EXPERIMENTS_SOURCE', '0' * 64)
  assert _tag(cfg) != path.stem


def test_provenance_records_the_environment_that_changes_timings(
    monkeypatch):
  for name in list(os.environ):
    if name.startswith('JAX_') or name in records._ENV:
      monkeypatch.delenv(name)
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  monkeypatch.setenv('JAX_ENABLE_X64', '0')
  monkeypatch.setenv('SOME_UNRELATED_SECRET', 'x')
  env = records.provenance(['python', '-m', 'experiments.bench_step'])[
      'environment']
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1',
                 'JAX_ENABLE_X64': '0',
                 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


def test_provenance_records_the_usable_cores(monkeypatch):
  """XLA:CPU's numerics follow its thread count, hence the affinity."""
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {3})
  assert records.device()['cpu_affinity'] == 1
