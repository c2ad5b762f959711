"""Per-layer cluster sizes and scales of an SGG state, for logging."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from sgg_optax._src import config
from sgg_optax._src.state import SGGState


class ClusterSummary(NamedTuple):
  """Host-side snapshot of one :class:`SGGState` (see :func:`cluster_summary`).

  One row per grouped layer (a stacked parameter gives one row per slice),
  ``K`` columns. :meth:`scalars` flattens it for metric loggers.

  Attributes:
    names: one name per grouped layer (row).
    count: steps taken.
    scales: ``(G, K)`` scaling factors.
    fractions: ``(G, K)`` share of each layer's elements per cluster at the
      last refresh (exact for layers of at most ``sample_size`` elements,
      estimated on the refresh sample above).
    centres: ``(G, K)`` K-means centres.
    cluster_stats: ``(G, K)`` the rule's per-cluster statistic.
    global_stat: the model-wide deviation at the last refresh.
    refreshes: ``(G,)`` refreshes that updated each layer.
  """
  names: tuple[str, ...]
  count: int  # type: ignore[assignment]  # shadows tuple.count
  scales: np.ndarray
  fractions: np.ndarray
  centres: np.ndarray
  cluster_stats: np.ndarray
  global_stat: float
  refreshes: np.ndarray

  def scalars(self, prefix: str = 'sgg') -> dict[str, float]:
    """Flat ``{'prefix/layer/scale_k': value}`` dict for metric loggers."""
    out = {f'{prefix}/global_stat': self.global_stat}
    for g, name in enumerate(self.names):
      for k in range(self.scales.shape[1]):
        out[f'{prefix}/{name}/scale_{k}'] = float(self.scales[g, k])
        out[f'{prefix}/{name}/fraction_{k}'] = float(self.fractions[g, k])
    return out


def _path_name(path: Sequence[Any]) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def group_names(params: optax.Params, *, mask: Any = None,
                stacked_layers: Any = None) -> list[str]:
  """Names of the layers (rows of :func:`cluster_summary`), in order.

  Pass the same ``mask`` and ``stacked_layers`` as to :func:`sgg`. Stacked
  parameters give one name per slice, ``'path[i]'``.

  Args:
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
    mask: ``sgg``'s ``mask``.
    stacked_layers: ``sgg``'s ``stacked_layers``.

  Returns:
    ``G`` names.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> params = {'b': jnp.zeros(3), 'w': jnp.ones((4, 3)),
    ...           'blocks': jnp.ones((2, 4, 4))}
    >>> print(sgg_optax.group_names(params, stacked_layers={
    ...     'b': False, 'w': False, 'blocks': True}))
    ['blocks[0]', 'blocks[1]', 'w']

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  layouts = config.layer_layouts(params, mask=mask,
                                    stacked_layers=stacked_layers)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  names = []
  for path, lay in zip(paths, layouts):
    if lay is None:
      continue
    name = _path_name(path)
    names.extend([f'{name}[{i}]' for i in range(lay.rows)] if lay.stacked
                 else [name])
  return names


def _unwrap(x: Any) -> Any:
  """The array inside a Flax NNX variable (``nnx.Optimizer`` state)."""
  return x.get_value() if hasattr(x, 'get_value') else x


def find_sgg_states(opt_state: Any) -> list[SGGState]:
  """All :class:`SGGState` nested in an optimizer state, in tree order.

  Args:
    opt_state: any optimizer state (an :func:`optax.chain`'s tuple, an
      ``nnx.Optimizer``'s ``opt_state``, a tree of partition specs shaped
      like a state, ...).

  Returns:
    The :class:`SGGState` nodes, outermost first.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> states = sgg_optax.find_sgg_states(tx.init({'w': jnp.ones((4, 3))}))
    >>> print(len(states), int(states[0].count))
    1 0

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  found = []
  def visit(x):
    if isinstance(x, SGGState):
      found.append(x)
      return True
    return False
  jax.tree_util.tree_flatten(opt_state, is_leaf=visit)
  return found


def cluster_summary(opt_state: Any, names: Sequence[str] | None = None
                    ) -> ClusterSummary:
  """Cluster sizes and scales of the SGG state inside ``opt_state``.

  Args:
    opt_state: an :class:`SGGState`, or any optimizer state holding exactly
      one (e.g. the state of an :func:`optax.chain`, an
      ``nnx.Optimizer``'s ``opt_state``).
    names: row names, e.g. from :func:`group_names`. By default the rows
      are named after the parameters when the state stores ids and every
      grouped parameter is one layer, or every one stacks layers (a
      slice named ``'path[i]'``); else ``'group_<g>'``.

  Returns:
    A :class:`ClusterSummary` of host NumPy arrays.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> params = {'w': jnp.ones((4, 3))}
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> summary = sgg_optax.cluster_summary(tx.init(params))
    >>> print(summary.names, summary.scales)
    ('w',) [[1. 1. 1.]]

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  states = find_sgg_states(opt_state)
  if len(states) != 1:
    raise ValueError(f'Expected one SGGState in the optimizer state, found '
                     f'{len(states)}; pass that state itself.')
  state = jax.tree.map(_unwrap, states[0],
                       is_leaf=lambda x: hasattr(x, 'get_value'))
  host = lambda x: np.asarray(jax.device_get(x))
  scales = host(state.scales)
  num_groups = scales.shape[0]
  if names is None:
    flat = jax.tree_util.tree_flatten_with_path(
        state.ids, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]
    ids = [(_path_name(p), x.shape) for p, x in flat
           if not isinstance(x, optax.MaskedNode)]
    if len(ids) == num_groups:  # one row per parameter
      names = [path for path, _ in ids]
    elif ids and all(shape for _, shape in ids) and sum(
        shape[0] for _, shape in ids) == num_groups:  # all stacked
      names = [f'{path}[{i}]' for path, shape in ids
               for i in range(shape[0])]
    else:  # no ids, or stacked and plain parameters mixed: group_names
      names = [f'group_{g}' for g in range(num_groups)]
  if len(names) != num_groups:
    raise ValueError(f'Got {len(names)} names for {num_groups} layers.')
  return ClusterSummary(
      tuple(names), int(host(state.count)), scales, host(state.fractions),
      host(state.centres), host(state.cluster_stats),
      float(host(state.global_stat)),
      host(state.refreshes).astype(np.int64))
