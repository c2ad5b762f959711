"""Scaling with Gradient Grouping (SGG) as an optax gradient transformation."""

import dataclasses
import operator
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgg_optax._src import kmeans, sampling, scaling

CLUSTER_STATS = ('signed', 'abs')
ASSIGNMENTS = ('frozen', 'dynamic')
REFERENCE_INITS = ('ones', 'first')
MaskOrFn = Any  # bool | pytree of bools | Callable[[params], pytree of bools]


class SGGState(NamedTuple):
  """State of :func:`sgg`.

  Per-parameter state is parameter-shaped (it follows the parameter's
  sharding). Per-layer statistics are a fixed number of small replicated
  arrays, whatever the depth: one row per grouped layer, ``G`` rows in all,
  in tree order (a parameter that stacks ``L`` layers, ``stacked_layers``,
  owns ``L`` consecutive rows). A step passes these few arrays in and out,
  not a handful per parameter; each parameter reads its rows at an offset
  the compiler cannot fold (``sampling.opaque_ints``), so parameters of one
  shape still share one compiled kernel. :func:`cluster_summary` names the
  rows.

  Attributes:
    count: int32 number of updates so far.
    ids: a tree like the parameters: ``uint8`` cluster id of every element of
      a grouped parameter, :class:`optax.MaskedNode` for ungrouped ones (and
      for all of them with ``assignment='dynamic'``, which stores no ids).
    centres: ``(G, K)`` float32 sorted K-means centres of the clustered
      statistic.
    scales: ``(G, K)`` float32 scaling factor of each cluster (1 until the
      first refresh).
    cluster_stats: ``(G, K)`` float32 rule's per-cluster statistic at the
      last refresh: the MDA :math:`D_{l,c}` (``'mda'``) or the EMA of the
      cluster means (``'reference'``).
    fractions: ``(G, K)`` float32 share of the layer's elements in each
      cluster at the last refresh (estimated on the refresh sample).
    refreshes: ``(G,)`` int32 number of refreshes that updated each layer;
      0 means the layer has never been clustered.
    global_stat: float32 model-wide deviation :math:`D` at the last refresh.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> params = {'w': jnp.ones((4, 3)), 'blocks': jnp.ones((2, 8, 8))}
    >>> state = sgg_optax.sgg(stacked_layers={'w': False, 'blocks': True}
    ...                       ).init(params)
    >>> print(state.scales.shape, state.ids['w'].dtype)
    (3, 3) uint8

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  ids: optax.Updates
  centres: jax.Array
  scales: jax.Array
  cluster_stats: jax.Array
  fractions: jax.Array
  refreshes: jax.Array
  global_stat: jax.Array


class SGGWrapperState(NamedTuple):
  """State of :func:`with_sgg`.

  Attributes:
    inner_state: the wrapped optimizer's state.
    sgg_state: SGG's :class:`SGGState`.
  """
  inner_state: optax.OptState
  sgg_state: SGGState


class SGGTransformation(optax.GradientTransformationExtraArgs):
  """An optax transformation with SGG's refresh as a program of its own.

  Returned by :func:`with_sgg` and the aliases: ``init`` and ``update`` are
  those of any :class:`optax.GradientTransformationExtraArgs` (it is one),
  and ``refresh`` refreshes SGG from the momentum in the optimizer state,
  with no gradient, as :func:`with_sgg` describes. Chained with other
  transformations, call the SGG part's ``refresh`` on the whole state.

  Attributes:
    refresh: ``opt_state -> opt_state``, refreshing the one
      :class:`SGGWrapperState` inside ``opt_state`` from the momentum it
      holds.
  """
  refresh: Callable[[optax.OptState], optax.OptState]


def _with_refresh(tx: optax.GradientTransformation,
                  refresh: Callable[[optax.OptState], optax.OptState]
                  ) -> SGGTransformation:
  out = SGGTransformation(tx.init, tx.update)
  out.refresh = refresh
  return out


def _one_wrapper_state(opt_state: optax.OptState,
                       fn: Callable[[SGGWrapperState], SGGWrapperState]
                       ) -> optax.OptState:
  """``opt_state`` with ``fn`` applied to its one :class:`SGGWrapperState`."""
  found = 0

  def visit(node):
    nonlocal found
    if isinstance(node, SGGWrapperState):
      found += 1
      return fn(node)
    return node

  out = jax.tree.map(visit, opt_state,
                     is_leaf=lambda x: isinstance(x, SGGWrapperState))
  if found != 1:
    raise ValueError(
        f'`refresh` needs exactly one SGGWrapperState in the state it is '
        f'given, found {found}: pass the part of the optimizer state that '
        'belongs to this transformation.')
  return out


@dataclasses.dataclass(frozen=True)
class _Config:
  """Validated hyperparameters (numeric ones may be traced)."""
  num_clusters: int
  recluster_interval: Any
  beta3: Any
  mask: MaskOrFn
  stacked_layers: MaskOrFn
  cluster_stat: str
  global_stat: str
  scale_rule: str
  clamp: tuple[Any, Any]
  clamp_before: bool
  eps: Any
  sample_size: int
  assignment: str
  cluster_decay: Any
  reference_init: str


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f'`{name}` must be one of {choices}, got {value!r}.')


def _static_int(name: str, value: Any, low: int, high: int) -> int:
  """``value`` as an int (anything :func:`operator.index` takes)."""
  try:
    if isinstance(value, bool):
      raise TypeError
    value = operator.index(value)
  except TypeError:
    raise ValueError(
        f'`{name}` must be an integer (it fixes shapes or loop counts; with '
        f'optax.inject_hyperparams pass it in static_args), got '
        f'{value!r}.') from None
  if not low <= value <= high:
    raise ValueError(f'`{name}` must be in [{low}, {high}], got {value}.')
  return value


def _concrete(value: Any) -> float | None:
  """``value`` as a float when known at trace time, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def _make_config(num_clusters, recluster_interval, beta3, *, mask,
                 stacked_layers, cluster_stat, global_stat, scale_rule,
                 clamp, clamp_order, eps, kmeans_iters, sample_size,
                 assignment, cluster_decay, reference_init) -> _Config:
  """Checks the arguments of :func:`sgg` and :func:`with_sgg`."""
  num_clusters = _static_int('num_clusters', num_clusters, 1, 255)
  if kmeans_iters is not None:
    _static_int('kmeans_iters', kmeans_iters, 0, 10_000)
    warnings.warn(
        '`kmeans_iters` has no effect: the refresh solves K-means exactly '
        '(it no longer runs Lloyd iterations). It will be removed.',
        DeprecationWarning, stacklevel=3)
  sample_size = _static_int('sample_size', sample_size, 1, 2**24)
  _check_choice('scale_rule', scale_rule, scaling.SCALE_RULES)
  if cluster_stat is None:  # each rule's own source
    cluster_stat = 'signed' if scale_rule == 'mda' else 'abs'
  _check_choice('cluster_stat', cluster_stat, CLUSTER_STATS)
  _check_choice('global_stat', global_stat, scaling.GLOBAL_STATS)
  _check_choice('assignment', assignment, ASSIGNMENTS)
  _check_choice('reference_init', reference_init, REFERENCE_INITS)
  if clamp_order is None:
    clamp_order = 'before' if scale_rule == 'mda' else 'after'
  _check_choice('clamp_order', clamp_order, ('before', 'after'))
  t = _concrete(recluster_interval)
  if t is not None and (t < 1 or t != int(t)):
    raise ValueError(
        f'`recluster_interval` must be an integer >= 1, got '
        f'{recluster_interval!r}.')
  for name, value in (('beta3', beta3), ('cluster_decay', cluster_decay)):
    v = _concrete(value)
    if v is not None and not 0.0 <= v < 1.0:
      raise ValueError(f'`{name}` must be in [0, 1), got {v}.')
  if len(clamp) != 2:
    raise ValueError(f'`clamp` must be a (low, high) pair, got {clamp!r}.')
  lo, hi = (_concrete(c) for c in clamp)
  if lo is not None and hi is not None and not 0.0 < lo <= 1.0 <= hi:
    # The scales start at 1 (the identity) and an EMA step, or a cluster
    # that keeps its scale, can leave them between 1 and a bound.
    raise ValueError(
        f'`clamp` must satisfy 0 < low <= 1 <= high, got {clamp!r}.')
  e = _concrete(eps)
  if e is not None and not e >= 0.0:
    raise ValueError(f'`eps` must be >= 0, got {e}.')
  return _Config(num_clusters, recluster_interval, beta3, mask,
                 stacked_layers, cluster_stat, global_stat, scale_rule,
                 tuple(clamp), clamp_order == 'before', eps, sample_size,
                 assignment, cluster_decay, reference_init)


