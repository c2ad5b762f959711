"""Runs `experiments.train` and SIGKILLs itself in the middle of a save.

Usage: ``python -m tests.experiments._kill_during_save STEP TRAIN_ARGS...``.
When orbax is about to rename the finished temporary directory of checkpoint
``STEP`` to its final name (every array already written), the process sends
itself SIGKILL: a real kill during a save, at a deterministic point.
"""

import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

from experiments import train

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


def main(step: int, argv: list[str]) -> None:
  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize
  train.main(argv)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2:])
