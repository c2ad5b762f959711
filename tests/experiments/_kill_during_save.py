"""Runs `experiments.train` and SIGKILLs itself in the middle of a save.

Usage: ``python -m tests.experiments._kill_during_save STEP [--before JSON]
TRAIN_ARGS...``. When orbax is about to rename the finished temporary
directory of checkpoint ``STEP`` to its final name (every array already
written), the process sends itself SIGKILL: a real kill during a save, at a
deterministic point.

``--before JSON`` (a JSON list of `experiments.train` arguments) first runs
that command to its end in the same process, e.g. the uninterrupted
reference of the run to kill: the killed run then reuses its compiled
steps instead of compiling them again.
"""

import json
import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

from experiments.pretraining import train_cli

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


def main(step: int, argv: list[str]) -> None:
  if argv[:1] == ['--before']:
    train_cli.main(json.loads(argv[1]))
    argv = argv[2:]

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize
  train_cli.main(argv)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2:])
