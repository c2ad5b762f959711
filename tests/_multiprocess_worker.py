"""One process of a 2-process CPU JAX cluster training the `_problem` MLP.

Usage: ``python -m tests._multiprocess_worker PROCESS_ID PORT OUT_FILE``,
with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``: two such
processes on loopback form one cluster of 4 CPU devices (gloo collectives),
train ``3 * T`` steps on a global 2 x 2 (data x model) mesh with explicit
axes, each process feeding only its own rows of every batch, and process 0
writes the final parameters and optimizer state, read back with
``process_allgather``, to ``OUT_FILE`` (``.npz``, keyed by tree path).
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_optax._src.sharding import state_shardings
from tests import _problem


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a value every process knows in full."""
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])


def _local_rows(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global batch from the rows this process's devices hold, only."""
  index = sharding.addressable_devices_indices_map(array.shape).values()
  rows = sorted({r for i in index for r in range(*i[0].indices(len(array)))})
  assert rows == list(range(rows[0], rows[-1] + 1)), rows
  return jax.make_array_from_process_local_data(
      sharding, array[rows[0]:rows[-1] + 1], array.shape)


def main(process_id: int, port: int, out_file: str) -> None:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f'127.0.0.1:{port}', num_processes=2,
      process_id=process_id, initialization_timeout=60)
  assert jax.process_count() == 2 and jax.device_count() == 4
  assert jax.local_device_count() == 2

  mesh = _problem.make_mesh(AxisType.Explicit, (2, 2))
  tx = _problem.make_tx()
  p_sh = _problem.param_shardings(mesh)
  d_sh = NamedSharding(mesh, _problem.DATA_SPEC)
  with jax.set_mesh(mesh):
    params = jax.tree.map(_global, _problem.init_params(), p_sh)
    s_sh = state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=s_sh)(params)
    step = jax.jit(_problem.train_step(tx),
                   in_shardings=(p_sh, s_sh, d_sh, d_sh),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())),
                   donate_argnums=(0, 1))
    for t in range(3 * _problem.INTERVAL):
      x, y = (_local_rows(a, d_sh) for a in _problem.batch(t))
      params, state, loss = step(params, state, x, y)
    assert jax.tree.map(lambda a: a.sharding, state) == s_sh
    result = multihost_utils.process_allgather(
        {'params': params, 'opt_state': state}, tiled=True)
  if process_id == 0:
    flat = jax.tree_util.tree_flatten_with_path(result)[0]
    np.savez(out_file, **{jax.tree_util.keystr(k): np.asarray(v)
                          for k, v in flat})
  loss = float(multihost_utils.process_allgather(loss, tiled=True))
  print(f'process {process_id}: {jax.device_count()} devices, '
        f'final loss {loss:.8e}', flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
