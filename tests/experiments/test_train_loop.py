"""The pre-training loop: SGG's refresh decided by the loop, and its clock."""

import re

import jax
import numpy as np
import pytest

import sgg_optax
from experiments.pretraining import loop, step
from experiments.pretraining.config import TrainConfig
from experiments.pretraining.distributed import make_mesh
from experiments.pretraining.streams import load_streams

_CFG = dict(preset='tiny', n_layers=1, dim=64, vocab_size=512, steps=7,
            batch_size=4, seq_len=32,
            recluster_interval=3, eval_windows=8, log_every=1)


def _run(**changes):
  cfg = TrainConfig(**{**_CFG, **changes})
  return loop.train(cfg, progress=False, mesh=make_mesh('data=1'))


# The momentum form (its resume: test_resume.py) runs in the `slow` set.
@pytest.mark.parametrize('optimizer', [
    'adam_sgg', pytest.param('adam_sgg_momentum', marks=pytest.mark.slow)])
def test_loop_decided_refresh_trains_as_sgg_own_schedule(optimizer,
                                                         monkeypatch):
  result = _run(optimizer=optimizer)
  diags = result['curves']['sgg']
  # Diagnostics after steps 3, 6 and 7: refreshes at 3 and 6 only.
  assert [d['step'] for d in diags] == [3, 6, 7]
  assert all(d['max_abs_dev'] > 0 for d in diags)
  assert diags[1]['scales'] != diags[0]['scales']
  assert diags[2]['scales'] == diags[1]['scales']
  # SGG's own on-device schedule (sgg_refresh=None: a lax.cond per step)
  # trains the same model.
  monkeypatch.setattr(step._Stepper, 'refresh', lambda self, step: None)
  own = _run(optimizer=optimizer)
  assert own['curves']['sgg'] == diags
  np.testing.assert_allclose([x[1] for x in own['curves']['train']],
                             [x[1] for x in result['curves']['train']],
                             rtol=1e-6)
  np.testing.assert_allclose(own['test_loss'], result['test_loss'],
                             rtol=1e-6)


def test_the_train_step_holds_no_conditional():
  cfg = TrainConfig(**_CFG, optimizer='adam_sgg')
  mesh = make_mesh('data=1')
  with jax.set_mesh(mesh):
    streams = load_streams(cfg)
    s = loop._setup(cfg, mesh, streams)
    stepper = step._Stepper(s.model, s.opt, cfg.recluster_interval)
    batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1),
                                 np.int32, sharding=s.batch_sharding)
    op = re.compile(r'\sconditional\(')
    texts = {refresh: step._train_step.lower(
        stepper.graphdef, stepper.state, batch, refresh).compile().as_text()
             for refresh in (False, True)}
  assert not op.search(texts[False])
  # The refresh step holds the refresh (its internal conditional is the
  # per-layer read-out, not the schedule).
  # Only the refresh sorts its (G, S) sample (K-means, as int32 keys); a
  # plain step sorts at most the 1-D int32 row offsets
  # (sampling.opaque_ints).
  sample_sort = re.compile(r'=\s*\(?s32\[\d+,\d+\][^\n]*?\ssort\(')
  assert sample_sort.search(texts[True]) and not sample_sort.search(
      texts[False])
  assert [stepper.refresh(i) for i in range(7)] == [
      sgg_optax.refresh_due(i, 3) for i in range(7)]
  assert step._Stepper(s.model, s.opt, None).refresh(2) is None


def test_adam_with_diag_every_logs_no_sgg_diagnostics():
  result = _run(optimizer='adam', diag_every=2)
  assert result['curves']['sgg'] == []
  assert result['clamped_fraction'] is None


def test_refresh_step_compile_is_left_out_of_the_throughput(monkeypatch):
  """The refresh step compiles at its first call (step 3): that call is
  left out of the timed steps, as the first step is."""
  clock_log = []
  real = loop._Clock.resume

  def resume(self, t1):
    clock_log.append(t1)
    return real(self, t1)

  monkeypatch.setattr(loop._Clock, 'resume', resume)
  # The steps of test_loop_decided_refresh_trains_as_sgg_own_schedule's
  # first run (evaluation and diagnostics periods change no compiled step):
  # in the same process, they are compiled once for both.
  _run(optimizer='adam_sgg', eval_every=0, diag_every=100)
  # Two pauses: the refresh step's first call (step 3; not its second, at
  # step 6), and the diagnostics after the last step (no evaluation or
  # checkpoint is due before the end).
  assert len(clock_log) == 2, clock_log
