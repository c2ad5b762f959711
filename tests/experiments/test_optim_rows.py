"""The paper's other C4 rows as `--optimizer` names (optim_rows.py).

Every row trains a few steps of a 1-layer model (loss finite) or, while
sgg_optax lacks its base, is refused with a message that says so. ReLoRA's
restart, its jagged schedule and the factorised model are checked against
what they must compute.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sgg_optax
from experiments.pretraining import (
  loop,
  lowrank,
  optim_rows,
  relora,
  step,
  train_cli,
)
from experiments.pretraining.config import OPTIMIZERS, TrainConfig
from experiments.pretraining.distributed import make_mesh
from experiments.pretraining.optim import build_optimizer
from experiments.pretraining.streams import load_streams

# A 1-layer, width-32 model, 4 steps, 4 eval windows: each row compiles its
# own train step; the model's evaluation compiles once for all of them.
CFG = TrainConfig(preset='tiny', n_layers=1, dim=32, vocab_size=512,
                  seq_len=16, batch_size=4, steps=4, eval_windows=4,
                  log_every=1, recluster_interval=2, beta3=0.5, lora_rank=4,
                  lr=3e-3)
# The fast set trains the rows whose code is ours (the model change, the
# restarts, GaLore's targets); the thin optax wrappers train in `slow`.
SLOW = {'nadam', 'radam', 'lamb', 'adan', 'lamb_sgg_momentum', 'galore',
        'adam_mini', 'came', 'came_sgg_momentum', 'apollo',
        'apollo_sgg_update'}


@pytest.fixture(scope='module')
def streams():
  return load_streams(CFG)


def _train(streams, **changes):
  cfg = CFG.replace(**changes)
  return loop.train(cfg, progress=False, mesh=make_mesh('data=1'),
                    streams=streams)


def test_every_row_is_an_optimizer_with_a_label_and_section():
  for name, row in optim_rows.ROWS.items():
    assert name in OPTIMIZERS and row.section in optim_rows.SECTIONS
    assert row.label and row.reference
    if row.sgg_base:
      assert name.endswith(('_sgg_momentum', '_sgg_update'))
      assert row.sgg_base in optim_rows.ROWS


@pytest.mark.parametrize('name', [
  pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
  for n in optim_rows.NAMES])
def test_row_trains_or_says_why_not(name, streams, capsys):
  why = optim_rows.unavailable(name)
  if why is not None:  # refused before anything is written
    assert f'sgg_optax.{optim_rows.ROWS[name].library[0]}' in why
    with pytest.raises(SystemExit) as e:
      train_cli.main(['--smoke', '--optimizer', name, '--no-progress'])
    assert e.value.code == 2 and why in capsys.readouterr().err
    return
  row = optim_rows.ROWS[name]  # the rank only where the row has one
  result = _train(streams, optimizer=name,
                  lora_rank=CFG.lora_rank if row.needs_rank else 0)
  losses = [p[1] for p in result['curves']['train']]
  assert len(losses) == CFG.steps and all(map(math.isfinite, losses))
  assert not result['diverged'] and math.isfinite(result['test_loss'])
  n, trainable = result['model']['n_params'], result['model']['n_trainable']
  if row.model == 'factorized':  # rank-4 factors instead of 32-wide kernels
    assert trainable == n < _train_dense_params()
  elif row.model == 'lora':  # adapters on frozen kernels (LoRA pre-training)
    assert trainable < n == _train_dense_params() + _adapters()
  else:  # the whole dense model
    assert trainable == n == _train_dense_params()
  if name == 'relora':  # zero after the warm-up's first step and a restart
    assert [p[0] for p in result['curves']['train'] if p[3] == 0] == [0, 2]
  if optim_rows.ROWS[name].sgg_base:
    assert result['curves']['sgg'][-1]['max_abs_dev'] > 0


def _train_dense_params():
  d, f, v = 32, 96, 512  # width, SwiGLU width, vocabulary (tied)
  kv = 32  # one head of 32 for queries, keys and values at width 32
  return v * d + 2 * d * d + 2 * d * kv + 3 * d * f + 3 * d


def _adapters():
  r, d, f, kv = 4, 32, 96, 32
  return r * ((d + d) * 2 + (d + kv) * 2 + (d + f) * 3)


@pytest.mark.parametrize('name', ['galore', 'lowrank', 'relora'])
def test_low_rank_rows_need_a_rank(name, capsys):
  assert 'needs a rank' in optim_rows.check(CFG.replace(optimizer=name,
                                                        lora_rank=0))
  with pytest.raises(SystemExit) as e:
    train_cli.main(['--smoke', '--optimizer', name, '--no-progress'])
  assert e.value.code == 2 and '--lora-rank' in capsys.readouterr().err


def test_a_missing_base_is_refused_with_its_name(monkeypatch, capsys):
  monkeypatch.delattr(sgg_optax, 'came', raising=False)
  cfg = CFG.replace(optimizer='came')
  assert 'sgg_optax.came' in optim_rows.check(cfg)
  with pytest.raises(ValueError, match='sgg_optax.came'):
    optim_rows.build(cfg, lambda t: 1.0, {})
  assert optim_rows.hyperparameters('came', cfg) == {}
  with pytest.raises(SystemExit) as e:  # before anything is written
    train_cli.main(['--smoke', '--optimizer', 'came', '--no-progress'])
  assert e.value.code == 2 and 'sgg_optax.came' in capsys.readouterr().err


def test_library_rows_pass_only_what_the_base_accepts(monkeypatch):
  seen = {}

  def fake_apollo_sgg(learning_rate, rank=1, update_proj_gap=200,
                      weight_decay=0.0, *, num_clusters=3, beta3=0.99,
                      recluster_interval=500):
    seen.update(rank=rank, gap=update_proj_gap, k=num_clusters, b3=beta3,
                t=recluster_interval)
    return sgg_optax.adamw_sgg(learning_rate)

  monkeypatch.setattr(sgg_optax, 'apollo_sgg', fake_apollo_sgg,
                      raising=False)
  cfg = CFG.replace(optimizer='apollo_sgg_update', steps=500)
  build_optimizer(cfg)
  # A quarter of the width; the projection every 2% of the run; SGG's own.
  assert seen == dict(rank=8, gap=10, k=3, b3=0.5, t=2)
  stated = optim_rows.hyperparameters('apollo_sgg_update', cfg)
  assert stated == dict(rank=8, update_proj_gap=10, weight_decay=0.0)


def test_stated_hyperparameters_scale_with_the_run():
  cfg = CFG.replace(steps=10_000)
  assert optim_rows.hyperparameters('galore', cfg)['update_proj_gap'] == 200
  assert optim_rows.hyperparameters('galore', cfg)['scale'] == 0.25
  s = optim_rows.hyperparameters('relora', cfg)
  assert (s['interval'], s['rewarm'], s['prune_ratio']) == (1000, 100, 0.99)
  assert optim_rows.hyperparameters('adan', cfg)['b1'] == 0.98


def test_jagged_schedule_rewarms_from_zero_after_each_restart():
  base = lambda t: 1.0 + 0.0 * t
  sched = relora.jagged_schedule(base, interval=10, rewarm=4)
  got = [float(sched(jnp.int32(t))) for t in range(25)]
  want = [1.0] * 10 + [0, .25, .5, .75] + [1.0] * 6 + [0, .25, .5, .75, 1.]
  np.testing.assert_allclose(got, want)


def test_spectral_init_is_the_best_rank_r_approximation():
  dense = nnx.Linear(24, 40, use_bias=False, rngs=nnx.Rngs(0))
  w = np.asarray(dense.kernel[...], np.float64)
  layer = lowrank.LowRankLinear(dense, 5)
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  best = (u[:, :5] * s[:5]) @ vt[:5]
  uv = np.asarray(layer.u[...] @ layer.v[...], np.float64)
  np.testing.assert_allclose(uv, best, atol=1e-6)
  # Balanced factors: U^T U = V V^T = diag(s) (the square roots split).
  np.testing.assert_allclose(layer.u[...].T @ layer.u[...], np.diag(s[:5]),
                             atol=1e-5)  # float32 singular vectors
  np.testing.assert_allclose(layer.v[...] @ layer.v[...].T, np.diag(s[:5]),
                             atol=1e-5)
  x = jnp.ones((2, 24))
  # (x U) V against x (U V): two roundings of a sum that cancels, so the
  # tolerance is relative to the largest output, not to each element.
  merged = np.asarray(x @ (layer.u[...] @ layer.v[...]))
  np.testing.assert_allclose(layer(x), merged,
                             atol=1e-5 * np.abs(merged).max())
  with pytest.raises(ValueError, match='rank'):
    lowrank.LowRankLinear(dense, 25)


def test_restart_merges_reinitialises_and_prunes(streams):
  # The smoke run's configuration: its compiled steps are reused here.
  cfg = CFG.replace(optimizer='relora')
  mesh = make_mesh('data=1')
  with jax.set_mesh(mesh):
    s = loop._setup(cfg, mesh, streams)
    stepper = step._Stepper(s.model, s.opt, None)
    batch = jnp.asarray(streams.train[:cfg.batch_size * (cfg.seq_len + 1)]
                        .reshape(cfg.batch_size, -1))
    for i in range(3):  # A's gradient is zero until B has moved
      stepper(i, batch)
    stepper.sync()
    old = {p: np.array(v.get_value()) for p, v in
           nnx.to_flat_state(nnx.state((s.model, s.opt)))}
    loss = float(step._eval_step(s.model, batch))
    restart = optim_rows.step_hook(cfg)
    assert [d for d in range(6) if restart.due(d)] == [2]
    stepper.transform(restart, 2)
    stepper.sync()
    # The merged model computes the same function.
    np.testing.assert_allclose(float(step._eval_step(s.model, batch)), loss,
                               rtol=1e-6)
  after = {p: np.asarray(v.get_value()) for p, v in
           nnx.to_flat_state(nnx.state((s.model, s.opt)))}
  n_merged = n_pruned = 0
  for path, new in after.items():
    prev = old[path]
    names = [str(p) for p in path]
    layer = path[:-1] if names[-1].startswith('lora') else path[:-2]
    if names[0] == '0' and names[-1] == 'lora_b':
      assert not new.any() and prev.any()
    elif names[0] == '0' and names[-1] == 'lora_a':
      assert not np.array_equal(new, prev)
    elif names[0] == '0' and 'base' in names:
      # W + (alpha / r) A B, alpha = 2 r.
      a, b = old[layer + ('lora_a',)], old[layer + ('lora_b',)]
      np.testing.assert_allclose(new, prev + 2.0 * a @ b, atol=1e-7)
      assert not np.array_equal(new, prev)
      n_merged += 1
    elif relora._is_adapter_moment(path, new):
      assert np.count_nonzero(new) <= math.ceil(0.01 * new.size) + 1
      assert np.count_nonzero(prev) > 0.5 * prev.size
      n_pruned += 1
    else:
      np.testing.assert_array_equal(new, prev)
  assert n_merged == 7 and n_pruned == 2 * 2 * 7  # mu, nu of A and B


def test_galore_projects_the_attention_and_mlp_kernels_only():
  params = {'embed': {'embedding': jnp.zeros((8, 4))},
            'layers': [{'attn': {'q_proj': {'kernel': jnp.zeros((4, 4))}},
                        'mlp': {'up_proj': {'kernel': jnp.zeros((4, 6))}},
                        'attn_norm': {'scale': jnp.zeros(4)}}]}
  spec = optim_rows._galore_targets(params)
  dims = optax.contrib.GaLoreDimensionNumbers
  flat, _ = jax.tree_util.tree_flatten_with_path(
    spec, is_leaf=lambda x: isinstance(x, dims))
  assert {jax.tree_util.keystr(p) for p, x in flat if isinstance(x, dims)
          } == {"['layers'][0]['attn']['q_proj']['kernel']",
                "['layers'][0]['mlp']['up_proj']['kernel']"}
