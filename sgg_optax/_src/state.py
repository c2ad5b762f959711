"""SGG's states and the transformation type that carries a refresh."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import optax


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


def with_refresh(tx: optax.GradientTransformation,
                  refresh: Callable[[optax.OptState], optax.OptState]
                  ) -> SGGTransformation:
  out = SGGTransformation(tx.init, tx.update)
  out.refresh = refresh
  return out


def one_wrapper_state(opt_state: optax.OptState,
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
