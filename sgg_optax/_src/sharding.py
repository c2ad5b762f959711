"""Partition specs and shardings of optimizer states that hold SGG.

SGG's state is laid out for sharding tools: every per-element array (the
``uint8`` cluster ids) has its parameter's shape and is sharded like it, and
the per-layer statistics are a few small ``(G, K)`` arrays (one row per
grouped layer), replicated.
The helpers here turn the parameters' partition specs into the specs (or
:class:`jax.sharding.NamedSharding` objects) of a whole optimizer state, for
``jax.jit(..., in_shardings=..., out_shardings=...)``, ``jax.device_put`` and
checkpoint restoration. They follow the state's structure wherever SGG sits:
bare, in an :func:`optax.chain`, under :func:`optax.masked`,
:func:`optax.inject_hyperparams`, :class:`optax.MultiSteps`, or in
:func:`~sgg_optax.with_sgg`, and they shard the base optimizer's moments as
well (they are built on :func:`optax.tree_map_params`).

The helpers can also place the ids in another memory space, such as
``'pinned_host'``: the paper keeps the cluster ids on the host, and they are
read only by the elementwise scaling (see :func:`state_shardings` and
:func:`ids_to_device`).
"""

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sgg_optax._src.state import SGGState

InitFn = Callable[[optax.Params], optax.OptState]
SpecLike = PartitionSpec | NamedSharding | None


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _as_spec(spec: Any) -> PartitionSpec:
  """The :class:`PartitionSpec` of one parameter (None: replicated)."""
  if spec is None:
    return PartitionSpec()
  if isinstance(spec, NamedSharding):
    return spec.spec
  if isinstance(spec, PartitionSpec):
    return spec
  raise TypeError(
      'Parameter specs must be jax.sharding.PartitionSpec, NamedSharding or '
      f'None (replicated), got {spec!r}.')


def _init_fn(tx: optax.GradientTransformation | InitFn) -> InitFn:
  return tx.init if hasattr(tx, 'init') else tx


