"""The C4 table and the breaking grid, on fake runs and a fake clock.

Nothing trains here: `_FakeRunner` answers every run with a made-up result
(and writes it as the run JSON), so the tuning, the pairing, the table, the
`--max-minutes` chunks and the breaking grid's stopping rule are checked
against numbers known in advance.
"""

import dataclasses
import json
import math

import numpy as np
import pytest

import sgg_optax
from experiments.common import records
from experiments.pretraining import pretrain_cli
from experiments.pretraining.c4_table import TABLE, c4_markdown, c4_table
from experiments.pretraining.config import TrainConfig
from experiments.pretraining.robustness import (
  breaking,
  breaking_table,
  max_spike,
)
from experiments.pretraining.runner import BudgetSpent, Runner, StoredRuns

PROVENANCE = records.provenance(['python', '-m', 'experiments.pretrain'])
BASE = TrainConfig(steps=10, batch_size=4, seq_len=8)
LRS = [2.5e-3, 5e-3, 1e-2]
# Test PPL of seeds 0, 1, 2 per (optimizer, LoRA rank); others: 300 + seed.
PPL = {('adam', 0): [100.0, 110.0, 120.0],
       ('adam_sgg_momentum', 0): [95.0, 108.0, 111.0],
       ('adam_sgg_update', 0): [101.0, 113.0, 121.0],
       ('adam', 8): [200.0, 210.0, 190.0],
       ('adam_sgg_momentum', 8): [190.0, 200.0, 185.0]}
BEST_LR = {'lamb': 1.0}  # others: 5e-3, inside the grid


def fake_result(cfg, *, diverged=False, train=None, test_ppl=None):
  """A run JSON with every field the experiments read."""
  loss = 5.0 + (math.log10(cfg.lr) - math.log10(
    BEST_LR.get(cfg.optimizer, 5e-3))) ** 2
  ppl = test_ppl or PPL.get((cfg.optimizer, cfg.lora_rank),
                            [300.0, 301.0, 302.0, 303.0])[cfg.seed % 4]
  test = None if diverged else math.log(ppl)
  return {
    'config': dataclasses.asdict(cfg), 'provenance': PROVENANCE,
    'model': {'n_params': 1000 + cfg.lora_rank, 'n_trainable': 900},
    'splits': {}, 'eval_span': 1.0, 'tokens_per_s': 1.0,
    'tokens_seen': cfg.steps * cfg.batch_size * cfg.seq_len,
    'steps_done': cfg.steps, 'diverged': diverged,
    'divergence_reason': 'loss over the factor' if diverged else '',
    'dev_loss': None if diverged else loss,
    'dev_ppl': None if diverged else math.exp(loss),
    'test_loss': test, 'test_ppl': None if diverged else ppl,
    'final_train_loss': (train or [[0, 7.0]])[-1][1],
    'clamped_fraction': None,
    'curves': {'train': train or [[0, 7.0, 1.0, 0.0]], 'dev': [],
               'test': [], 'sgg': [], 'sgg_names': []}}


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


class _FakeRunner(Runner):
  """Each run costs ``cost`` seconds of the fake clock."""

  def __init__(self, out, make=fake_result, cost=10.0, clock=None, **kw):
    self.fake_clock = clock or _Clock()
    super().__init__(out, fresh=False, progress=False, argv=['x'],
                     clock=self.fake_clock, **kw)
    self.make, self.cost, self.trained = make, cost, []

  def _train(self, cfg, path, tag):
    self.fake_clock.t += self.cost
    self.trained.append(cfg)
    result = self.make(cfg)
    records.write_json(path, result)
    return result


@pytest.fixture
def no_bases(monkeypatch):
  """The table as sgg_optax 0.2.0 sees it: no CAME, APOLLO, Adam-mini."""
  for name in ('came', 'came_sgg', 'apollo', 'apollo_sgg', 'adam_mini'):
    monkeypatch.delattr(sgg_optax, name, raising=False)


def _table(runner, **kw):
  return c4_table(BASE, runner, LRS, 3, 0.2, 100, 2, 8, **kw)


