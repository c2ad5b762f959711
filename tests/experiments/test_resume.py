"""`experiments.train` killed with SIGKILL during a save resumes correctly."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ['--smoke', '--mesh', 'data=1', '--ckpt-every', '2', '--no-progress']


def _run(args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=180)


def test_sigkill_during_a_save_resumes_from_the_last_complete_one(tmp_path):
  ckpt, out = tmp_path / 'ckpt', tmp_path / 'result.json'
  args = ARGS + ['--ckpt-dir', str(ckpt), '--out', str(out)]
  # Killed while orbax finalises checkpoint 4 (its files all written).
  killed = _run(['tests.experiments._kill_during_save', '4', *args])
  assert killed.returncode == -9, killed.stderr
  assert sorted(p.name for p in ckpt.iterdir()) == [
    '2', '4.orbax-checkpoint-tmp']
  assert not out.exists()

  resumed = _run(['experiments.train', *args])
  assert resumed.returncode == 0, resumed.stderr
  assert f'resumed from step 2 (checkpoint {ckpt})' in resumed.stderr
  result = json.loads(out.read_text())
  assert result['resumed_from_step'] == 2
  assert [p[0] for p in result['curves']['train']] == list(range(6))
  assert result['dev_loss'] is not None and not result['diverged']
  assert sorted(p.name for p in ckpt.iterdir()) == ['4', '6']

