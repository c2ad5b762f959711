"""Multi-process start-up, the data x FSDP x tensor mesh and its rules.

The same code runs single-process on a CPU or one GPU and multi-process on
a pod slice or a cluster:

* `make_mesh` (``--mesh data=N,model=M``, or ``data=D,fsdp=F,model=M``)
  builds a mesh of ``AxisType.Auto`` axes (the NNX model's activations
  carry no sharding annotations, so sharding is left to propagation). With
  two axes, 'data' both splits the batch and shards the parameters (FSDP);
  with an 'fsdp' axis, the parameters are sharded over 'fsdp' only and
  replicated over 'data' (hybrid FSDP), and the batch is split over both.
  Parameters are sharded with `sharding_rules`, the FSDP rules of
  `experiments.common.model_config` (``FSDP_TP_RULES`` when ``model > 1``),
  and so is the optimizer state:
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
  sharded over `batch_axes` (`experiments.pretraining.streams`).
"""

from __future__ import annotations

import logging
import math
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
  """The mesh's axis sizes, in mesh order.

  'data=4,model=2' -> {'data': 4, 'model': 2}; 'data=2,fsdp=4,model=2' ->
  {'data': 2, 'fsdp': 4, 'model': 2}; '' -> all devices on data.
  """
  if not spec:
    return {'data': jax.device_count(), 'model': 1}
  axes = {}
  for part in spec.split(','):
    name, _, size = part.partition('=')
    name = name.strip()
    if name not in ('data', 'fsdp', 'model') or not size.strip().isdigit():
      raise ValueError(f'Bad --mesh {spec!r}: use data=N,model=M or '
                       'data=D,fsdp=F,model=M.')
    axes[name] = int(size)
  names = ('data', 'fsdp', 'model') if 'fsdp' in axes else ('data', 'model')
  axes = {name: axes.get(name, 1) for name in names}
  n = math.prod(axes.values())
  if n > jax.device_count():
    raise ValueError(f'--mesh {spec} needs {n} devices, found '
                     f'{jax.device_count()}.')
  return axes


def batch_axes(axes: dict[str, int] | jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: 'data' (and 'fsdp')."""
  names = axes.axis_names if isinstance(axes, jax.sharding.Mesh) else axes
  return tuple(a for a in ('data', 'fsdp') if a in names)


def batch_shards(axes: dict[str, int]) -> int:
  """How many ways the batch is split (`parse_mesh` sizes)."""
  return math.prod(axes[a] for a in batch_axes(axes))


def make_mesh(spec: str) -> jax.sharding.Mesh:
  """A ('data', 'model') or ('data', 'fsdp', 'model') mesh of Auto axes.

  A mesh smaller than the machine uses its first devices (single process
  only; e.g. testing `data=2,model=2` on 8 fake CPU devices).
  """
  axes = parse_mesh(spec)
  n = math.prod(axes.values())
  kwargs = {}
  if n < jax.device_count():
    if jax.process_count() > 1:
      raise ValueError(f'--mesh {spec} must use all {jax.device_count()} '
                       'devices of a multi-process job.')
    logger.warning('--mesh %s uses %d of %d devices.', spec, n,
                   jax.device_count())
    kwargs['devices'] = jax.devices()[:n]
  return jax.make_mesh(tuple(axes.values()), tuple(axes),
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
                       **kwargs)


def sharding_rules(mesh: jax.sharding.Mesh,
                   config: model_config.LlamaConfig | None = None
                   ) -> model_config.LogicalRules:
  """FSDP over 'fsdp' (else 'data'), plus tensor parallelism on 'model' > 1.

  With ``config``, a logical axis whose arrays the mesh cannot split evenly
  is replicated instead (`model_config.fit_rules`), with a warning.
  """
  base = (model_config.FSDP_TP_RULES if mesh.shape['model'] > 1
          else model_config.FSDP_RULES)
  fsdp = 'fsdp' if 'fsdp' in mesh.axis_names else 'data'
  rules = tuple((name, fsdp if axis == 'data' else axis)
                for name, axis in base)
  if config is not None:
    rules, dropped = model_config.fit_rules(rules, config, dict(mesh.shape))
    if dropped:
      logger.warning('replicating the logical axes %s: the mesh %s does not '
                     'divide their sizes', dropped, dict(mesh.shape))
  return rules