def test_the_table_pairs_each_sgg_row_with_its_base(tmp_path, no_bases):
  result = _table(_FakeRunner(tmp_path))
  rows = {r['key']: r for r in result['rows']}
  assert [r['key'] for r in result['rows']] == [r.key for r in TABLE]
  diffs = np.array([-5.0, -2.0, -9.0])  # momentum form - Adam, by seed
  half = 4.303 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
  paired = rows['adam_sgg_momentum']['paired']
  assert paired['vs'] == 'adam' and paired['diffs'] == diffs.tolist()
  assert paired['low'] == pytest.approx(diffs.mean() - half)
  assert paired['high'] == pytest.approx(diffs.mean() + half)
  lora = rows['lora_sgg_momentum']['paired']  # paired with LoRA, not Adam
  assert lora['vs'] == 'lora' and lora['diffs'] == [-10.0, -10.0, -5.0]
  assert rows['lora']['lora_rank'] == 8 and rows['adam']['lora_rank'] == 0
  # Tuned on dev from the shared grid, extended where the best is an end.
  assert rows['adam']['summary']['lr'] == 5e-3
  assert rows['lamb']['summary']['lr'] == pytest.approx(4e-2)  # 2 ext.
  assert rows['lamb']['summary']['lr_at_grid_edge']
  assert 'sgg_optax.came' in rows['came']['status']
  assert rows['came']['summary'] is None and rows['came_sgg_momentum'][
    'paired'] is None

  md = c4_markdown(result).splitlines()
  titles = [i for i, line in enumerate(md) if line.startswith('| *')]
  assert [md[i].split('*')[1] for i in titles] == [
    'Pre-training with full-rank optimizers',
    'Pre-training with memory-efficient optimizers',
    'Low-rank pre-training']
  line = next(x for x in md if x.startswith('| Adam+SGG (momentum)'))
  m, lo, hi = diffs.mean(), diffs.mean() - half, diffs.mean() + half
  assert f'{m:+.2f} [{lo:+.2f}, {hi:+.2f}]' in line
  assert '30.31 (-3.75)' in line  # the paper's 60M number and its gain
  assert '110.00 ± 10.00' in next(x for x in md if x.startswith('| Adam |'))
  came = next(x for x in md if x.startswith('| CAME |'))
  assert 'unavailable' in came and 'sgg_optax.came' in came
  assert '— (LLaVA table only)' in next(
    x for x in md if x.startswith('| LAMB+SGG'))


def test_the_table_is_rebuilt_from_the_run_jsons(tmp_path, no_bases):
  live = c4_markdown(_table(_FakeRunner(tmp_path)))
  stored = StoredRuns(tmp_path)
  assert c4_markdown(_table(stored)) == live
  assert stored.n_reused > 0


