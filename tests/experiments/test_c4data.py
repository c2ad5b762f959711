"""C4-format training data: per-process shares, packing, a saved position.

Shards and a tokenizer written by the test (`c4_fixture`); nothing is
downloaded. Fast: the loader's shares, its batches against the documents,
the position through JSON and through a checkpoint, the validation split,
the command's refusals. Slow: two gloo processes assembling global batches
from disjoint documents, and `experiments.train` SIGKILLed during a save
resuming with the same batches (the same losses, bitwise).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.pretraining import c4, checkpointing, streams, train_cli
from experiments.pretraining.config import TrainConfig
from tests.experiments import c4_fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEQ = 15


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('c4')
  texts = c4_fixture.write_shards(root / 'shards')
  tok_file = c4_fixture.write_tokenizer(root / 'tokenizer.json')
  return {'root': root, 'texts': texts, 'tokenizer_file': str(tok_file),
          'tokenizer': c4.load_tokenizer(str(tok_file)),
          'train': str(root / 'shards' / 'c4-train.*'),
          'validation': str(root / 'shards' / 'c4-validation.*')}


def _texts(pattern, process_index, process_count, n, seed=0):
  files, stride, offset = c4.process_share(c4.shard_files(pattern),
                                           process_index, process_count)
  it = iter(c4.ShardsDataset(files, stride=stride, offset=offset,
                             seed=seed))
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize('processes', [2, 3, 5])
def test_processes_read_disjoint_documents_covering_every_one(data,
                                                              processes):
  """Fewer processes than shards: whole shards each; more: every shard,
  one line in ``processes`` each. An epoch of every process's share
  together is every training document once."""
  every = data['texts']['train']
  files = c4.shard_files(data['train'])
  assert len(files) == c4_fixture.SHARDS
  seen = []
  for p in range(processes):
    share, stride, offset = c4.process_share(files, p, processes)
    n = sum(len(range(offset, c4_fixture.DOCS, stride)) for _ in share)
    seen.append(_texts(data['train'], p, processes, n))
  flat = [t for texts in seen for t in texts]
  assert sorted(flat) == sorted(every)  # each once: disjoint and complete


def test_epochs_repeat_the_share_in_a_shard_order_of_their_own(data):
  """Epoch e reads the shards in the order drawn from (seed, e)."""
  n, docs = c4_fixture.SHARDS * c4_fixture.DOCS, c4_fixture.DOCS
  texts = data['texts']['train']
  for seed in (0, 1):
    got = _texts(data['train'], 0, 1, 4 * n, seed=seed)
    orders = []
    for epoch in range(4):
      order = np.random.default_rng([seed, epoch]).permutation(
        c4_fixture.SHARDS)
      orders.append(tuple(order))
      want = [t for s in order for t in texts[s * docs:(s + 1) * docs]]
      assert got[epoch * n:(epoch + 1) * n] == want
    assert len(set(orders)) > 1


def _batches(data, n, process_index=0, process_count=1, batch=4):
  it = iter(c4.train_dataset(
    data['train'], data['tokenizer'], seq_len=SEQ, batch_size=batch,
    seed=0, process_index=process_index, process_count=process_count))
  return it, [next(it) for _ in range(n)]


def test_batches_pack_the_documents_in_order(data):
  """Rows of seq_len + 1 tokens cut from the documents, each followed by
  end-of-text, in the order the shards are read: nothing padded or lost."""
  _, got = _batches(data, 6)
  assert all(b.shape == (4, SEQ + 1) and b.dtype == np.int32 for b in got)
  texts = _texts(data['train'], 0, 1, 60)
  stream = np.concatenate([data['tokenizer'].encode(t) for t in texts])
  flat = np.concatenate([b.ravel() for b in got])
  np.testing.assert_array_equal(flat, stream[:len(flat)])
  assert data['tokenizer'].eos_id in flat


@pytest.mark.parametrize('done', [0, 1, 2, 3, 7, 12])
def test_the_position_restores_the_same_batches(data, done):
  """After ``done`` batches, through JSON (a packing remainder or none),
  across a shard and an epoch."""
  it, _ = _batches(data, done)
  state = json.loads(json.dumps(it.get_state()))
  after = [next(it) for _ in range(20)]
  again, _ = _batches(data, 0)
  again.set_state(state)
  for a, b in zip(after, [next(again) for _ in range(20)]):
    np.testing.assert_array_equal(a, b)


def test_the_checkpoint_holds_and_restores_the_position(data, tmp_path):
  """`Checkpointer` saves the data position with the state (grain's orbax
  handler, one file per process) and puts it back on restore."""
  cfg = TrainConfig(data_glob=data['train'])
  model, opt = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(
    3, 1, rngs=nnx.Rngs(1))
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), 1, cfg)
  ckpt.data, _ = _batches(data, 5)
  ckpt.save(5, model, opt, {'train': []})
  expected = [next(ckpt.data) for _ in range(3)]
  assert (tmp_path / 'ckpt' / '5' / 'data' / 'process_0-of-1.json').exists()

  restored = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), 1, cfg)
  restored.data, _ = _batches(data, 0)
  model.kernel.set_value(jnp.zeros_like(model.kernel[...]))
  step, _ = restored.restore(model, opt)
  assert step == 5 and float(jnp.abs(model.kernel[...]).sum()) > 0
  for a in expected:
    np.testing.assert_array_equal(a, next(restored.data))


def test_validation_gives_dev_and_test(data):
  tok = data['tokenizer']
  dev, test = c4.eval_streams(data['validation'], tok)
  every = np.concatenate([tok.encode(t) for t in data['texts']['validation']])
  assert len(dev) + len(test) == len(every)
  docs = c4_fixture.DOCS
  assert np.sum(dev == tok.eos_id) == docs // 10  # documents 5, 15, 25, 35
  assert np.sum(test == tok.eos_id) == docs - docs // 10
  short = c4.eval_tokens(data['validation'], tok, max_tokens=50)
  np.testing.assert_array_equal(short, every[:50])
  cfg = TrainConfig(data_glob=data['train'], eval_glob=data['validation'],
                    tokenizer_file=data['tokenizer_file'])
  loaded = streams.load_streams(cfg)
  assert loaded.train is None and loaded.vocab_size == tok._tok.get_vocab_size()
  np.testing.assert_array_equal(loaded.dev, dev)


@pytest.mark.parametrize('change, message', [
  ({'--data-glob': 'nowhere/*.json.gz'}, '--data-glob: no *.json.gz'),
  ({'--eval-glob': ''}, '--eval-glob: C4-format data needs'),
  ({'--tokenizer-file': 'missing.json'}, '--tokenizer-file: cannot read'),
])
def test_the_command_refuses_settings_that_cannot_work(data, change, message,
                                                       capsys):
  flags = {'--data-glob': data['train'], '--eval-glob': data['validation'],
           '--tokenizer-file': data['tokenizer_file'], **change}
  argv = [x for k, v in flags.items() for x in (k, v)] + ['--no-progress']
  with pytest.raises(SystemExit) as e:
    train_cli.main(argv + ['--out', str(data['root'] / 'r.json')])
  assert e.value.code == 2
  assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------
# Slow: processes of their own
# ------------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_read_disjoint_documents(data, tmp_path):
  """Two processes of one JAX cluster (gloo, 2 CPU devices each) build the
  global batches of `experiments.train` from their own shares only."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
    [sys.executable, '-m', 'tests.experiments._c4_worker', str(i), str(port),
     data['train'], data['tokenizer_file'], str(tmp_path / f'{i}.npz')],
    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    text=True) for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  got = [np.load(tmp_path / f'{i}.npz') for i in range(2)]
  tok = data['tokenizer']
  docs = [c4_fixture.doc_ids(g['local'], tok) for g in got]
  assert docs[0] and docs[1] and not docs[0] & docs[1]
  for i in range(2):  # each process: its share, as the loader reads it
    _, mine = _batches(data, 3, process_index=i, process_count=2, batch=8)
    np.testing.assert_array_equal(got[i]['local'], np.stack(mine))
  # The global batch is process 0's rows, then process 1's.
  np.testing.assert_array_equal(
    got[0]['global'], np.concatenate([got[0]['local'], got[1]['local']],
                                     axis=1))
  np.testing.assert_array_equal(got[0]['global'], got[1]['global'])