def _leaf_flags(spec: MaskOrFn, tree: Any, default: Callable[[Any], bool]
                ) -> list[bool]:
  """One bool per leaf of ``tree`` from an optax-style mask argument."""
  if spec is None:
    return [default(leaf) for leaf in jax.tree.leaves(tree)]
  flags = spec(tree) if callable(spec) else spec
  full = jax.tree.map(
      lambda f, sub: jax.tree.map(lambda _: bool(f), sub), flags, tree)
  return jax.tree.leaves(full)


def layer_layouts(tree: Any, *, mask: MaskOrFn = None,
                  stacked_layers: MaskOrFn = None, sample_size: int = 4096
                  ) -> list[sampling.LeafLayout | None]:
  """The layout of each leaf of ``tree`` (None: not grouped by SGG).

  Takes ``mask``, ``stacked_layers`` and ``sample_size`` as :func:`sgg`
  does; the grouped leaves are numbered in tree order.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:  # e.g. optax.tree.map_params' placeholder
    return []
  stacked = _leaf_flags(stacked_layers or None, tree, lambda _: False)
  it = iter(stacked)
  grouped = _leaf_flags(mask, tree, lambda x: x.ndim - next(it) >= 2)
  layouts: list[sampling.LeafLayout | None] = []
  index = offset = 0
  for leaf, group, stack in zip(leaves, grouped, stacked):
    if not group or leaf.size == 0:
      layouts.append(None)
      continue
    if stack and leaf.ndim < 1:
      raise ValueError('`stacked_layers` flags a scalar parameter.')
    layout = sampling.leaf_layout(leaf.shape, stack, sample_size, index,
                                  offset)
    layouts.append(layout)
    index, offset = index + 1, offset + layout.rows
  return layouts


def _plan(tree: Any, cfg: _Config) -> list[sampling.LeafLayout | None]:
  return layer_layouts(tree, mask=cfg.mask, stacked_layers=cfg.stacked_layers,
                       sample_size=cfg.sample_size)


def _init(params: optax.Params, cfg: _Config) -> SGGState:
  """A fresh :class:`SGGState`: ids 0, scales 1 (the identity)."""
  treedef: Any
  leaves, treedef = jax.tree.flatten(params)
  layouts = _plan(params, cfg)
  keep_ids = cfg.assignment == 'frozen'
  ids = treedef.unflatten([
      jnp.zeros_like(p, dtype=jnp.uint8) if lay is not None and keep_ids
      else optax.MaskedNode() for p, lay in zip(leaves, layouts)])
  rows = sum(lay.rows for lay in layouts if lay is not None)
  stat = lambda value: jnp.full((rows, cfg.num_clusters), value, jnp.float32)
  return SGGState(
      count=jnp.zeros([], jnp.int32), ids=ids, centres=stat(0.0),
      scales=stat(1.0), cluster_stats=stat(0.0), fractions=stat(0.0),
      refreshes=jnp.zeros((rows,), jnp.int32),
      global_stat=jnp.zeros([], jnp.float32))


class _Refreshed(NamedTuple):
  """SGG's ``(G, ...)`` per-layer statistics after a (possibly skipped)
  refresh."""
  centres: jax.Array
  scales: jax.Array
  cluster_stats: jax.Array
  fractions: jax.Array
  refreshes: jax.Array
  global_stat: jax.Array


def _refresh(x: jax.Array, lays, state: SGGState, cfg: _Config
             ) -> _Refreshed:
  """K-means and new scales from the ``(G, S)`` sample of the statistic."""
  k, f32 = cfg.num_clusters, lambda v: jnp.asarray(v, jnp.float32)
  centres0, scales0, cstats0, fractions0, refreshes0 = (
      state.centres, state.scales, state.cluster_stats, state.fractions,
      state.refreshes)
  weights = sampling.sample_weights(lays, cfg.sample_size)
  finite = jnp.all(jnp.isfinite(x) | (weights == 0), axis=-1)
  valid = (weights > 0) & finite[:, None]
  x = jnp.where(valid, x, 0.0)
  feat = jnp.abs(x) if cfg.cluster_stat == 'abs' else x
  first = refreshes0 == 0
  # The sample's rows are padded to ``sample_size``; K-means needs only the
  # longest row's entries.
  used = max(lay.count for lay in lays)
  centres = kmeans.kmeans_1d(feat[:, :used], valid[:, :used], k)
  ids = kmeans.assign_rows(feat, centres)
  counts = kmeans.cluster_counts(ids, valid, k)
  fractions = counts / jnp.maximum(jnp.sum(counts, -1, keepdims=True), 1.0)
  common: dict[str, Any] = dict(
      beta3=f32(cfg.beta3), clamp=(f32(cfg.clamp[0]), f32(cfg.clamp[1])),
      clamp_before=cfg.clamp_before, eps=f32(cfg.eps))
  if cfg.scale_rule == 'mda':
    new = scaling.mda_rule(x, valid, weights, ids, scales0, cstats0,
                           global_stat=cfg.global_stat, **common)
    global_ok = jnp.isfinite(new.global_stat) & (new.global_stat > 0)
  else:
    new = scaling.reference_rule(
        x, valid, ids, scales0, cstats0, first,
        cluster_decay=f32(cfg.cluster_decay), ema_init=cfg.reference_init,
        **common)
    global_ok = jnp.bool_(True)
  ok = (finite & jnp.any(valid, -1) & global_ok
        & jnp.all(jnp.isfinite(centres), -1)
        & jnp.all(jnp.isfinite(new.scales), -1))
  pick = lambda a, b: jnp.where(ok[:, None], a, b)
  stacked = (pick(centres, centres0), pick(new.scales, scales0),
             pick(new.cluster_stats, cstats0), pick(fractions, fractions0),
             refreshes0 + ok)
  c, s, cs, fr, rf = _materialised(stacked, jnp.all(refreshes0 >= 0))
  glob = jnp.where(global_ok, new.global_stat, state.global_stat)
  return _Refreshed(c, s, cs, fr, rf, glob.astype(jnp.float32))


def _materialised(tree: Any, true: jax.Array) -> Any:
  """``tree``, computed into buffers before anything reads it.

  Every parameter's scaling reads its rows of the refreshed ``(G, K)``
  statistics. Left to itself, XLA fuses the refresh's tail (medians, clamp,
  EMA) into each of those reads (``optimization_barrier`` does not stop it
  on CPU), so every parameter's kernel would recompute it and differ from
  the others. A ``lax.cond`` on a predicate that is always true but unknown
  to the compiler (``true``) returns its results in buffers. Only refresh
  steps hold it.
  """
  return jax.lax.cond(true, lambda: tree,
                      lambda: jax.tree.map(jnp.zeros_like, tree))


def _replicated(new: _Refreshed) -> _Refreshed:
  """``new``, replicated on the current mesh, as in the state's shardings.

  Under auto axes XLA picks these shardings itself. With layers stacked on a
  sharded axis it sharded the refresh's ``(L, K)`` results like that axis,
  so the state changed sharding after a refresh, or gathered them after the
  ``lax.cond`` on every step. Applied to the refresh's results and to the
  cond's, this keeps them replicated and the gathers inside the refresh.
  Explicit axes type them replicated already.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.explicit_axes:
    return new
  return jax.lax.with_sharding_constraint(new, jax.sharding.PartitionSpec())


