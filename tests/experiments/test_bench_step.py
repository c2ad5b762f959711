"""experiments.bench_step: both refresh schedules of every SGG optimizer."""

import json
import math

import pytest

from experiments.bench import step as bench_step

# The script end to end (its flags: test_cli_errors.py; the loop-decided
# step's temporaries: tests/test_memory.py).
pytestmark = pytest.mark.slow


def test_bench_times_both_schedules(tmp_path):
  bench_step.main(['--smoke', '--trees', 'matrix', '--optimizers',
                   'adam+sgg (chain link)', '--instances', '2',
                   '--out', str(tmp_path)])
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['instances'] == 2
  (tree,) = results['trees']
  rows = {r['optimizer']: r for r in tree['rows']}
  assert set(rows) == {'adam', 'adam+sgg (chain link)',
                       'adam+sgg (chain link), loop decides'}
  for name, row in rows.items():
    assert row['base'] == 'adam'
    assert math.isfinite(row['plain_ratio']) and row['plain_ratio'] > 0
    if name != 'adam':
      assert math.isfinite(row['refresh_ratio'])
      assert row['refresh_compile_s'] > 0
  # The loop-decided plain step holds no conditional, hence no operand
  # buffer: fewer temporaries than the default schedule's.
  loop = rows['adam+sgg (chain link), loop decides']
  assert loop['temp_mib'] < rows['adam+sgg (chain link)']['temp_mib']
  assert 'loop decides' in (tmp_path / 'results.md').read_text()
  assert (tmp_path / 'COMMAND.txt').read_text().strip().endswith(
      str(tmp_path))
