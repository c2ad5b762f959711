"""The fine-tuning protocol without the model: splits, windows, tuning."""

import pathlib
import types

import numpy as np
import pytest

from experiments.finetuning import data as FD
from experiments.finetuning import log as FL
from experiments.finetuning import sweep as FSw


def test_per_topic_counts_add_up_evenly():
  assert FD.per_topic_counts(12) == [3, 3, 2, 2, 2]
  assert FD.per_topic_counts(10) == [2] * 5


def _stream(doc_lengths, topics):
  starts = np.concatenate([[0], np.cumsum(doc_lengths)[:-1]])
  stream = np.concatenate([np.full(n, t) for n, t in zip(doc_lengths,
                                                         topics)])
  return stream.astype(np.int32), starts


def test_windows_cover_every_topic_and_span_the_stream():
  topics = np.repeat(np.arange(5), [4, 1, 3, 2, 6])  # unequal blocks
  lengths = np.arange(len(topics)) * 7 + 40
  stream, starts = _stream(lengths, topics)
  ev = FD.spread_windows(stream, starts, topics, 20, seq_len=16)
  assert ev.rows['tokens'].shape == (20, 17)
  assert list(ev.topic_counts().values()) == [4] * 5
  assert ev.span == 1.0
  # Each window starts in its topic's block (the stream holds topic ids).
  np.testing.assert_array_equal(ev.rows['tokens'][:, 0], ev.topics)


def test_windows_need_topic_blocks():
  topics = np.array([0, 1, 0, 2, 3, 4])
  stream, starts = _stream([50] * 6, topics)
  with pytest.raises(ValueError, match='contiguous'):
    FD.spread_windows(stream, starts, topics, 10, seq_len=8)


def test_stratified_dev_is_balanced_fixed_and_disjoint():
  labels = np.repeat(np.arange(5), [50, 30, 40, 60, 20])
  dev = FD.stratified_dev(labels, per_topic=4)
  assert np.bincount(labels[dev]).tolist() == [4] * 5
  assert len(set(dev)) == 20
  np.testing.assert_array_equal(dev, FD.stratified_dev(labels, per_topic=4))
  frac = FD.stratified_dev(labels, fraction=0.1)
  assert np.bincount(labels[frac]).tolist() == [5, 3, 4, 6, 2]
  with pytest.raises(ValueError):
    FD.stratified_dev(labels, per_topic=20)


def test_even_subset_takes_first_and_last_of_each_topic():
  labels = np.array([0] * 5 + [1] * 4 + [2] * 6 + [3] * 3 + [4] * 7)
  idx = FD.even_subset(labels, 10)
  assert idx.tolist() == [0, 4, 5, 8, 9, 14, 15, 17, 18, 24]
  assert FD.even_subset(labels, 0).tolist() == list(range(25))


def _fake_runs(dev_loss):
  """A getter whose dev loss is `dev_loss(lr, T, beta3)`; logs its calls."""
  calls = []

  def get(lr, seed, t, b):
    calls.append((lr, seed, t, b))
    return {'task': 'lm', 'lr': lr, 'seed': seed, 'sgg_interval': t,
            'sgg_beta3': b, 'optimizer': 'adamw_sgg' if t else 'adamw',
            'dev_loss': dev_loss(lr, t, b)}
  return get, calls


def test_lr_search_extends_the_grid_past_an_edge():
  get, _ = _fake_runs(lambda lr, t, b: (np.log10(lr) + 2) ** 2)  # best 1e-2
  best, tried = FSw.lr_search(lambda lr: get(lr, 9, None, None),
                              [1e-4, 1e-3], extensions=3)
  assert best['lr'] == 1e-2 and tried == [1e-4, 1e-3, 1e-2, 0.1]
  best, tried = FSw.lr_search(lambda lr: get(lr, 9, None, None),
                              [1e-4, 1e-3], extensions=1)
  assert best['lr'] == 1e-2 and tried == [1e-4, 1e-3, 1e-2]  # still an edge
  best, tried = FSw.lr_search(lambda lr: get(lr, 9, None, None),
                              [1e-3, 1e-2, 1e-1], extensions=3)
  assert best['lr'] == 1e-2 and tried == [1e-3, 1e-2, 1e-1]  # interior