@pytest.mark.slow
def test_sigkill_and_resume_continue_the_same_batches(data, tmp_path):
  """`experiments.train` on the shards, killed while orbax finalises a
  checkpoint, resumes from the last one with its data position: its losses
  equal the uninterrupted run's, bit for bit."""
  from tests.experiments import test_resume as r

  c4_args = ['--data-glob', data['train'], '--eval-glob',
             data['validation'], '--tokenizer-file', data['tokenizer_file'],
             '--optimizer', 'adam_sgg_momentum']
  ckpt, out = tmp_path / 'ckpt', tmp_path / 'result.json'
  args = r.COMMON + c4_args + ['--ckpt-dir', str(ckpt), '--out', str(out)]
  ref_out = tmp_path / 'reference.json'
  reference = r.COMMON + c4_args + [
    '--ckpt-dir', str(tmp_path / 'ref_ckpt'), '--out', str(ref_out)]
  cache = tmp_path / 'cache'
  killed = r._run(['tests.experiments._kill_during_save', str(r.KILLED_AT),
                   '--before', json.dumps(reference), *args], cache)
  assert killed.returncode == -9, killed.stderr
  resumed = r._run(['experiments.train', *args], cache)
  assert resumed.returncode == 0, resumed.stderr
  assert f'resumed from step {r.RESUMED_FROM}' in resumed.stderr
  got, want = json.loads(out.read_text()), json.loads(ref_out.read_text())
  assert got['resumed_from_step'] == r.RESUMED_FROM
  assert got['splits']['train_tokens'] is None
  assert got['curves']['train'] == want['curves']['train']
  assert got['test_loss'] == want['test_loss'] is not None
