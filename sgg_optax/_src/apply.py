"""SGG's step: the refresh when due, then each update scaled by cluster."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgg_optax._src import kmeans, sampling
from sgg_optax._src.config import Config, plan, static_int
from sgg_optax._src.refresh import (
    Refreshed,
    kept,
    refreshed,
    replicated,
)
from sgg_optax._src.state import SGGState


def init_state(params: optax.Params, cfg: Config, stat: Any = None
               ) -> SGGState:
  """A fresh :class:`SGGState`: ids 0, scales 1 (the identity).

  With no grouped layer the per-layer statistics are
  :class:`optax.MaskedNode` placeholders, not arrays of zero rows (which
  checkpointers refuse to save). Parameters without leaves (the placeholder
  that :func:`optax.tree_map_params` passes to learn the state's structure)
  get zero-row arrays: a leaf there fits any state's subtree.
  """
  treedef: Any
  leaves, treedef = jax.tree.flatten(params)
  layouts = plan(params, cfg, stat)
  keep_ids = cfg.assignment == 'frozen'
  ids = treedef.unflatten([
      jnp.zeros_like(p, dtype=jnp.uint8) if lay is not None and keep_ids
      else optax.MaskedNode() for p, lay in zip(leaves, layouts)])
  rows = sum(lay.rows for lay in layouts if lay is not None)
  none = optax.MaskedNode()
  arrays = rows or not leaves
  table = lambda value: (
      jnp.full((rows, cfg.num_clusters), value, jnp.float32) if arrays
      else none)
  return SGGState(
      count=jnp.zeros([], jnp.int32), ids=ids, centres=table(0.0),
      scales=table(1.0), cluster_stats=table(0.0), fractions=table(0.0),
      refreshes=jnp.zeros((rows,), jnp.int32) if arrays else none,
      global_stat=jnp.zeros([], jnp.float32))


def per_layer(a: jax.Array, lay: sampling.LeafLayout, like: jax.Array,
              trailing: int = 0) -> jax.Array:
  """A per-layer value (shape ``lay.batch``, then ``trailing`` axes of its
  own) broadcast against ``like``, a parameter-shaped array (with
  ``trailing`` axes added at its end). Under explicit mesh axes a stacked
  parameter's layer axis may be sharded: the value is then sharded like it
  (a local slice of a replicated array), as explicit sharding requires."""
  lead, own = a.shape[:a.ndim - trailing], a.shape[a.ndim - trailing:]
  a = a.reshape(lead + (1,) * (like.ndim - len(lead)) + own)
  if lay.stacked and jax.sharding.get_abstract_mesh().explicit_axes:
    spec = jax.typeof(like).sharding.spec
    a = jax.sharding.reshard(a, jax.sharding.PartitionSpec(
        *spec[:len(lay.batch)]))
  return a


def leaf_ids(stat: jax.Array, lay: sampling.LeafLayout, centres: jax.Array,
              cfg: Config) -> jax.Array:
  """Cluster ids of one parameter's statistic (elementwise, fused)."""
  feat = stat.astype(jnp.promote_types(stat.dtype, jnp.float32))
  feat = jnp.abs(feat) if cfg.cluster_stat == 'abs' else feat
  bounds = kmeans.thresholds(centres).astype(feat.dtype)
  return kmeans.assign(feat, per_layer(bounds, lay, stat, trailing=1))


def rows_of(a: jax.Array, lay: sampling.LeafLayout, offset: jax.Array
          ) -> jax.Array:
  """One parameter's rows of a ``(G, ...)`` statistic, shaped
  ``lay.batch + a.shape[1:]``, read at ``offset`` (a buffer, see
  :func:`sampling.opaque_ints`)."""
  rows = jax.lax.dynamic_slice_in_dim(a, offset, lay.rows)
  return rows.reshape(lay.batch + a.shape[1:])


def reassigned(stats, ids, lays, offsets, new: Refreshed, state: SGGState,
                cfg: Config) -> list:
  """Frozen ids: new ones where a layer was re-clustered, else the old."""
  out = []
  for s, old, lay, at in zip(stats, ids, lays, offsets):
    done = rows_of(new.refreshes, lay, at) > rows_of(state.refreshes, lay, at)
    out.append(jnp.where(per_layer(done, lay, old),
                         leaf_ids(s, lay, rows_of(new.centres, lay, at), cfg),
                         old))
  return out


def lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
  """``table[ids]``, sharded like ``ids`` (explicit-axes meshes too)."""
  if jax.sharding.get_abstract_mesh().explicit_axes:
    return table.at[ids].get(out_sharding=jax.typeof(ids).sharding)
  return jnp.take(table, ids)


def leaf_scaled(u: jax.Array, ids: jax.Array, lay: sampling.LeafLayout,
                 scales: jax.Array) -> jax.Array:
  """``u * S[ids]`` as a chain of selects (fuses into the update)."""
  k = scales.shape[-1]
  if k > kmeans.UNROLL:
    if not lay.stacked:
      return u * lookup(scales, ids).astype(u.dtype)
    # One gather from the flattened (L*K,) table: layer l's ids offset by lK.
    first = jnp.arange(0, lay.rows * k, k, dtype=jnp.int32).reshape(lay.batch)
    index = per_layer(first, lay, ids) + ids.astype(jnp.int32)
    return u * lookup(scales.reshape(-1), index).astype(u.dtype)
  table = [per_layer(scales[..., j], lay, u) for j in range(k)]
  scale = table[-1]
  for j in range(k - 2, -1, -1):
    scale = jnp.where(ids == j, table[j], scale)
  return u * scale.astype(u.dtype)


def refreshed_state(stat: optax.Updates, state: SGGState, cfg: Config
                     ) -> SGGState:
  """``state`` refreshed on ``stat`` as SGG's own schedule refreshes at
  update ``state.count`` (the same sample, K-means, scales and ids), the
  count unchanged: :func:`apply`'s refresh step for that update, whose
  scaled update is dropped (under ``jax.jit``, never computed)."""
  _, new = apply(stat, stat, state._replace(count=state.count - 1), cfg,
                  refresh=True)
  return new


def refresh_due(count: int, recluster_interval: int) -> bool:
  """Whether SGG's own schedule refreshes at the update after ``count``.

  The host-side twin of the test that :func:`sgg` makes on device, for loops
  that pass ``sgg_refresh`` to ``update`` (see :func:`sgg`).

  Args:
    count: the number of updates applied so far (a Python or NumPy int: the
      loop's 0-based step index, the argument optax schedules take).
    recluster_interval: ``T``, as given to :func:`sgg`.

  Returns:
    True when the next update is a refresh step (``count + 1`` a multiple of
    ``T``).

  Example:
    >>> import sgg_optax
    >>> [i for i in range(10) if sgg_optax.refresh_due(i, 4)]
    [3, 7]
  """
  count = static_int('count', count, 0, 2**62)
  interval = static_int('recluster_interval', recluster_interval, 1, 2**62)
  return (count + 1) % interval == 0


def refresh_arg(extra_args: dict[str, Any]) -> bool | None:
  """The ``sgg_refresh`` extra argument: None, or a bool known on the host."""
  value = extra_args.get('sgg_refresh')
  if value is None or isinstance(value, bool):
    return value
  if isinstance(value, np.bool_):
    return bool(value)
  raise ValueError(
      '`sgg_refresh` must be None or a Python bool known when the step is '
      'traced (make it a static argument of jax.jit, e.g. '
      f'`static_argnames=...`), got {value!r}.')


def apply(updates: optax.Updates, stat: optax.Updates, state: SGGState,
           cfg: Config, refresh: bool | None = None
           ) -> tuple[optax.Updates, SGGState]:
  """SGG's update: refresh every ``T`` steps, then scale by cluster.

  With ``refresh=None`` the refresh is a ``lax.cond`` on the count that
  takes the statistic and the ids, and draws the sample, clusters and
  re-assigns the ids inside, so a step that does not refresh does no refresh
  work and, sharded, sends nothing. Between refreshes a step reads one
  ``uint8`` id per element in the select chain that scales the update.

  The statistic is a cond operand, so XLA keeps it in memory: free for the
  momentum (a state buffer), one update-sized buffer for the chain link.
  With ``refresh`` a bool the caller has decided: the step holds no
  conditional, a plain step is only the select chain (it fuses into the
  base update) and a refresh step runs the refresh inline.
  """
  count = optax.safe_increment(state.count)
  layouts = plan(updates, cfg, stat)
  if not any(lay is not None for lay in layouts):
    return updates, state._replace(count=count)
  treedef: Any
  leaves, treedef = jax.tree.flatten(updates)
  stats = treedef.flatten_up_to(stat)
  old_ids = treedef.flatten_up_to(state.ids)
  group = [i for i, lay in enumerate(layouts) if lay is not None]
  lays = [lay for lay in layouts if lay is not None]
  frozen = cfg.assignment == 'frozen'
  stat_g = [stats[i] for i in group]
  # Each parameter's first row, in a buffer: parameters of one shape then
  # share one compiled kernel.
  offsets = sampling.opaque_ints([lay.offset for lay in lays], count)

  def refresh_fn(st, ids):
    sample = sampling.stack_samples(st, lays, cfg.sample_size, count)
    new = replicated(refreshed(sample, lays, state, cfg))
    return new, (reassigned(st, ids, lays, offsets, new, state, cfg)
                 if frozen else ids)

  keep = lambda st, ids: (kept(state), ids)
  operands = stat_g, [old_ids[i] for i in group] if frozen else []
  if refresh is None:
    new, ids_g = jax.lax.cond(count % cfg.recluster_interval == 0,
                              refresh_fn, keep, *operands)
  else:
    new, ids_g = (refresh_fn if refresh else keep)(*operands)
  new = replicated(new)
  if not frozen:  # dynamic: assign from this step's statistic, store none
    ids_g = [leaf_ids(s, lay, rows_of(new.centres, lay, at), cfg)
             for s, lay, at in zip(stat_g, lays, offsets)]
  out, new_ids = list(leaves), list(old_ids)
  for i, lay, ids, at in zip(group, lays, ids_g, offsets):
    if frozen:
      new_ids[i] = ids
    out[i] = leaf_scaled(leaves[i], ids, lay, rows_of(new.scales, lay, at))
  return treedef.unflatten(out), SGGState(
      count, treedef.unflatten(new_ids), new.centres, new.scales,
      new.cluster_stats, new.fractions, new.refreshes, new.global_stat)
