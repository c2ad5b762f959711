"""Scaling with Gradient Grouping (SGG) as an optax gradient transformation.

The public constructors: :func:`sgg`, the chain link, and :func:`with_sgg`,
which wraps a base optimizer and clusters its first moment. The state types
are in ``state.py``, the hyperparameters in ``config.py``, the refresh in
``refresh.py`` and the step in ``apply.py``.
"""

import jax
import optax

from sgg_optax._src.apply import (
    apply,
    init_state,
    refresh_arg,
    refresh_due,
    refreshed_state,
)
from sgg_optax._src.config import (
    COMMON_ARGS_DOC,
    MaskOrFn,
    layer_layouts,
    make_config,
)
from sgg_optax._src.state import (
    SGGState,
    SGGTransformation,
    SGGWrapperState,
    one_wrapper_state,
    with_refresh,
)

__all__ = ('MaskOrFn', 'SGGState', 'SGGTransformation', 'SGGWrapperState',
           'layer_layouts', 'refresh_due', 'sgg', 'with_sgg')


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
  cfg = make_config(
      num_clusters, recluster_interval, beta3, mask=mask,
      stacked_layers=stacked_layers, cluster_stat=cluster_stat,
      global_stat=global_stat, scale_rule=scale_rule, clamp=clamp,
      clamp_order=clamp_order, eps=eps, kmeans_iters=kmeans_iters,
      sample_size=sample_size, assignment=assignment,
      cluster_decay=cluster_decay, reference_init=reference_init)

  def init_fn(params):
    return init_state(params, cfg)

  def update_fn(updates, state, params=None, **extra_args):
    del params
    return apply(updates, updates, state, cfg, refresh_arg(extra_args))

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
  cfg = make_config(
      num_clusters, recluster_interval, beta3, mask=mask,
      stacked_layers=stacked_layers, cluster_stat=cluster_stat,
      global_stat=global_stat, scale_rule=scale_rule, clamp=clamp,
      clamp_order=clamp_order, eps=eps, kmeans_iters=kmeans_iters,
      sample_size=sample_size, assignment=assignment,
      cluster_decay=cluster_decay, reference_init=reference_init)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SGGWrapperState(inner.init(params), init_state(params, cfg))

  def update_fn(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(updates, state.inner_state, params,
                                        **extra_args)
    stat = updates if moment is None else _state_field(inner_state, moment)
    updates, sgg_state = apply(updates, stat, state.sgg_state, cfg,
                                refresh_arg(extra_args))
    return updates, SGGWrapperState(inner_state, sgg_state)

  def refresh_one(state: SGGWrapperState) -> SGGWrapperState:
    if moment is None:
      raise ValueError(
          'This SGG clusters the base update (moment=None), which no state '
          'holds: its refresh needs the step. Pass `sgg_refresh=True` to '
          'the update instead.')
    stat = _state_field(state.inner_state, moment)
    return state._replace(
        sgg_state=refreshed_state(stat, state.sgg_state, cfg))

  return with_refresh(
      optax.GradientTransformationExtraArgs(init_fn, update_fn),
      lambda opt_state: one_wrapper_state(opt_state, refresh_one))


sgg.__doc__ = (sgg.__doc__ or '').replace('{args}', COMMON_ARGS_DOC)
with_sgg.__doc__ = (with_sgg.__doc__ or '').replace('{args}',
                                                    COMMON_ARGS_DOC)
