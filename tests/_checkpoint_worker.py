"""Resumes the `_problem` run from an orbax checkpoint, in a fresh process.

Usage: ``python -m tests._checkpoint_worker DIRECTORY STEP STEPS``: restores
step ``STEP`` of the CheckpointManager in ``DIRECTORY`` onto the abstract
state (``jax.eval_shape``), trains ``STEPS`` more steps on one device and
saves the result as step ``STEP + STEPS``.
"""

import sys

import jax
import optax
import orbax.checkpoint as ocp

from tests import _problem


def main(directory: str, step: int, steps: int) -> None:
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(
        step, args=ocp.args.StandardRestore(_problem.abstract_train_state()))
    ids = restored['opt_state'][1].ids
    if not isinstance(ids['b1'], optax.MaskedNode):
      raise TypeError(f'MaskedNode did not round-trip: {ids["b1"]!r}')
    params, state, _ = _problem.single_device_run(
        steps, start=(restored['params'], restored['opt_state']),
        first_step=step)
    manager.save(step + steps, args=ocp.args.StandardSave(
        {'params': params, 'opt_state': state}))
    manager.wait_until_finished()
  print(f'resumed at {step}, saved {step + steps}, count '
        f'{int(jax.device_get(state[1].count))}')


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
