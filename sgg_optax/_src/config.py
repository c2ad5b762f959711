"""SGG's hyperparameters: their checks, and which leaves SGG groups."""

import dataclasses
import operator
import warnings
from collections.abc import Callable
from typing import Any

import jax

from sgg_optax._src import sampling, scaling

CLUSTER_STATS = ('signed', 'abs')
ASSIGNMENTS = ('frozen', 'dynamic')
REFERENCE_INITS = ('ones', 'first')
MaskOrFn = Any  # bool | pytree of bools | Callable[[params], pytree of bools]


@dataclasses.dataclass(frozen=True)
class Config:
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


def static_int(name: str, value: Any, low: int, high: int) -> int:
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


def make_config(num_clusters, recluster_interval, beta3, *, mask,
                 stacked_layers, cluster_stat, global_stat, scale_rule,
                 clamp, clamp_order, eps, kmeans_iters, sample_size,
                 assignment, cluster_decay, reference_init) -> Config:
  """Checks the arguments of :func:`sgg` and :func:`with_sgg`."""
  num_clusters = static_int('num_clusters', num_clusters, 1, 255)
  if kmeans_iters is not None:
    static_int('kmeans_iters', kmeans_iters, 0, 10_000)
    warnings.warn(
        '`kmeans_iters` has no effect: the refresh solves K-means exactly '
        '(it no longer runs Lloyd iterations). It will be removed.',
        DeprecationWarning, stacklevel=3)
  sample_size = static_int('sample_size', sample_size, 1, 2**24)
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
  return Config(num_clusters, recluster_interval, beta3, mask,
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


def plan(tree: Any, cfg: Config) -> list[sampling.LeafLayout | None]:
  return layer_layouts(tree, mask=cfg.mask, stacked_layers=cfg.stacked_layers,
                       sample_size=cfg.sample_size)


COMMON_ARGS_DOC = r"""
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