def test_tune_arm_picks_sgg_interval_and_beta3_on_dev():
  get, calls = _fake_runs(
    lambda lr, t, b: abs(np.log10(lr) + 3) + (t != 20) + (b != 0.99))
  best = FSw.tune_arm(get, True, [1e-4, 1e-3, 1e-2], 0, 7, [10, 20],
                      [0.9, 0.99])
  assert (best['lr'], best['sgg_interval'], best['sgg_beta3']) == (
    1e-3, 20, 0.99)
  assert all(seed == 7 for _, seed, _, _ in calls)  # the tuning seed only
  assert sorted(c for c in calls if c[0] == 1e-3) == [
    (1e-3, 7, 10, 0.9), (1e-3, 7, 10, 0.99), (1e-3, 7, 20, 0.9),
    (1e-3, 7, 20, 0.99)]
  assert len(calls) == 6


def test_sgg_intervals_are_fractions_of_the_run():
  assert FSw.sgg_intervals([0.05, 0.1], 200) == [10, 20]
  assert FSw.sgg_intervals([0.01, 0.02], 20) == [1]


def test_scale_history_finds_raw_ratios_at_the_clamp(monkeypatch):
  monkeypatch.setattr(FL.sgg_optax, 'cluster_summary',
                      lambda s: types.SimpleNamespace(scales=s))
  hist = FL.ScaleHistory(np.ones((1, 3), np.float32), interval=2, beta3=0.9,
                         clamp=(0.1, 10.0), clamp_before=True)
  hist.observe(0, None)  # not a refresh step: ignored
  # raw ratios 0.1 (low bound), 10 (high bound), 0.5 (inside)
  hist.observe(1, np.array([[0.91, 1.9, 0.95]], np.float32))
  # then 10, 10, 10: every raw ratio at the bound, no stored scale yet
  hist.observe(3, np.array([[0.91 * 0.9 + 1, 1.9 * 0.9 + 1, 0.95 * 0.9 + 1]],
                           np.float32))
  r = hist.result()
  assert r['sgg_history']['step'] == [2, 4]
  assert r['sgg_history']['raw_clamped_fraction'] == pytest.approx(
    [2 / 3, 1.0])
  assert r['sgg_history']['clamped_fraction'] == [0.0, 0.0]
  assert r['raw_clamped_fraction'] == 1.0 and r['sgg_refreshes'] == 2


def test_run_cache_needs_this_code_and_this_spec(tmp_path):
  import json

  from experiments.common import lora as L
  from experiments.finetuning import run as FRun
  from experiments.finetuning import step as FS
  spec = FRun.RunSpec('lm', 'lora', FS.OptSettings('adamw'), 1e-3, 0, 10, 2,
                      16, L.LoRAConfig())
  path = tmp_path / 'run.json'
  assert FRun.cached(path, spec) is None
  run = {'code_key': FRun.CODE_KEY, 'spec': spec.record(), 'x': 1}
  path.write_text(json.dumps(run))
  assert FRun.cached(path, spec) == run
  other = FRun.RunSpec('lm', 'lora', FS.OptSettings('adamw'), 1e-3, 1, 10, 2,
                       16, L.LoRAConfig())
  assert FRun.cached(path, other) is None
  path.write_text(json.dumps({**run, 'code_key': 'stale'}))
  assert FRun.cached(path, spec) is None


def _experiments_imports(path: pathlib.Path, root: pathlib.Path) -> set:
  """Files below ``root`` (experiments/) that the module at ``path`` imports."""
  import ast
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      if not name.startswith('experiments.'):
        continue
      rel = pathlib.Path(*name.split('.')[1:])
      for cand in (root / rel.with_suffix('.py'), root / rel / '__init__.py'):
        if cand.is_file():
          out.add(cand)
  return out


