"""Smoke tests: the training and pre-training scripts run end to end."""

# Both scripts run in-process (their `main(argv)`), so they share compiled
# steps; the repository's conftest.py gives this process 8 fake CPU devices.

import json
import math

import jax
import pytest

from experiments.pretraining import pretrain_cli, train_cli


def _finite(x) -> bool:
  return x is not None and math.isfinite(x)


@pytest.mark.slow  # a whole run on a 2x2 mesh
def test_train_smoke_on_a_data2_model2_mesh(tmp_path):
  assert jax.device_count() >= 4, 'conftest.py sets 8 fake CPU devices'
  out = tmp_path / 'result.json'
  result = train_cli.main(['--smoke', '--optimizer', 'adam_sgg_update',
                           '--mesh',
                           'data=2,model=2', '--out', str(out),
                           '--no-progress'])
  written = json.loads(out.read_text())
  assert written['mesh'] == {'data': 2, 'model': 2}
  assert written['test_ppl'] == result['test_ppl']
  assert not result['diverged'] and _finite(result['test_ppl'])
  assert _finite(result['dev_loss']) and result['eval_span'] >= 0.9
  assert written['provenance']['command'][:3] == [
    'python', '-m', 'experiments.train']
  assert 0 <= result['clamped_fraction'] <= 1
  assert all(_finite(p[1]) for p in result['curves']['train'])
  assert result['curves']['sgg'], 'SGG diagnostics were logged'


@pytest.mark.slow  # every experiment of the script, end to end
def test_pretrain_smoke_all_experiments(tmp_path, capsys):
  pretrain_cli.main(['--smoke', '--experiment', 'all', '--mesh', 'data=1',
                     '--out', str(tmp_path), '--no-progress'])
  assert 'Experiment 1' in capsys.readouterr().out
  assert 'python -m experiments.pretrain --smoke' in (
    tmp_path / 'COMMAND.txt').read_text()
  for name in ('compare.json', 'robustness.json', 'ablations.json',
               'compare_curves.png', 'compare_lr_sweep.png',
               'robustness_heatmap.png', 'scales_adam_sgg_update.png',
               'ablations_scale_movement.png', 'tables_all.md'):
    assert (tmp_path / name).stat().st_size > 0, name
  compare = json.loads((tmp_path / 'compare.json').read_text())
  for summary in compare['summary'].values():
    assert _finite(summary['ppl_mean'])
  robust = json.loads((tmp_path / 'robustness.json').read_text())
  assert len(robust['loss']['adam']) == len(robust['batch_sizes']) == 2


@pytest.mark.slow  # the script end to end (its parts: test_splits_and_tuning)
def test_robustness_runs_the_chosen_optimizers(tmp_path):
  pretrain_cli.main(['--smoke', '--experiment', 'robustness', '--optimizers',
                     'adam', '--mesh', 'data=1', '--out', str(tmp_path),
                     '--no-progress'])
  robust = json.loads((tmp_path / 'robustness.json').read_text())
  assert list(robust['loss']) == ['adam']
