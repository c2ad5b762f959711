"""`python -m experiments.demo` scores both optimizers on held-out data and
shows SGG's scales after it acted."""

import argparse
import re

import numpy as np
import optax

from experiments.bench import demo


def test_demo_reports_held_out_loss_and_moved_scales(capsys):
  demo.main(['--steps', '20', '--train-examples', '64', '--batch-size',
             '16'])
  out = capsys.readouterr().out
  assert f'mean squared error on {demo.N_TEST} unseen examples' in out
  rows = re.findall(r'^ +(\d+) +([\d.]+) +([\d.]+)$', out, re.M)
  assert [int(r[0]) for r in rows] == [5, 10, 15, 20]
  zero = float(re.search(r'predicting 0 scores ([\d.]+)', out).group(1))
  assert all(0 < float(r[i]) < zero for r in rows for i in (1, 2))
  scales = np.array([float(x) for x in re.findall(
      r'kernel +\[([^\]]*)\]', out)[0].split()])
  assert np.abs(scales - 1).max() > 0.01  # T = 1: SGG acted


def test_the_held_out_examples_are_not_trained_on(monkeypatch):
  (x, _), (x_test, _) = demo._data(0, 64)
  assert not np.isin(np.asarray(x_test), np.asarray(x)).any()
  # Held-out labels far from anything trained on: the reported loss is
  # theirs, not the training set's.
  real = demo._data
  monkeypatch.setattr(demo, '_data', lambda seed, n: (
      real(seed, n)[0], (real(seed, n)[1][0], real(seed, n)[1][1] + 100.0)))
  args = argparse.Namespace(seed=0, train_examples=64, batch_size=16,
                            steps=2)
  held_out, _ = demo.train(optax.adam(1e-3), args, report_every=1)
  assert len(held_out) == 2 and min(held_out.values()) > 100.0 ** 2 / 2
