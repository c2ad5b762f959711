"""SGG on a real 2-process JAX cluster (CPU, gloo on loopback)."""

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import _problem
from tests._rows import rows

pytestmark = pytest.mark.slow  # a 2-process cluster of fresh interpreters

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 90


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_cluster(out_file: pathlib.Path) -> list[str]:
  """Starts both processes, waits for them; their outputs, or a failure."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONUNBUFFERED='1')
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'tests._multiprocess_worker', str(i),
       str(port), str(out_file)], cwd=ROOT, env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  deadline = time.monotonic() + TIMEOUT_S
  outputs = [''] * 2
  try:
    for i, proc in enumerate(procs):
      outputs[i] = proc.communicate(
          timeout=max(1.0, deadline - time.monotonic()))[0]
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    outputs = [proc.communicate()[0] for proc in procs]
    pytest.fail(f'cluster timed out after {TIMEOUT_S} s (port {port}):\n'
                + '\n'.join(f'--- process {i} ---\n{o}'
                            for i, o in enumerate(outputs)))
  codes = [proc.returncode for proc in procs]
  if codes != [0, 0]:
    pytest.fail(f'exit codes {codes} (port {port}):\n' + '\n'.join(
        f'--- process {i} ---\n{o}' for i, o in enumerate(outputs)))
  return outputs


def test_two_process_cluster_matches_a_single_process_run(tmp_path):
  out_file = tmp_path / 'result.npz'
  outputs = _run_cluster(out_file)
  assert all('4 devices' in o for o in outputs), outputs
  result = dict(np.load(out_file))

  params, state, losses = _problem.single_device_run(3 * _problem.INTERVAL)
  expected = jax.tree_util.tree_flatten_with_path(
      jax.device_get({'params': params, 'opt_state': state}))[0]
  assert sorted(result) == sorted(jax.tree_util.keystr(k)
                                  for k, _ in expected)
  sgg = state[1]
  assert int(sgg.count) == 3 * _problem.INTERVAL
  assert not np.allclose(rows(sgg.scales), 1.0)  # it went through refreshes
  for path, want in expected:
    key = jax.tree_util.keystr(path)
    got = result[key]
    assert got.shape == want.shape and got.dtype == want.dtype, key
    if want.dtype.kind in 'iu':  # ids and counts: exactly
      np.testing.assert_array_equal(got, want, err_msg=key)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6,
                                 err_msg=key)
  for output in outputs:  # every process saw the same global loss
    loss = float(re.search(r'final loss (\S+)', output).group(1))
    np.testing.assert_allclose(loss, losses[-1], rtol=1e-4)