def test_run_cache_key_covers_every_module_a_run_imports():
  """The fine-tuning cache key (`run.RUN_CODE`) names every experiments
  module that `run.py` reaches through its imports, so no change to the code
  behind a run's numbers leaves a stale run reusable."""
  from experiments.finetuning import run as FRun
  root = pathlib.Path(FRun.__file__).resolve().parents[1]
  covered = [root / p for p in FRun.RUN_CODE]
  seen, todo = set(), [root / 'finetuning' / 'run.py']
  while todo:
    f = todo.pop()
    if f in seen:
      continue
    seen.add(f)
    todo += _experiments_imports(f, root)
  missing = sorted(str(f.relative_to(root)) for f in seen
                   if f.name != '__init__.py'
                   and not any(f == c or c in f.parents for c in covered))
  assert not missing, f'modules a run imports but RUN_CODE omits: {missing}'
  assert len(seen) > 8  # the walk did follow the imports


def test_code_key_follows_only_its_parts(tmp_path, monkeypatch):
  from experiments.common import records
  tree = tmp_path / 'experiments'
  (tree / 'pkg').mkdir(parents=True)
  (tree / 'pkg' / 'a.py').write_text('x = 1\n')
  (tree / 'other.py').write_text('y = 1\n')
  monkeypatch.setattr(records, '_EXPERIMENTS_DIR', tree)
  key = records.code_key(('pkg',))
  (tree / 'other.py').write_text('y = 2\n')
  assert records.code_key(('pkg',)) == key
  (tree / 'pkg' / 'a.py').write_text('x = 2\n')
  assert records.code_key(('pkg',)) != key
  assert records.code_key(('pkg', 'other.py')) != records.code_key(('pkg',))
  with pytest.raises(ValueError, match='does not exist'):
    records.code_key(('nope',))


def test_a_chunk_starts_no_run_that_would_end_past_its_budget(monkeypatch,
                                                               tmp_path):
  """`--max-minutes`: runs start while the longest run so far still fits;
  then `BudgetSpent`, and runs already on disk are still reused."""
  clock = [0.0]
  monkeypatch.setattr(FSw.time, 'monotonic', lambda: clock[0])
  monkeypatch.setattr(FSw, '_report', lambda r: None)
  on_disk = {'seed': 9}

  class FakeRun:
    @staticmethod
    def cached(path, spec):
      return on_disk if spec.name == 's9' else None

    @staticmethod
    def run(ctx, spec, path, quiet, log_every):
      clock[0] += 600.0  # ten minutes a run
      return {'seed': int(spec.name[1:])}

  sw = object.__new__(FSw.Sweep)
  sw.args = types.SimpleNamespace(max_minutes=25, quiet=True, log_every=1)
  sw.FRun, sw.ctx, sw.runs_dir, sw.runs = FakeRun, None, tmp_path, []
  sw.start, sw.longest, sw.made = 0.0, 0.0, 0
  sw.spec = lambda task, method, opt, lr, seed, t, b: types.SimpleNamespace(
    name=f's{seed}')
  get = lambda seed: sw.get('cls', 'full', 'adamw', 1e-4, seed, None, None)
  assert get(0) == {'seed': 0} and get(1) == {'seed': 1}  # 0+0, 10+10 <= 25
  with pytest.raises(FSw.BudgetSpent, match='s2'):
    get(2)  # 20 + 10 > 25
  assert get(9) is on_disk  # a finished run costs nothing
  assert sw.made == 2 and clock[0] == 1200.0


def test_an_unfinished_chunk_exits_with_its_own_status(monkeypatch):
  from experiments.finetuning import cli, sweep
  monkeypatch.setattr(sweep, 'main', lambda args: None)
  with pytest.raises(SystemExit) as e:
    cli.main(['--max-minutes', '1'])
  assert e.value.code == cli.CHUNK_OVER == 3
