"""`experiments.train` killed with SIGKILL during a save resumes bitwise.

One test per optimizer family of `experiments.train` (Adam, Adam+SGG in
its chain and momentum forms, Adafactor+SGG, LoRA pre-training): the run is
killed while orbax finalises a checkpoint, the same command resumes it from
the last complete one, and its losses (the whole logged curves, SGG's
diagnostics and the dev/test losses) equal those of the uninterrupted run
bit for bit. SGG refreshes before the resumed checkpoint and after it.

Cost: the uninterrupted reference runs first in the process that is then
killed (`_kill_during_save --before`), which therefore compiles nothing
again, and every process shares one persistent compilation cache, so the
resuming process loads its executables instead of compiling them. XLA
compiles at backend optimisation level 0, which halves the compile time
(most of each run's) and changes nothing a checkpoint does.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import sgg_optax

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY, KILLED_AT, INTERVAL = 8, 3, 6, 2
RESUMED_FROM = KILLED_AT - CKPT_EVERY
COMMON = [
  '--preset', 'tiny', '--n-layers', '1', '--dim', '64', '--vocab-size',
  '512', '--seq-len', '32', '--batch-size', '4', '--steps', str(STEPS),
  '--eval-windows', '4', '--log-every', '1', '--recluster-interval',
  str(INTERVAL), '--beta3', '0.5', '--ckpt-every', str(CKPT_EVERY),
  '--mesh', 'data=1', '--no-progress']
FAMILIES = {
  'adam': ['--optimizer', 'adam'],
  'adam_sgg': ['--optimizer', 'adam_sgg'],
  'adam_sgg_momentum': ['--optimizer', 'adam_sgg_momentum'],
  'adafactor_sgg': ['--optimizer', 'adafactor_sgg'],
  'lora_adam_sgg': ['--optimizer', 'adam_sgg', '--lora-rank', '2'],
}


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


def _run(args, cache):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_the_settings_refresh_sgg_before_and_after_the_resumed_step():
  refreshes = [i for i in range(STEPS)
               if sgg_optax.refresh_due(i, INTERVAL)]
  assert min(refreshes) < RESUMED_FROM <= max(refreshes)
  assert RESUMED_FROM % INTERVAL  # resumed in the middle of an interval


# One family (Adam+SGG, the SGG resume regression) in the fast set; the
# others are `slow` (every family is two fresh processes).
FAST_FAMILY = 'adam_sgg'


@pytest.mark.parametrize('family', [
  f if f == FAST_FAMILY else pytest.param(f, marks=pytest.mark.slow)
  for f in FAMILIES])
def test_sigkill_during_a_save_resumes_bitwise(tmp_path, compile_cache,
                                               family):
  ckpt, out = tmp_path / 'ckpt', tmp_path / 'result.json'
  args = COMMON + FAMILIES[family] + ['--ckpt-dir', str(ckpt), '--out',
                                      str(out)]
  ref_out = tmp_path / 'reference.json'
  reference_args = COMMON + FAMILIES[family] + [
    '--ckpt-dir', str(tmp_path / 'reference_ckpt'), '--out', str(ref_out)]
  # The reference runs to its end; then the same command is killed while
  # orbax finalises checkpoint KILLED_AT (its files all written).
  killed = _run(['tests.experiments._kill_during_save', str(KILLED_AT),
                 '--before', json.dumps(reference_args), *args],
                compile_cache)
  assert killed.returncode == -9, killed.stderr
  assert sorted(p.name for p in ckpt.iterdir()) == [
    str(RESUMED_FROM), f'{KILLED_AT}.orbax-checkpoint-tmp']
  assert not out.exists()

  resumed = _run(['experiments.train', *args], compile_cache)
  assert resumed.returncode == 0, resumed.stderr
  assert (f'resumed from step {RESUMED_FROM} (checkpoint {ckpt})'
          in resumed.stderr)
  assert sorted(p.name for p in ckpt.iterdir()) == [
    str(KILLED_AT), str(STEPS)]

  got, want = json.loads(out.read_text()), json.loads(ref_out.read_text())
  assert got['resumed_from_step'] == RESUMED_FROM
  assert want['resumed_from_step'] is None
  assert not got['diverged'] and got['test_loss'] is not None
  assert [p[0] for p in got['curves']['train']] == list(range(STEPS))
  # Bitwise: JSON writes each float's repr, which reads back exactly.
  assert got['curves']['train'] == want['curves']['train']
  for key in ('dev_loss', 'test_loss', 'final_train_loss',
              'clamped_fraction'):
    assert got[key] == want[key], key
  assert got['curves'] == want['curves']  # dev/test and SGG diagnostics
  if family != 'adam':
    diag = {d['step']: d for d in got['curves']['sgg']}
    before = max(s for s in diag if s <= RESUMED_FROM)
    # SGG had refreshed (scales moved from 1) before the checkpoint, and
    # refreshed again after it (its scales moved on).
    assert diag[before]['max_abs_dev'] > 0
    assert diag[STEPS]['scales'] != diag[before]['scales']