def state_partition_specs(
    tx: optax.GradientTransformation | InitFn,
    params: optax.Params,
    params_specs: optax.Params,
) -> optax.OptState:
  """The :class:`~jax.sharding.PartitionSpec` of every leaf of a state.

  The result has the structure of ``tx.init(params)``:

  * a leaf of a parameter-like tree in the state (SGG's ``ids``, Adam's
    ``mu`` and ``nu``, ...) with its parameter's shape gets its parameter's
    spec;
  * a leaf of such a tree with another shape (Adafactor's factored row and
    column statistics) gets ``P()``, replicated;
  * every other leaf (step counts, SGG's per-layer statistics, injected
    hyperparameters) gets ``P()``, replicated;
  * :class:`optax.MaskedNode` placeholders (ungrouped parameters in SGG's
    ``ids``, masked-out parameters) are kept, so the result maps leaf by
    leaf onto the state with :func:`jax.tree.map`.

  Args:
    tx: the optimizer, or its ``init`` function.
    params: the parameters: arrays or :class:`jax.ShapeDtypeStruct` (only
      shapes and dtypes are read: ``tx.init`` runs under
      :func:`jax.eval_shape`). Flax NNX ``nnx.State`` trees work.
    params_specs: a tree like ``params`` whose leaves are the parameters'
      ``PartitionSpec`` (or ``NamedSharding``, or None for replicated), e.g.
      from ``nnx.get_partition_spec`` or Linen's ``nn.get_partition_spec``.

  Returns:
    A tree like ``tx.init(params)`` of ``PartitionSpec``.

  Raises:
    ValueError: if a parameter's spec has more entries than its rank.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> from jax.sharding import PartitionSpec as P
    >>> params = {'w': jnp.ones((8, 4)), 'b': jnp.zeros(4)}
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> specs = sgg_optax.state_partition_specs(
    ...     tx, params, {'w': P('data'), 'b': P()})
    >>> print(specs[0].mu['w'], specs[1].ids['w'], specs[1].scales)
    P('data',) P('data',) P()
    >>> print(specs[1].ids['b'])
    MaskedNode()

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  init = _init_fn(tx)
  abstract = jax.eval_shape(init, params)
  treedef: Any
  flat_params, treedef = jax.tree_util.tree_flatten_with_path(params)
  flat_specs = treedef.flatten_up_to(params_specs)
  specs: Any = []
  for (path, p), spec in zip(flat_params, flat_specs):
    spec = _as_spec(spec)
    if len(spec) > p.ndim:
      raise ValueError(
          f'The spec {spec} of parameter {jax.tree_util.keystr(path)} has '
          f'more entries than its rank {p.ndim} (shape {p.shape}).')
    specs.append(spec)
  specs = treedef.unflatten(specs)

  def param_like(leaf, param, spec):
    if _is_masked(leaf):
      return leaf
    return spec if leaf.shape == param.shape else PartitionSpec()

  specs = optax.tree_map_params(
      init, param_like, abstract, params, specs,
      transform_non_params=lambda _: PartitionSpec(), is_leaf=_is_masked)
  # A spec may stand for a whole subtree (e.g. a non-parameter tuple): give
  # every leaf of the state its own entry.
  return jax.tree.map(
      lambda spec, sub: jax.tree.map(lambda _: spec, sub, is_leaf=_is_masked),
      specs, abstract, is_leaf=_is_masked)


def _sgg_ids_flags(state: optax.OptState) -> optax.OptState:
  """A tree like ``state``: True on the ids of every :class:`SGGState`."""
  def flag(node):
    if isinstance(node, SGGState):
      return SGGState(*(
          jax.tree.map(lambda _, f=(name == 'ids'): f, getattr(node, name))
          for name in SGGState._fields))
    return False
  return jax.tree.map(flag, state,
                      is_leaf=lambda x: isinstance(x, SGGState))


def state_shardings(
    tx: optax.GradientTransformation | InitFn,
    params: optax.Params,
    params_shardings: optax.Params | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    ids_memory_kind: str | None = None,
) -> optax.OptState:
  """The :class:`~jax.sharding.NamedSharding` of every leaf of a state.

  The specs are those of :func:`state_partition_specs`, on ``mesh``. With
  ``ids_memory_kind='pinned_host'`` the cluster ids of every SGG state live
  in host memory between steps; pass the result as the state's
  ``in_shardings`` and ``out_shardings`` of the jitted step and bring the
  ids to the device inside it with :func:`ids_to_device` (the ids are one
  byte per element, read once per step by the scaling and written back).

  Args:
    tx: the optimizer, or its ``init`` function.
    params: the parameters (arrays or :class:`jax.ShapeDtypeStruct`).
    params_shardings: a tree like ``params`` of ``NamedSharding`` or
      ``PartitionSpec`` (None entries: replicated). By default the
      ``.sharding`` of each parameter (sharded arrays, or shape structs
      carrying a ``NamedSharding``).
    mesh: the mesh of the result; by default the mesh of the
      ``NamedSharding`` parameters, else the mesh set by
      :func:`jax.set_mesh`.
    ids_memory_kind: memory kind of SGG's ids (e.g. ``'pinned_host'``; see
      ``jax.devices()[0].addressable_memories()``); by default the mesh's
      default memory, like every other leaf.

  Returns:
    A tree like ``tx.init(params)`` of ``NamedSharding``
    (:class:`optax.MaskedNode` placeholders kept).

  Raises:
    ValueError: if no mesh is given, found in the shardings or set.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgg_optax
    >>> from jax.sharding import PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ('data',))
    >>> params = {'w': jnp.ones((8, 4))}
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> shardings = sgg_optax.state_shardings(tx, params, {'w': P('data')},
    ...                                       mesh=mesh)
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> print(state[1].ids['w'].sharding.spec)
    P('data',)

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  if params_shardings is None:
    params_shardings = jax.tree.map(lambda p: getattr(p, 'sharding', None),
                                    params)
  if mesh is None:
    meshes = {s.mesh for s in jax.tree.leaves(params_shardings)
              if isinstance(s, NamedSharding)}
    if len(meshes) > 1:
      raise ValueError('The parameters are on several meshes; pass `mesh`.')
    mesh = meshes.pop() if meshes else jax.sharding.get_mesh()  # type: ignore[assignment]
  if mesh is None or mesh.empty:
    raise ValueError(
        'No mesh: pass `mesh`, NamedSharding parameter shardings, or call '
        'under `jax.set_mesh(mesh)`.')
  specs = state_partition_specs(tx, params, params_shardings)
  flags = _sgg_ids_flags(jax.eval_shape(_init_fn(tx), params))
  return jax.tree.map(
      lambda spec, is_id: NamedSharding(
          mesh, spec, memory_kind=ids_memory_kind if is_id else None),
      specs, flags)


def ids_to_device(state: optax.OptState) -> optax.OptState:
  """Moves the cluster ids of every SGG state to device memory.

  Call it inside the jitted step on a state whose ids were placed in host
  memory by :func:`state_shardings` (``ids_memory_kind='pinned_host'``),
  before ``tx.update``: XLA does not mix operands from two memory spaces in
  one elementwise operation, so the ids must be on the device where the
  update reads them. The step's ``out_shardings`` (the same host-memory
  shardings) send the new ids back. Ids already in device memory are left
  as they are, so the same step also serves a state that is not offloaded.

  Args:
    state: an optimizer state holding :class:`~sgg_optax.SGGState` anywhere.

  Returns:
    The same state with every ``ids`` leaf in device memory.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgg_optax
    >>> mesh = jax.make_mesh((1,), ('data',))
    >>> params = {'w': jnp.ones((8, 4))}
    >>> tx = optax.chain(optax.scale_by_adam(), sgg_optax.sgg())
    >>> shardings = sgg_optax.state_shardings(
    ...     tx, params, {'w': None}, mesh=mesh, ids_memory_kind='pinned_host')
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> print(state[1].ids['w'].sharding.memory_kind)
    pinned_host
    >>> @jax.jit
    ... def scaled(state, grads):
    ...   return tx.update(grads, sgg_optax.ids_to_device(state))[0]
    >>> print(scaled(state, params)['w'].shape)
    (8, 4)

  References:
    Li et al., `Taming LLMs by Scaling Learning Rates with Gradient Grouping
    <https://arxiv.org/abs/2506.01049>`_, ACL 2025.
  """
  def visit(node):
    if isinstance(node, SGGState):
      return node._replace(ids=jax.tree.map(
          lambda x: jax.device_put(x, jax.memory.Space.Device), node.ids))
    return node
  return jax.tree.map(visit, state,
                      is_leaf=lambda x: isinstance(x, SGGState))
