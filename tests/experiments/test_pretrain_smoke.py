"""Smoke tests: the training and pre-training scripts run end to end."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(args: list[str], devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _finite(x) -> bool:
  return x is not None and math.isfinite(x)


@pytest.mark.parametrize('mesh,devices', [('', 1), ('data=2,model=2', 8)])
def test_train_smoke(tmp_path, mesh, devices):
  out = tmp_path / 'result.json'
  args = ['experiments.train', '--smoke', '--optimizer', 'adam_sgg',
          '--out', str(out), '--no-progress']
  if mesh:
    args += ['--mesh', mesh]
  _run(args, devices)
  result = json.loads(out.read_text())
  assert result['mesh'] == ({'data': 2, 'model': 2} if mesh
                            else {'data': 1, 'model': 1})
  assert not result['diverged']
  assert _finite(result['final_val_ppl'])
  assert all(_finite(p[1]) for p in result['curves']['train'])
  assert result['curves']['sgg'], 'SGG diagnostics were logged'


def test_pretrain_smoke(tmp_path):
  proc = _run(['experiments.pretrain', '--smoke', '--experiment', 'all',
               '--out', str(tmp_path), '--no-progress'])
  assert 'Experiment 1' in proc.stdout
  for name in ('compare.json', 'robustness.json', 'ablations.json',
               'compare_curves.png', 'compare_lr_sweep.png',
               'robustness_heatmap.png', 'scales_adam_sgg.png',
               'ablations_scale_movement.png', 'tables_all.md'):
    assert (tmp_path / name).stat().st_size > 0, name
  compare = json.loads((tmp_path / 'compare.json').read_text())
  for summary in compare['summary'].values():
    assert _finite(summary['ppl_mean'])
  robust = json.loads((tmp_path / 'robustness.json').read_text())
  assert len(robust['loss']['adam']) == len(robust['batch_sizes'])