def _kept(state: SGGState) -> _Refreshed:
  return _Refreshed(state.centres, state.scales, state.cluster_stats,
                    state.fractions, state.refreshes, state.global_stat)


def _per_layer(a: jax.Array, lay: sampling.LeafLayout, like: jax.Array
               ) -> jax.Array:
  """A per-layer value (shape ``lay.batch``) broadcast against ``like``, a
  parameter-shaped array. Under explicit mesh axes a stacked parameter's
  layer axis may be sharded: the value is then sharded like it (a local
  slice of a replicated array), as explicit sharding requires."""
  a = a.reshape(a.shape + (1,) * (like.ndim - a.ndim))
  if lay.stacked and jax.sharding.get_abstract_mesh().explicit_axes:
    spec = jax.typeof(like).sharding.spec
    a = jax.sharding.reshard(a, jax.sharding.PartitionSpec(
        *spec[:len(lay.batch)]))
  return a


def _leaf_ids(stat: jax.Array, lay: sampling.LeafLayout, centres: jax.Array,
              cfg: _Config) -> jax.Array:
  """Cluster ids of one parameter's statistic (elementwise, fused)."""
  feat = stat.astype(jnp.promote_types(stat.dtype, jnp.float32))
  feat = jnp.abs(feat) if cfg.cluster_stat == 'abs' else feat
  bounds = kmeans.thresholds(centres).astype(feat.dtype)
  return kmeans.assign(feat, [_per_layer(bounds[..., j], lay, stat)
                              for j in range(bounds.shape[-1])])


