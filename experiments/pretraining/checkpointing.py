"""Orbax checkpoints of a training run: save, resume, refuse a foreign one.

Each checkpoint step holds three items: ``state`` (every array of the model
and the optimizer, by path; placeholders such as ``optax.MaskedNode`` hold
no data and are left out), ``curves`` (the run's logged curves) and
``meta`` (the configuration fingerprint of the run that wrote it); a run
reading C4-format shards adds ``data``, each process's data position
(grain's handler: one JSON file per process). Resuming
compares the fingerprint first and refuses a directory written by another
configuration (model shape, optimizer, SGG settings, schedule, data, seed),
naming the fields that differ, instead of restoring half of it.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only once every file is written; a process killed during a save
leaves the temporary directory behind, which orbax does not list as a step,
so resuming picks the last complete checkpoint (and the temporary one is
removed on the next start: ``cleanup_tmp_directories``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any

import jax
from flax import nnx

# Fields of TrainConfig that do not change what a run computes: how often it
# evaluates, logs or saves, where it reads data from, and its mesh (a run
# may resume on another mesh). Every other field must match to resume.
OPERATIONAL_FIELDS = frozenset({
  'eval_every', 'eval_windows', 'eval_batch_size', 'log_every', 'diag_every',
  'divergence_factor', 'mesh', 'ckpt_dir', 'ckpt_every', 'data_dir'})


class CheckpointMismatchError(ValueError):
  """A checkpoint directory written by another configuration."""


def fingerprint(cfg: Any) -> dict[str, Any]:
  """The configuration fields a checkpoint must match to be resumed."""
  return {k: v for k, v in dataclasses.asdict(cfg).items()
          if k not in OPERATIONAL_FIELDS}


def _manager(directory: str | pathlib.Path, create: bool) -> Any:
  import orbax.checkpoint as ocp

  return ocp.CheckpointManager(
    pathlib.Path(directory).resolve(),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=2, create=create, cleanup_tmp_directories=create))


def _stored_fingerprint(manager: Any, step: int) -> dict[str, Any] | None:
  import orbax.checkpoint as ocp

  path = pathlib.Path(manager.directory) / str(step) / 'meta'
  if not path.exists():
    return None
  got = manager.restore(step, args=ocp.args.Composite(
    meta=ocp.args.JsonRestore()))
  return dict(got['meta'])


def check_compatible(directory: str | pathlib.Path, cfg: Any) -> int | None:
  """Raises `CheckpointMismatchError` unless ``directory`` can resume ``cfg``.

  Args:
    directory: a checkpoint directory (missing or empty: nothing to resume).
    cfg: the run's TrainConfig.

  Returns:
    The step that would be resumed, or None.
  """
  if not pathlib.Path(directory).is_dir():
    return None
  manager = _manager(directory, create=False)
  step = manager.latest_step()
  if step is None:
    return None
  stored = _stored_fingerprint(manager, step)
  wanted = json.loads(json.dumps(fingerprint(cfg)))
  if stored is None:
    raise CheckpointMismatchError(
      f'checkpoint {directory} (step {step}) has no configuration '
      'fingerprint (written by an older version); use another --ckpt-dir')
  diff = sorted(k for k in stored.keys() | wanted.keys()
                if stored.get(k) != wanted.get(k))
  if diff:
    shown = ', '.join(f'{k}: checkpoint {stored.get(k)!r}, this run '
                      f'{wanted.get(k)!r}' for k in diff[:6])
    raise CheckpointMismatchError(
      f'checkpoint {directory} (step {step}) was written by another '
      f'configuration ({shown}); use another --ckpt-dir or the same '
      'settings')
  return step


def _is_placeholder(value: Any) -> bool:
  """A state entry that holds no data: structure, not something to save.

  ``optax.MaskedNode`` (the entry of a parameter a masked transformation
  skips, e.g. SGG's cluster ids of a norm scale), ``None`` and empty
  containers: pytrees without a leaf. The model rebuilds them itself, so a
  checkpoint neither holds nor needs them.
  """
  return not jax.tree.leaves(value)


def _flat_entries(*objs: Any) -> list[tuple[int, Any, str, Any]]:
  """``(object index, path, key, variable)`` of every data entry.

  Placeholders are left out; any other value that is not a ``jax.Array``
  raises, instead of being silently left out of a checkpoint.
  """
  out = []
  for i, obj in enumerate(objs):
    for path, var in nnx.to_flat_state(nnx.state(obj)):
      value = var.get_value()
      if _is_placeholder(value):
        continue
      key = '/'.join(map(str, (i,) + tuple(path)))
      if not isinstance(value, jax.Array):
        raise TypeError(f'cannot checkpoint {key}: a {type(value).__name__}, '
                        'neither an array nor a placeholder')
      out.append((i, path, key, var))
  return out


def _flat_arrays(*objs: Any) -> dict[str, jax.Array]:
  """Every array of ``objs`` by ``<index>/<path>`` (placeholders left out)."""
  return {key: var.get_value() for _, _, key, var in _flat_entries(*objs)}


def _restore_into(flat: dict[str, jax.Array], *objs: Any) -> None:
  """Writes ``flat`` into ``objs``: every array, or (on a mismatch) none.

  Raises:
    CheckpointMismatchError: ``flat`` lacks one of the arrays of ``objs``
      (placeholders need none), or holds it with another shape or dtype;
      nothing is then written.
  """
  new: list[list[tuple[Any, Any]]] = [[] for _ in objs]
  for i, path, key, var in _flat_entries(*objs):
    if key not in flat:
      raise CheckpointMismatchError(f'checkpoint lacks the array {key}')
    got, want = flat[key], var.get_value()
    if (tuple(got.shape), got.dtype) != (tuple(want.shape), want.dtype):
      raise CheckpointMismatchError(
        f'checkpoint holds {key} as {got.dtype}{list(got.shape)}, this run '
        f'as {want.dtype}{list(want.shape)}')
    new[i].append((path, var.replace(got)))
  for obj, entries in zip(objs, new):  # only once all of them matched
    nnx.update(obj, nnx.from_flat_state(entries))


def _check_stored_keys(manager: Any, step: int, wanted: dict[str, Any]
                       ) -> None:
  """Refuses, before reading any array, a checkpoint that lacks one.

  sgg_optax 0.1.x kept SGG's per-layer statistics as one array per
  parameter (``.../sgg_state/scales/0``, ``.../scales/1``, ...) where 0.2
  keeps one (``.../sgg_state/scales``): such a checkpoint is named as such.
  """
  try:
    stored = set(manager.item_metadata(step)['state'])
  except Exception:  # noqa: BLE001  # no metadata: restore checks it
    return
  missing = sorted(set(wanted) - stored)
  if not missing:
    return
  if any(f'{key}/0' in stored for key in missing):
    raise CheckpointMismatchError(
      f'checkpoint step {step} holds SGG state in the layout of sgg_optax '
      f'0.1.x (e.g. {missing[0]}/0, one array per parameter); this version '
      'keeps one array per statistic. Resume it with sgg_optax 0.1.x, or '
      'start a new --ckpt-dir (library users: restore without a target '
      'and convert with sgg_optax.upgrade_state)')
  raise CheckpointMismatchError(f'checkpoint lacks the array {missing[0]}')


class Checkpointer:
  """Save/resume of the model, optimizer and curves (multi-host safe).

  Attributes:
    data: a grain iterator (the training data's position), saved and
      restored with every checkpoint when set.
  """

  def __init__(self, directory: str, every: int, cfg: Any):
    self.directory = directory
    self.every = every
    self.cfg = cfg
    self.data: Any = None
    check_compatible(directory, cfg)
    self.manager = _manager(directory, create=True)

  def restore(self, model: Any, opt: Any) -> tuple[int, dict[str, Any]] | None:
    """Loads the latest complete step into ``model``/``opt``; prints it."""
    import orbax.checkpoint as ocp

    step = check_compatible(self.directory, self.cfg)
    if step is None:
      return None
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _flat_arrays(model, opt))
    _check_stored_keys(self.manager, step, abstract)
    items = dict(state=ocp.args.StandardRestore(abstract),
                 curves=ocp.args.JsonRestore())
    if self.data is not None:
      import grain

      items['data'] = grain.checkpoint.CheckpointRestore(self.data)
    got = self.manager.restore(step, args=ocp.args.Composite(**items))
    _restore_into(dict(got['state']), model, opt)
    if jax.process_index() == 0:
      print(f'resumed from step {step} (checkpoint {self.directory})',
            file=sys.stderr, flush=True)
    return step, dict(got['curves'])

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, model: Any, opt: Any, curves: dict[str, Any]
           ) -> None:
    """Writes ``step`` (unless it is already the latest) and waits for it."""
    import orbax.checkpoint as ocp

    if self.manager.latest_step() == step:
      return
    meta = json.loads(json.dumps(fingerprint(self.cfg)))
    items = dict(state=ocp.args.StandardSave(_flat_arrays(model, opt)),
                 curves=ocp.args.JsonSave(curves),
                 meta=ocp.args.JsonSave(meta))
    if self.data is not None:
      import grain

      items['data'] = grain.checkpoint.CheckpointSave(self.data)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()
