"""One process of a 2-process cluster reading C4-format shards.

Usage: ``python -m tests.experiments._c4_worker PROCESS_ID PORT GLOB
TOKENIZER OUT_FILE`` with 2 fake CPU devices per process
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``): two such
processes form one cluster of 4 CPU devices (gloo), each reads its share
of the shards (`experiments.pretraining.streams.c4_batches`, as
`experiments.train` does), the global batch of each of 3 steps is
assembled over a ``data=4`` mesh and read back on every process, and
``OUT_FILE`` (``.npz``) gets this process's rows (``local``) and the global
batches (``global``).
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.pretraining import streams
from experiments.pretraining.config import TrainConfig
from experiments.pretraining.distributed import init_distributed, make_mesh


def main(process_id: int, port: int, pattern: str, tokenizer: str,
         out_file: str) -> None:
  init_distributed(f'127.0.0.1:{port}', 2, process_id)
  assert jax.process_count() == 2 and jax.device_count() == 4
  cfg = TrainConfig(data_glob=pattern, tokenizer_file=tokenizer, seq_len=15,
                    batch_size=8, mesh='data=4')
  mesh = make_mesh(cfg.mesh)
  sharding = NamedSharding(mesh, P('data'))
  batches = streams.c4_batches(cfg)
  local, full = [], []
  for _ in range(3):
    rows = next(batches)
    batch = streams._global_batch(rows, sharding, cfg.batch_size)
    local.append(rows)
    full.append(multihost_utils.process_allgather(batch, tiled=True))
  np.savez(out_file, local=np.stack(local), **{'global': np.stack(full)})


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6])