def _rows(a: jax.Array, lay: sampling.LeafLayout, offset: jax.Array
          ) -> jax.Array:
  """One parameter's rows of a ``(G, ...)`` statistic, shaped
  ``lay.batch + a.shape[1:]``, read at ``offset`` (a buffer, see
  :func:`sampling.opaque_ints`)."""
  rows = jax.lax.dynamic_slice_in_dim(a, offset, lay.rows)
  return rows.reshape(lay.batch + a.shape[1:])


def _reassigned(stats, ids, lays, offsets, new: _Refreshed, state: SGGState,
                cfg: _Config) -> list:
  """Frozen ids: new ones where a layer was re-clustered, else the old."""
  out = []
  for s, old, lay, at in zip(stats, ids, lays, offsets):
    done = _rows(new.refreshes, lay, at) > _rows(state.refreshes, lay, at)
    out.append(jnp.where(_per_layer(done, lay, old),
                         _leaf_ids(s, lay, _rows(new.centres, lay, at), cfg),
                         old))
  return out


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
  """``table[ids]``, sharded like ``ids`` (explicit-axes meshes too)."""
  if jax.sharding.get_abstract_mesh().explicit_axes:
    return table.at[ids].get(out_sharding=jax.typeof(ids).sharding)
  return jnp.take(table, ids)


