"""experiments.reproduce: a re-run is bitwise its JSON on the same machine,
within a stated tolerance elsewhere, and a changed metric is caught."""

import copy
import json
import math
import re

import pytest

from experiments.common import records
from experiments.pretraining import reproduce
from experiments.pretraining.config import SMOKE, TrainConfig
from experiments.pretraining.loop import train


def _run(losses, dev=6.0, test=6.1, cpu='A'):
  return {
      'config': {'optimizer': 'adam'},
      'curves': {'train': [[i, x, 1.0, 0.1] for i, x in enumerate(losses)],
                 'dev': [[len(losses), dev, 400.0]]},
      'dev_loss': dev, 'test_loss': test, 'final_train_loss': losses[-1],
      'clamped_fraction': None, 'steps_done': len(losses), 'diverged': False,
      'provenance': {'device': {'cpu': {'model': cpu}}}}


def test_compare_is_bitwise_on_the_same_machine():
  old = _run([7.0, 6.5, 6.2])
  same = reproduce.compare(old, copy.deepcopy(old), True, 2, 1e-4, 0.03)
  assert same['verdict'] == 'bitwise' and same['reproduces']
  new = copy.deepcopy(old)
  new['curves']['train'][2][1] = 6.25
  diff = reproduce.compare(old, new, True, 2, 1e-4, 0.03)
  assert diff['verdict'] == 'differs' and not diff['reproduces']
  assert diff['differences'] == ['/curves/train[2][1]: 6.2 -> 6.25']


def test_compare_on_another_machine_checks_tolerances():
  old = _run([7.0, 6.5, 6.2, 6.0])
  drift = _run([7.0, 6.5 * (1 + 5e-5), 6.3, 6.1], dev=6.02, test=6.07)
  close = reproduce.compare(old, drift, False, 2, 1e-4, 0.03)
  assert close['verdict'] == 'close' and close['reproduces']
  # The final tolerance is in nats, not relative to the loss.
  far = _run([7.0, 6.5, 6.3, 6.1], dev=6.05)
  assert not reproduce.compare(old, far, False, 2, 1e-4, 0.03)['reproduces']
  assert reproduce.compare(old, far, False, 2, 1e-4, 0.06)['reproduces']
  early = _run([7.0, 6.6, 6.2, 6.0])
  result = reproduce.compare(old, early, False, 2, 1e-4, 0.03)
  assert not result['reproduces'] and not result['early_close']


def test_the_message_says_what_is_checked():
  report = {'folder': 'f', 'machine': {'cpu': {'model': 'X'},
                                       'cpu_affinity': 2, 'jax': '0'},
            'early_steps': 5, 'early_rtol': 1e-4, 'final_tol': 0.03,
            'runs': [dict(reproduce.compare(
                _run([7.0, 6.5]), _run([7.0, 6.5], dev=6.01), False, 5,
                1e-4, 0.03), run='r.json')]}
  text = reproduce.summary(report)
  assert ('reproduces within tolerance: recorded on another CPU, core '
          'count or jax (bitwise is expected only on the same); checked: '
          'its first 5 logged train losses within a relative 0.0001 of the '
          'recorded ones, and its final dev and test loss within ±0.03 '
          'nats (±3.0% in perplexity)') in text
  assert 'dev_loss: recorded 6.0, now 6.01 (+0.0100 nats)' in text


def test_pick_takes_the_cheapest_of_each_optimizer_sgg_first(tmp_path):
  runs = []
  for opt, wall in [('adam', 1.0), ('adam', 0.5), ('adam_sgg', 3.0),
                    ('adam_sgg', 2.0), ('adafactor', 0.1)]:
    runs.append((tmp_path / f'{opt}{wall}.json',
                 {'config': {'optimizer': opt}, 'wall_time_s': wall}))
  picked = [(r['config']['optimizer'], r['wall_time_s'])
            for _, r in reproduce.pick(runs, 4)]
  assert picked == [('adam_sgg', 2.0), ('adafactor', 0.1), ('adam', 0.5),
                    ('adam_sgg', 3.0)]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A results folder with one recorded SGG smoke run (refreshes included)."""
  root = tmp_path_factory.mktemp('results')
  cfg = TrainConfig(**SMOKE, optimizer='adam_sgg', mesh='data=1')
  train(cfg, out=root / 'runs' / 'run.json', progress=False)
  return root


def test_a_recorded_run_reproduces_bitwise_here(folder, capsys):
  assert reproduce.main([str(folder), '--no-progress', '--report',
                         str(folder / 'report.json')]) == 0
  report = json.loads((folder / 'report.json').read_text())
  (row,) = report['runs']
  assert row['verdict'] == 'bitwise', row['differences']
  assert report['machine']['cpu'] == records.cpu()
  assert 'reproduces bitwise' in capsys.readouterr().out


def test_a_changed_metric_does_not_reproduce(folder, tmp_path):
  run = json.loads((folder / 'runs' / 'run.json').read_text())
  run['curves']['sgg'][-1]['scales'][0][0] += 1e-6
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'run.json').write_text(json.dumps(run))
  assert reproduce.main([str(tmp_path), '--no-progress']) == 1


def test_a_run_from_another_cpu_is_checked_within_tolerance(folder,
                                                            tmp_path):
  run = json.loads((folder / 'runs' / 'run.json').read_text())
  run['provenance']['device']['cpu']['model'] = 'another CPU'
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'run.json').write_text(json.dumps(run))
  assert reproduce.main([str(tmp_path), '--no-progress', '--report',
                         str(tmp_path / 'r.json')]) == 0
  (row,) = json.loads((tmp_path / 'r.json').read_text())['runs']
  assert row['verdict'] == 'close'


def test_an_empty_folder_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit):
    reproduce.main([str(tmp_path)])
  assert 'no pre-training run JSONs' in capsys.readouterr().err


def test_the_default_tolerance_is_the_measured_spread_with_a_margin():
  """The module docstring states the largest cross-CPU difference measured
  and the default; they agree with FINAL_TOL."""
  doc = ' '.join(reproduce.__doc__.split())
  measured = max(float(x) for x in re.findall(r'([\d.]+) nats', doc)
                 if float(x) < reproduce.FINAL_TOL)
  assert measured < reproduce.FINAL_TOL < 2 * measured
  assert f'The default, {reproduce.FINAL_TOL:g} nats' in doc
  assert f'±{math.expm1(reproduce.FINAL_TOL):.1%} in perplexity' in doc
  readme = ' '.join(re.sub(r'^> ?', '', (
      reproduce.pathlib.Path(__file__).parents[2] / 'experiments' / 'results'
      / 'README.md').read_text(), flags=re.M).split())
  assert (f'the final losses within {reproduce.FINAL_TOL:g} nats, from the '
          'spread measured across CPUs') in readme
