"""Reading optimizer states saved by earlier versions of sgg_optax."""

from typing import Any

import numpy as np

from sgg_optax._src.state import SGGState

# SGGState fields that 0.1.x kept as one small array per grouped parameter
# (a tuple; a list once restored without a target) and 0.2 keeps as one
# (G, K) or (G,) array.
_PER_LAYER = ('centres', 'scales', 'cluster_stats', 'fractions', 'refreshes')


class StateMismatchError(ValueError):
  """A saved state that does not fit the target, even after upgrading."""


def _fail(path: str, why: str) -> StateMismatchError:
  return StateMismatchError(
      f'The saved state does not fit the target at {path or "the root"}: '
      f'{why}. Build the target with the same optimizer and parameters as '
      'the run that saved it (tx.init(params), or jax.eval_shape of it).')


def _array(raw: Any, path: str) -> Any:
  if raw is None or not hasattr(raw, 'shape'):
    raise _fail(path, f'expected an array, found {type(raw).__name__}')
  return raw


def _leaf(raw: Any, want: Any, path: str) -> Any:
  raw = _array(raw, path)
  if (tuple(raw.shape), np.dtype(raw.dtype)) != (tuple(want.shape),
                                                 np.dtype(want.dtype)):
    raise _fail(path, f'saved {raw.dtype}{list(raw.shape)}, target '
                f'{want.dtype}{list(want.shape)}')
  return raw


def _rows(raw: Any, want: Any, path: str) -> Any:
  """A 0.1.x per-layer tuple (one array per parameter: ``tail`` or
  ``(L,) + tail``) as 0.2's rows; a 0.2 array as it is."""
  if isinstance(raw, (list, tuple)):
    tail = tuple(want.shape[1:])
    parts = []
    for i, part in enumerate(raw):
      part = np.asarray(_array(part, f'{path}[{i}]'))
      if part.shape != tail and part.shape[1:] != tail:
        raise _fail(f'{path}[{i}]', f'saved {list(part.shape)}, a layer '
                    f'has {list(tail)}')
      parts.append(part.reshape((-1,) + tail))
    raw = (np.concatenate(parts) if parts
           else np.zeros((0,) + tail, want.dtype))
  return _leaf(raw, want, path)


def _walk(raw: Any, target: Any, path: str) -> Any:
  if target is None or (isinstance(target, tuple) and not target):
    return target  # MaskedNode, EmptyState, None: restored as None or ()
  if hasattr(target, '_fields'):  # a NamedTuple: restored as a dict
    fields = raw._asdict() if hasattr(raw, '_asdict') else raw
    if not isinstance(fields, dict) or set(fields) != set(target._fields):
      raise _fail(path, f'expected the fields of {type(target).__name__}')
    sgg = isinstance(target, SGGState)
    return type(target)(**{
        name: (_rows if sgg and name in _PER_LAYER else _walk)(
            fields[name], getattr(target, name), f'{path}.{name}')
        for name in target._fields})
  if isinstance(target, (list, tuple)):
    if not isinstance(raw, (list, tuple)) or len(raw) != len(target):
      raise _fail(path, f'expected a sequence of {len(target)}')
    return type(target)(_walk(r, t, f'{path}[{i}]')
                        for i, (r, t) in enumerate(zip(raw, target)))
  if isinstance(target, dict):
    if not isinstance(raw, dict) or set(raw) != set(target):
      raise _fail(path, f'expected the keys {sorted(target)}')
    return {k: _walk(raw[k], target[k], f'{path}.{k}') for k in target}
  return _leaf(raw, target, path)


def upgrade_state(saved: Any, target: Any) -> Any:
  r"""A saved optimizer state in the structure of ``target``, upgraded.

  sgg_optax 0.1.x kept each per-layer statistic of :class:`SGGState`
  (``centres``, ``scales``, ``cluster_stats``, ``fractions``,
  ``refreshes``) as a tuple of one small array per grouped parameter; 0.2
  keeps each as one array with a row per grouped layer, in the same order.
  Restoring a 0.1.x checkpoint onto a 0.2 target therefore fails. Restore
  it *without* a target instead (Orbax then returns plain dicts and lists,
  ``None`` for placeholders) and pass the result here: the tuples become
  rows, everything else is checked against ``target`` and kept. A state
  saved by 0.2 passes through unchanged. Either all of it fits, or
  :class:`StateMismatchError` says where it does not; nothing is returned
  half converted.

  Args:
    saved: the saved state (or a tree holding it, e.g. ``{'params': ...,
      'opt_state': ...}``), as restored without a target, or in memory.
    target: the same tree built by this version: ``tx.init(params)``, its
      :func:`jax.eval_shape`, or concrete arrays.

  Returns:
    A tree with ``target``'s structure holding the saved values (host
    arrays where rows were joined).

  Raises:
    StateMismatchError: a structure, shape or dtype that does not fit.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgg_optax
    >>> params = {'w': jnp.ones((4, 3)), 'v': jnp.ones((2, 2))}
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> target = jax.eval_shape(tx.init, params)
    >>> # a 0.1.x state of two grouped parameters, as Orbax restores it
    >>> old = [{'count': jnp.int32(0), 'mu': params, 'nu': params}, {
    ...     'count': jnp.int32(0),
    ...     'ids': {k: jnp.zeros(p.shape, jnp.uint8)
    ...             for k, p in params.items()},
    ...     'centres': [jnp.zeros(3), jnp.ones(3)],
    ...     'scales': [jnp.ones(3), 2 * jnp.ones(3)],
    ...     'cluster_stats': [jnp.zeros(3)] * 2,
    ...     'fractions': [jnp.zeros(3)] * 2,
    ...     'refreshes': [jnp.int32(1), jnp.int32(2)],
    ...     'global_stat': jnp.float32(0)}]
    >>> state = sgg_optax.upgrade_state(old, target)
    >>> print(state[1].scales, state[1].refreshes)
    [[1. 1. 1.]
     [2. 2. 2.]] [1 2]
  """
  return _walk(saved, target, '')

