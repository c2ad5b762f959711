"""Multi-process start-up, the ('data', 'model') mesh and its sharding rules.

The same code runs single-process on a CPU or one GPU and multi-process on
a pod slice or a cluster:

* `make_mesh` (``--mesh data=N,model=M``) builds a mesh of
  ``AxisType.Auto`` axes (the NNX model's activations carry no sharding
  annotations, so sharding is left to propagation). Parameters are sharded
  with `sharding_rules`, the FSDP rules of `experiments.common.model_config`
  (``FSDP_TP_RULES`` when ``model > 1``), and so is the optimizer state:
  Adam's moments and SGG's per-element cluster ids inherit their
  parameter's logical axes (nnx.Optimizer copies the metadata), SGG's small
  per-layer statistics and the counters are replicated.
* `init_distributed` calls ``jax.distributed.initialize()`` when
  ``--coordinator`` / ``--num-processes`` / ``--process-id`` are given, or
  automatically on a SLURM, Open MPI or multi-host TPU job
  (``--distributed auto``).
* Each process builds only its rows of every batch
  (`experiments.common.batches`' process_index/process_count) and
  ``jax.make_array_from_process_local_data`` assembles the global batch,
  sharded over ``data`` (`experiments.pretraining.streams`).
"""

from __future__ import annotations

import logging
import os

import jax

from experiments.common import model_config

logger = logging.getLogger(__name__)


def _cluster_env() -> str | None:
  """Names the multi-process launcher found in the environment, if any."""
  env = os.environ
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in env:
    return 'slurm'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'openmpi'
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  if ',' in hosts or 'MEGASCALE_COORDINATOR_ADDRESS' in env:
    return 'tpu'
  return None


def init_distributed(coordinator: str = '', num_processes: int = 0,
                     process_id: int = -1, mode: str = 'auto') -> bool:
  """Calls `jax.distributed.initialize` when launched multi-process.

  Args:
    coordinator: 'host:port' of process 0 (explicit launch).
    num_processes: number of processes (explicit launch).
    process_id: this process's index (explicit launch).
    mode: 'auto' also initialises on SLURM, Open MPI and multi-host TPU
      jobs, where JAX finds the cluster itself; 'off' never.

  Returns:
    Whether the distributed runtime was initialised.
  """
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if not explicit and (mode == 'off' or _cluster_env() is None):
    return False
  # CPU processes need a collectives library; other backends ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if coordinator:
    kwargs['coordinator_address'] = coordinator
  if num_processes > 0:
    kwargs['num_processes'] = num_processes
  if process_id >= 0:
    kwargs['process_id'] = process_id
  jax.distributed.initialize(**kwargs)
  return True


def parse_mesh(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2}; '' -> all devices on data."""
  if not spec:
    return {'data': jax.device_count(), 'model': 1}
  axes = {}
  for part in spec.split(','):
    name, _, size = part.partition('=')
    name = name.strip()
    if name not in ('data', 'model') or not size.strip().isdigit():
      raise ValueError(f'Bad --mesh {spec!r}: use data=N,model=M.')
    axes[name] = int(size)
  axes.setdefault('data', 1)
  axes.setdefault('model', 1)
  if axes['data'] * axes['model'] > jax.device_count():
    raise ValueError(f'--mesh {spec} needs {axes["data"] * axes["model"]} '
                     f'devices, found {jax.device_count()}.')
  return axes


def make_mesh(spec: str) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh of `AxisType.Auto` axes.

  A mesh smaller than the machine uses its first devices (single process
  only; e.g. testing `data=2,model=2` on 8 fake CPU devices).
  """
  axes = parse_mesh(spec)
  n = axes['data'] * axes['model']
  kwargs = {}
  if n < jax.device_count():
    if jax.process_count() > 1:
      raise ValueError(f'--mesh {spec} must use all {jax.device_count()} '
                       'devices of a multi-process job.')
    logger.warning('--mesh %s uses %d of %d devices.', spec, n,
                   jax.device_count())
    kwargs['devices'] = jax.devices()[:n]
  return jax.make_mesh((axes['data'], axes['model']), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       **kwargs)


def sharding_rules(mesh: jax.sharding.Mesh) -> model_config.LogicalRules:
  """FSDP over 'data', plus tensor parallelism when 'model' is > 1."""
  if mesh.shape['model'] > 1:
    return tuple(model_config.FSDP_TP_RULES)
  return tuple(model_config.FSDP_RULES)
