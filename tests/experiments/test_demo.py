"""`python -m experiments.demo` scores both optimizers on held-out data and
shows SGG's scales after it acted."""

import re

import numpy as np

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


def test_the_held_out_examples_are_not_trained_on():
  (x, _), (x_test, _) = demo._data(0, 64)
  assert not np.isin(np.asarray(x_test), np.asarray(x)).any()