def _leaf_scaled(u: jax.Array, ids: jax.Array, lay: sampling.LeafLayout,
                 scales: jax.Array) -> jax.Array:
  """``u * S[ids]`` as a chain of selects (fuses into the update)."""
  k = scales.shape[-1]
  if k > kmeans.UNROLL:
    if not lay.stacked:
      return u * _lookup(scales, ids).astype(u.dtype)
    # One gather from the flattened (L*K,) table: layer l's ids offset by lK.
    first = jnp.arange(0, lay.rows * k, k, dtype=jnp.int32).reshape(lay.batch)
    index = _per_layer(first, lay, ids) + ids.astype(jnp.int32)
    return u * _lookup(scales.reshape(-1), index).astype(u.dtype)
  table = [_per_layer(scales[..., j], lay, u) for j in range(k)]
  scale = table[-1]
  for j in range(k - 2, -1, -1):
    scale = jnp.where(ids == j, table[j], scale)
  return u * scale.astype(u.dtype)


def _refreshed_state(stat: optax.Updates, state: SGGState, cfg: _Config
                     ) -> SGGState:
  """``state`` refreshed on ``stat`` as SGG's own schedule refreshes at
  update ``state.count`` (the same sample, K-means, scales and ids), the
  count unchanged: :func:`_apply`'s refresh step for that update, whose
  scaled update is dropped (under ``jax.jit``, never computed)."""
  _, new = _apply(stat, stat, state._replace(count=state.count - 1), cfg,
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
  count = _static_int('count', count, 0, 2**62)
  interval = _static_int('recluster_interval', recluster_interval, 1, 2**62)
  return (count + 1) % interval == 0


def _refresh_arg(extra_args: dict[str, Any]) -> bool | None:
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


def _apply(updates: optax.Updates, stat: optax.Updates, state: SGGState,
           cfg: _Config, refresh: bool | None = None
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
  layouts = _plan(updates, cfg)
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
    new = _replicated(_refresh(sample, lays, state, cfg))
    return new, (_reassigned(st, ids, lays, offsets, new, state, cfg)
                 if frozen else ids)

  keep = lambda st, ids: (_kept(state), ids)
  operands = stat_g, [old_ids[i] for i in group] if frozen else []
  if refresh is None:
    new, ids_g = jax.lax.cond(count % cfg.recluster_interval == 0,
                              refresh_fn, keep, *operands)
  else:
    new, ids_g = (refresh_fn if refresh else keep)(*operands)
  new = _replicated(new)
  if not frozen:  # dynamic: assign from this step's statistic, store none
    ids_g = [_leaf_ids(s, lay, _rows(new.centres, lay, at), cfg)
             for s, lay, at in zip(stat_g, lays, offsets)]
  out, new_ids = list(leaves), list(old_ids)
  for i, lay, ids, at in zip(group, lays, ids_g, offsets):
    if frozen:
      new_ids[i] = ids
    out[i] = _leaf_scaled(leaves[i], ids, lay, _rows(new.scales, lay, at))
  return treedef.unflatten(out), SGGState(
      count, treedef.unflatten(new_ids), new.centres, new.scales,
      new.cluster_stats, new.fractions, new.refreshes, new.global_stat)


def _state_field(state: optax.OptState, name: str) -> optax.Updates:
  """The one field ``name`` of the NamedTuple states nested in ``state``.

  Only state fields match, never dictionary keys: a parameter called
  ``'mu'`` inside the moments does not.
  """
  found = []

  def visit(node):
    if isinstance(node, tuple) and name in getattr(node, '_fields', ()):
      found.append(getattr(node, name))
      return True
    return False

  jax.tree_util.tree_flatten(state, is_leaf=visit)
  if len(found) != 1:
    raise ValueError(
        f'The wrapped state has {len(found)} fields named {name!r}; pass '
        '`moment=` naming its first moment (a state field), or moment=None.')
  return found[0]


_COMMON_ARGS_DOC = r"""
    num_clusters: ``K``, clusters per layer (static; 1 to 255). The paper
      uses 3 by default and finds 2 best for C4 pre-training.
    recluster_interval: ``T``, steps between refreshes; the first refresh is
      at step ``T`` (before it SGG is the identity).
    beta3: decay of the scale EMA, applied once per refresh.
    mask: which parameters are grouped and scaled, as in
      :func:`optax.add_decayed_weights`: a tree of bools (or a prefix of the
      parameters' tree) or a callable on the parameters returning one. The
      default groups leaves with at least 2 (per-layer) dimensions, so norms
      and biases pass through untouched and carry no per-element state.
    stacked_layers: which parameters stack layers along their leading axis
      (scanned models), in the same forms as ``mask``; each slice then gets
      its own clusters and scales. Default: none.
    cluster_stat: cluster the signed statistic (``'signed'``, the paper's
      Eq. 5) or its magnitude (``'abs'``, the reference code); by default
      the rule's own source: ``'signed'`` for ``'mda'``, ``'abs'`` for
      ``'reference'``.
    global_stat: the model-wide deviation of the MDA rule: ``'layer_mean'``
      (median of every element's deviation from its own layer's mean; the
      most literal reading), ``'global_mean'`` (deviation from the model-wide
      mean) or ``'cluster_mdas'`` (median of the per-cluster MDAs).
    scale_rule: ``'mda'`` (the paper) or ``'reference'`` (the public code:
      layer mean of ``|m|`` over an EMA of cluster means).
    clamp: ``(low, high)`` bounds of the scaling factors, with
      ``low <= 1 <= high`` (the factors start at 1).
    clamp_order: ``'before'`` the EMA (clamp the raw ratio, the paper's text)
      or ``'after'`` (clamp the scale, the reference code); by default the
      rule's own source.
    eps: added to the cluster statistic in the ratio's denominator.
    kmeans_iters: deprecated and ignored: the refresh finds the optimal
      partition of each layer's sample (``sgg_optax/_src/kmeans.py``), not
      Lloyd's local one.
    sample_size: values per layer read by the refresh (static): layers up to
      this size are clustered exactly, larger ones on a stratified random
      sample redrawn at every refresh (see ``sgg_optax/_src/sampling.py``).
    assignment: ``'frozen'`` stores a ``uint8`` id per element, assigned at
      the refresh and kept until the next one (the paper); ``'dynamic'``
      stores no ids and assigns each element every step from its current
      statistic and the refreshed centres (no per-element state).
    cluster_decay: ``'reference'`` rule only: decay of the cluster-mean EMA.
    reference_init: ``'reference'`` rule only: start the cluster-mean EMA at
      ``'ones'`` (the public code) or at the ``'first'`` observed means."""


def sgg(
    num_clusters: int = 3,
    recluster_interval: int | jax.Array = 500,
    beta3: float | jax.Array = 0.99,
    *,
    mask: MaskOrFn = None,
    stacked_layers: MaskOrFn = None,
    cluster_stat: str | None = None,
    global_stat: str = 'layer_mean',
    scale_rule: str = 'mda',
    clamp: tuple[float, float] = (0.1, 10.0),
    clamp_order: str | None = None,
    eps: float | jax.Array = 1e-8,
    kmeans_iters: int | None = None,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float | jax.Array = 0.95,
    reference_init: str = 'ones',
) -> optax.GradientTransformationExtraArgs:
  r"""Scaling with Gradient Grouping, as a link of an :func:`optax.chain`.

  Every ``T`` steps each layer's statistic is clustered into ``K`` groups by
  1-D K-means, and each group gets a scaling factor from its median deviation
  to the layer average (MDA) compared with the model-wide one:

  .. math::
    D_{l,c} = \operatorname*{median}_{i \in c} |m_i - \bar m_l|, \qquad
    S_{l,c} \leftarrow \beta_3 S_{l,c} + (1 - \beta_3)\,
      \mathrm{clip}\Big(\frac{D}{D_{l,c} + \epsilon}, 0.1, 10\Big).

  Every step multiplies each element's update by its group's factor,
  :math:`u_i \leftarrow S_{l, c(i)}\, u_i`. Placed after the base
  optimizer's preconditioner and before the learning rate, this scales the
  adaptive learning rate group-wise, as in the paper. In a chain the link
  sees only the incoming update, so here the statistic :math:`m` is that
  update (any base optimizer works); :func:`with_sgg` clusters the base
  optimizer's first moment instead, as the paper does.

  Before the first refresh every factor is 1 and the chain equals the base
  optimizer exactly. The refresh runs on device under ``lax.cond`` on a
  random stratified sample of each layer, redrawn at every refresh (exact for
  layers of at most ``sample_size`` elements), so it needs no host round trip
  and never gathers a parameter. Between refreshes the cost is one select per
  element, reading its ``uint8`` id. The refresh takes the update as an
  operand, so XLA writes the update to memory on every step (one read and
  one write of an update-sized buffer); :func:`with_sgg`, which clusters the
  base optimizer's momentum, avoids that. On CPU that buffer is a temporary
  whose pages the host allocator maps afresh at every step, which costs
  more than the copy; ``docs/performance.md`` measures it, with an
  allocator setting that avoids it. If a refresh yields non-finite
  statistics for a layer (NaN or Inf updates), that layer keeps its previous
  centres, ids and scales.

  **The loop may decide when to refresh.** ``update`` takes an optional
  extra argument ``sgg_refresh`` (optax passes extra arguments through
  :func:`optax.chain`, :func:`optax.inject_hyperparams`,
  :class:`optax.MultiSteps` and the other combinators). ``None``, the
  default, keeps the on-device schedule above. A Python bool, static under
  :func:`jax.jit`, says whether this update refreshes: the step then holds
  no ``lax.cond``, and a plain step is the select chain alone, fused into
  the base update (no update-sized buffer for the chain link; on a GPU, no
  conditional, whose predicate XLA copies to the host at every step). The
  loop compiles two steps and picks one with :func:`refresh_due`, which
  gives the same schedule; the results are those of the default.

  Args:{args}

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`SGGState`.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> params = {'w': jnp.ones((4, 3)), 'b': jnp.zeros(3)}
    >>> tx = optax.chain(optax.scale_by_adam(),
    ...                  sgg_optax.sgg(recluster_interval=2),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.arange(12.0).reshape(4, 3), 'b': jnp.ones(3)}
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    >>> print(state[1].scales, state[1].ids['w'].dtype)
    [[0.991 1.    1.   ]] uint8

    The same two steps with the refresh decided by the loop:

    >>> import functools, jax
    >>> @functools.partial(jax.jit, static_argnames='refresh')
    ... def step(params, state, grads, refresh):
    ...   updates, state = tx.update(grads, state, params, sgg_refresh=refresh)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for i in range(2):
    ...   _, state = step(params, state, grads, sgg_optax.refresh_due(i, 2))
    >>> print(state[1].scales)
    [[0.991 1.    1.   ]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  cfg = _make_config(
      num_clusters, recluster_interval, beta3, mask=mask,
      stacked_layers=stacked_layers, cluster_stat=cluster_stat,
      global_stat=global_stat, scale_rule=scale_rule, clamp=clamp,
      clamp_order=clamp_order, eps=eps, kmeans_iters=kmeans_iters,
      sample_size=sample_size, assignment=assignment,
      cluster_decay=cluster_decay, reference_init=reference_init)

  def init_fn(params):
    return _init(params, cfg)

  def update_fn(updates, state, params=None, **extra_args):
    del params
    return _apply(updates, updates, state, cfg, _refresh_arg(extra_args))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_sgg(
    inner: optax.GradientTransformation,
    num_clusters: int = 3,
    recluster_interval: int | jax.Array = 500,
    beta3: float | jax.Array = 0.99,
    *,
    moment: str | None = 'mu',
    mask: MaskOrFn = None,
    stacked_layers: MaskOrFn = None,
    cluster_stat: str | None = None,
    global_stat: str = 'layer_mean',
    scale_rule: str = 'mda',
    clamp: tuple[float, float] = (0.1, 10.0),
    clamp_order: str | None = None,
    eps: float | jax.Array = 1e-8,
    kmeans_iters: int | None = None,
    sample_size: int = 4096,
    assignment: str = 'frozen',
    cluster_decay: float | jax.Array = 0.95,
    reference_init: str = 'ones',
) -> SGGTransformation:
  r"""SGG around a base transformation, clustering its first moment.

  The paper-faithful form of :func:`sgg`: the statistic that is clustered and
  measured is the base optimizer's momentum :math:`m` after this step's
  update (Algorithm 1 of the paper), read from the wrapped state by field
  name, and the base update is scaled by cluster as in :func:`sgg`.

  The momentum is a buffer of the state, so the whole refresh (sample,
  K-means, id re-assignment) sits inside the ``lax.cond``: a step that does
  not refresh does no refresh work and, sharded, no extra communication.
  ``moment=None`` clusters the base update instead, like :func:`sgg`.
  ``update`` takes the extra argument ``sgg_refresh`` as :func:`sgg` does
  (and passes it on to ``inner``).

  **A refresh without a train step.** The momentum is in the state, so the
  refresh needs no gradient: ``tx.refresh(opt_state)`` refreshes the
  :class:`SGGWrapperState` in ``opt_state`` (a whole chain's state is fine)
  as SGG's own schedule does at update ``opt_state``'s count: the same
  computation on the same momentum (the same sample, K-means, scales and
  ids), the count unchanged. A loop that
  passes ``sgg_refresh=False`` to every update and calls ``refresh`` after
  each update that :func:`refresh_due` names compiles its train step once,
  with no conditional and no refresh, and the refresh as a small program on
  the optimizer state alone (no forward or backward pass). The one
  difference from the own schedule: update ``T`` itself was scaled by the
  previous factors (the own schedule scales it by the new ones), so each
  refresh acts one update later.

  Args:
    inner: the base transformation, e.g. :func:`optax.scale_by_adam`; its
      state must hold exactly one field named ``moment``.{args}
    moment: name of the state field holding the first moment (``'mu'`` for
      optax's Adam family, ``'trace'`` for :func:`optax.trace`), or None to
      cluster the base update itself: then this is ``chain(inner, sgg())``.
      Only fields of the wrapped NamedTuple states match, never dictionary
      keys, so a parameter named like the field is no problem.

  Returns:
    An :class:`SGGTransformation` (an
    :class:`optax.GradientTransformationExtraArgs` with ``refresh``) whose
    state is an :class:`SGGWrapperState`.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> params = {'w': jnp.ones((4, 3))}
    >>> tx = optax.chain(
    ...     sgg_optax.with_sgg(optax.scale_by_adam(), recluster_interval=1),
    ...     optax.scale_by_learning_rate(0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.arange(12.0).reshape(4, 3)},
    ...                            state, params)
    >>> print(state[0].sgg_state.ids['w'])
    [[0 0 0]
     [0 1 1]
     [1 1 2]
     [2 2 2]]

    The refresh as a program of its own, after the updates it is due at:

    >>> import jax
    >>> sgg_part = sgg_optax.with_sgg(optax.scale_by_adam(),
    ...                               recluster_interval=2)
    >>> tx = optax.chain(sgg_part, optax.scale_by_learning_rate(0.1))
    >>> step = jax.jit(lambda g, s: tx.update(g, s, sgg_refresh=False))
    >>> refresh = jax.jit(sgg_part.refresh)
    >>> state = tx.init(params)
    >>> for i in range(2):
    ...   updates, state = step({'w': jnp.arange(12.0).reshape(4, 3)}, state)
    ...   if sgg_optax.refresh_due(i, 2):
    ...     state = refresh(state)
    >>> print(sgg_optax.cluster_summary(state).refreshes)
    [1]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  cfg = _make_config(
      num_clusters, recluster_interval, beta3, mask=mask,
      stacked_layers=stacked_layers, cluster_stat=cluster_stat,
      global_stat=global_stat, scale_rule=scale_rule, clamp=clamp,
      clamp_order=clamp_order, eps=eps, kmeans_iters=kmeans_iters,
      sample_size=sample_size, assignment=assignment,
      cluster_decay=cluster_decay, reference_init=reference_init)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SGGWrapperState(inner.init(params), _init(params, cfg))

  def update_fn(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(updates, state.inner_state, params,
                                        **extra_args)
    stat = updates if moment is None else _state_field(inner_state, moment)
    updates, sgg_state = _apply(updates, stat, state.sgg_state, cfg,
                                _refresh_arg(extra_args))
    return updates, SGGWrapperState(inner_state, sgg_state)

  def refresh_one(state: SGGWrapperState) -> SGGWrapperState:
    if moment is None:
      raise ValueError(
          'This SGG clusters the base update (moment=None), which no state '
          'holds: its refresh needs the step. Pass `sgg_refresh=True` to '
          'the update instead.')
    stat = _state_field(state.inner_state, moment)
    return state._replace(
        sgg_state=_refreshed_state(stat, state.sgg_state, cfg))

  return _with_refresh(
      optax.GradientTransformationExtraArgs(init_fn, update_fn),
      lambda opt_state: _one_wrapper_state(opt_state, refresh_one))


sgg.__doc__ = (sgg.__doc__ or '').replace('{args}', _COMMON_ARGS_DOC)
with_sgg.__doc__ = (with_sgg.__doc__ or '').replace('{args}',
                                                    _COMMON_ARGS_DOC)