def test_chunks_stop_before_the_budget_and_resume(tmp_path, no_bases):
  whole = _FakeRunner(tmp_path / 'whole')
  expected = c4_markdown(_table(whole))
  chunks, trained = 0, []
  while True:
    runner = _FakeRunner(tmp_path / 'chunked', max_minutes=1.0)
    chunks += 1
    try:
      result = _table(runner)
    except BudgetSpent:
      # 10 s runs in a 60 s chunk: the 6th ends at 60 s, the 7th would not.
      assert len(runner.trained) == 6 and runner.fake_clock.t == 60.0
      trained += runner.trained
      continue
    trained += runner.trained
    break
  assert c4_markdown(result) == expected
  assert len(trained) == len(whole.trained) == len(set(map(str, trained)))
  assert chunks == -(-len(trained) // 6)


def test_the_command_exits_3_when_a_chunk_ends_and_then_finishes(
    tmp_path, monkeypatch, no_bases, capsys):
  clock = _Clock()

  class Fake(_FakeRunner):
    def __init__(self, out, fresh, progress, argv, max_minutes):
      super().__init__(out, clock=clock, max_minutes=max_minutes)

  monkeypatch.setattr(pretrain_cli, 'Runner', Fake)
  argv = ['--smoke', '--experiment', 'c4_table', '--table-rows', 'galore',
          '--out', str(tmp_path), '--no-progress', '--max-minutes', '0.5',
          '--mesh', 'data=1']
  with pytest.raises(SystemExit) as e:
    pretrain_cli.main(argv)
  assert e.value.code == 3 and 'chunk over' in capsys.readouterr().out
  assert not (tmp_path / 'c4_table.json').exists()
  clock.t = 0.0
  pretrain_cli.main(argv[:-4] + ['--mesh', 'data=1'])  # no budget: finishes
  rows = json.loads((tmp_path / 'c4_table.json').read_text())['rows']
  assert [r['key'] for r in rows] == ['galore']
  assert 'GaLore' in (tmp_path / 'c4_table.md').read_text()
  assert (tmp_path / 'COMMAND.txt').read_text().count('--max-minutes') == 1


def test_max_spike_is_the_largest_rise_over_the_running_minimum():
  assert max_spike([[0, 7.0], [1, 6.0], [2, 6.5], [3, 5.0]]) == 0.5
  assert max_spike([[0, 7.0], [1, 5.0], [2, 12.0]]) == 7.0
  assert max_spike([[0, 7.0], [1, 6.0], [2, 5.0]]) == 0.0
  assert max_spike([[0, 7.0], [1, math.nan]]) is None


def _breaking_result(cfg):
  """Adam diverges from 30x (at 10x on seed 0 only); SGG (momentum) never
  below 100x; everything diverges from 100x."""
  m = cfg.lr / 1e-3
  div = m >= 100 or (cfg.optimizer == 'adam' and (
    m >= 30 or (m >= 10 and cfg.seed == 0)))
  train = [[0, 7.0], [1, 5.0], [2, 12.0 if div else 5.5]]
  return fake_result(cfg, diverged=div, train=train, test_ppl=150.0)


def test_breaking_goes_up_until_adam_diverges_and_adds_seeds_to_splits(
    tmp_path):
  runner = _FakeRunner(tmp_path, make=_breaking_result)
  res = breaking(BASE.replace(clip_norm=0.0, warmup_frac=0.0), runner,
                 ['adam', 'adam_sgg_momentum'], 1e-3,
                 [1, 3, 10, 30, 100, 300, 1000], [4, 8], seeds=1,
                 split_seeds=3, past=1, t_frac=0.2)
  cells = [c for c in res['cells'] if c['batch_size'] == 4]
  # Adam diverges on every seed at 30x and 100x: one multiplier past it.
  assert [c['multiplier'] for c in cells] == [1, 3, 10, 30, 100]
  assert [c['split'] for c in cells] == [False, False, True, True, False]
  assert [len(c['runs']['adam']) for c in cells] == [1, 1, 3, 3, 1]
  assert [r['diverged'] for r in cells[2]['runs']['adam']] == [
    True, False, False]
  assert cells[3]['runs']['adam_sgg_momentum'][0] == {
    'seed': 0, 'diverged': False, 'reason': '', 'steps_done': 10,
    'max_spike': 0.5, 'final_train_loss': 5.5,
    'test_loss': pytest.approx(math.log(150.0))}
  assert cells[3]['runs']['adam'][0]['max_spike'] == 7.0
  assert all(c['runs']['adam'][0]['reason'] for c in cells[3:])
  # Per batch size (two of them): 1 + 3 + 3 + 1 pairs of each kind.
  assert res['counts']['adam_sgg_momentum'] == {
    'pairs': 2 * (1 + 1 + 3 + 3 + 1), 'only_ref_diverged': 2 * (1 + 3),
    'only_this_diverged': 0, 'both_diverged': 2 * 1}
  assert res['clip_norm'] == 0.0 and res['warmup_frac'] == 0.0
  table = breaking_table(res)
  assert '| 4 | 0.01 (10x) | 1/3 div, spike 7.00, 5.011 | 0/3 div, spike ' \
         '0.50, 5.011 |' in table
  assert all(c['runs']['adam'][0]['seed'] == 0 for c in res['cells'])


@pytest.mark.slow  # real training: three rows of the table, smoke-sized
def test_c4_table_trains_end_to_end(tmp_path):
  pretrain_cli.main(['--smoke', '--experiment', 'c4_table', '--table-rows',
                     'relora,lora_sgg_update', '--mesh', 'data=1', '--out',
                     str(tmp_path), '--no-progress'])
  result = json.loads((tmp_path / 'c4_table.json').read_text())
  rows = {r['key']: r for r in result['rows']}
  assert set(rows) == {'lora', 'relora', 'lora_sgg_update'}
  for r in rows.values():
    assert all(map(math.isfinite, r['summary']['ppl'])) and r['lora_rank']
  assert rows['lora_sgg_update']['paired']['vs'] == 'lora'
  assert rows['relora']['n_params'] == rows['lora']['n_params']
  assert 'ReLoRA' in (tmp_path / 'c4_table.md').read_text()


@pytest.mark.slow  # real training: the breaking grid, smoke-sized
def test_breaking_trains_end_to_end(tmp_path):
  pretrain_cli.main(['--smoke', '--experiment', 'breaking',
                     '--breaking-optimizers', 'adam,adam_sgg_momentum',
                     '--breaking-batch-sizes', '4', '--breaking-multipliers',
                     '1,10000', '--base-lr', '1e-3', '--mesh', 'data=1',
                     '--out', str(tmp_path), '--no-progress'])
  result = json.loads((tmp_path / 'breaking.json').read_text())
  assert result['clip_norm'] == 0.0 and result['warmup_frac'] == 0.0
  first, last = result['cells']
  assert not first['runs']['adam'][0]['diverged']
  assert last['runs']['adam'][0]['diverged']  # at 10 (ten thousand x)
  assert first['runs']['adam'][0]['max_spike'] is not None
