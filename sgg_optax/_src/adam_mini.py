"""Adam-mini (Zhang et al., ICLR 2025) as an optax transformation."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgg_optax._src.base_utils import like, one_minus_pow, stat_dtype
from sgg_optax._src.config import MaskOrFn

# What a block is, per role, for kernels laid out (inputs, outputs) as in
# Flax: one value per head (query, key), per output neuron (value, attention
# output, MLP), per token (embedding table rows; the output layer's columns,
# its output neurons), per element (Adam) or for the whole leaf.
ROLES = ('embed', 'output', 'query', 'key', 'value', 'attn_proj', 'mlp',
         'adam', 'whole')
# The package's name lists (case-insensitive, matched in the dotted path),
# in the order they are tried; norms and biases first, so that, e.g., an
# MLP's norm is a norm.
_NAMES = (
    ('adam', ('bias',)),
    ('query', ('q_proj', 'wq', 'query')),
    ('key', ('k_proj', 'wk', 'key')),
    ('value', ('v_proj', 'wv', 'value')),
    ('attn_proj', ('o_proj', 'wo', 'attn.proj')),
    ('mlp', ('feed_forward', 'linear', 'mlp')),
    ('embed', ('embed', 'embd', 'wte')),
    ('output', ('lm_head', 'output', 'final_layer')),
)
BlockFn = Callable[[str, Any], 'str | tuple[int, ...] | None']


class ScaleByAdamMiniState(NamedTuple):
  """State of :func:`scale_by_adam_mini`.

  Attributes:
    count: int32 number of updates so far.
    mu: the first moment, parameter-shaped.
    nu: the second moment, one value per block: the leaf's shape (after
      splitting a 2-D query or key kernel's output axis into heads) with the
      axes inside a block reduced to length 1.
  """
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  nu: optax.Updates


def _path_name(path: tuple[Any, ...]) -> str:
  """A key path as a lower-case dotted name, e.g. ``layers.0.mlp.kernel``."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '.'.join(parts).lower()


def _default_role(name: str) -> str | None:
  """The role the package's name lists give ``name`` (None: no match)."""
  if 'bias' in name:
    return 'adam'
  if 'norm' in name or any(c.startswith('ln') for c in name.split('.')):
    return 'whole'
  for role, names in _NAMES[1:]:
    if any(n in name for n in names):
      return role
  return None


class _Layout(NamedTuple):
  """How a leaf is blocked: viewed as ``view``, one block per index of
  ``kept`` (the other axes are averaged)."""
  view: tuple[int, ...]
  kept: tuple[int, ...]


def _layout(name: str, shape: tuple[int, ...], spec: Any,
            num_heads: int | None, num_kv_heads: int | None) -> _Layout:
  """The blocks of a leaf ``name`` of ``shape`` given its role ``spec``."""
  nd = len(shape)
  where = f'Adam-mini: the leaf {name!r} of shape {shape}'
  if spec is None:
    raise ValueError(
        f'{where} matches none of the known names (biases, norms, query, '
        'key, value, attention output, MLP, embedding, output layer): pass '
        '`block_fn` returning its role, one of '
        f'{ROLES}, or the axes that index its blocks.')
  if isinstance(spec, tuple):
    if not all(isinstance(a, int) and -nd <= a < nd for a in spec):
      raise ValueError(f'{where} got block axes {spec}, not axes of it.')
    return _Layout(shape, tuple(sorted(a % nd for a in spec)))
  if spec not in ROLES:
    raise ValueError(f'{where} got role {spec!r}; roles are {ROLES}.')
  if spec == 'adam':
    return _Layout(shape, tuple(range(nd)))
  if spec == 'whole':
    return _Layout(shape, ())
  if nd < 2:
    raise ValueError(f'{where} is given the role {spec!r}, which needs a '
                     'matrix: give it `whole` or `adam` in `block_fn`.')
  if spec == 'embed':
    return _Layout(shape, (0,))
  if spec in ('query', 'key'):
    heads = num_heads if spec == 'query' else (num_kv_heads or num_heads)
    if heads is None:
      raise ValueError(f'{where} is a {spec}: pass `num_heads`.')
    if nd == 3 and shape[1] == heads:  # (inputs, heads, head_dim)
      return _Layout(shape, (1,))
    if nd == 2 and shape[1] % heads == 0:  # (inputs, heads * head_dim)
      return _Layout((shape[0], heads, shape[1] // heads), (1,))
    raise ValueError(f'{where} is a {spec} but does not split into {heads} '
                     'heads along its output axis.')
  return _Layout(shape, (nd - 1,))  # per output neuron


def _layouts(tree: Any, block_fn: BlockFn | None, num_heads, num_kv_heads
             ) -> list[_Layout]:
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = _path_name(path)
    spec = block_fn(name, x) if block_fn is not None else None
    if spec is None:
      spec = _default_role(name)
    out.append(_layout(name, tuple(x.shape), spec, num_heads, num_kv_heads))
  return out


def _block_mean(x: jax.Array, lay: _Layout) -> jax.Array:
  axes = tuple(a for a in range(len(lay.view)) if a not in lay.kept)
  return jnp.mean(x.reshape(lay.view), axis=axes, keepdims=True)


def scale_by_adam_mini(
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | jax.Array = 1e-8,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    block_fn: BlockFn | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Rescale updates by Adam-mini: one second moment per block.

  Adam with its second moment shared within a block :math:`b` of
  parameters, the mean of the squared gradient over the block:

  .. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
    v_{t,b} = \beta_2 v_{t-1,b} + (1-\beta_2)\,\operatorname{mean}_{i\in b}
      g_i^2, \qquad
    \text{update}_i = \frac{m_{t,i}/(1-\beta_1^t)}{\sqrt{v_{t,b(i)}/
      (1-\beta_2^t)} + \epsilon}.

  The blocks are those of the authors' ``adam-mini`` 1.1.1: one per head
  for the query and key kernels, one per output neuron for the value,
  attention output and MLP kernels, one per token for the embedding and
  output layer, one per element for biases (plain Adam) and one for the
  whole of every other leaf (norms). The update is the package's,
  statement for statement.

  Which leaf is which comes from its path: ``block_fn(name, leaf)`` may
  return a role (one of ``'embed'``, ``'output'``, ``'query'``, ``'key'``,
  ``'value'``, ``'attn_proj'``, ``'mlp'``, ``'adam'``, ``'whole'``), or a
  tuple of the axes that index the blocks, or None for the default: the
  package's name lists matched in the lower-case dotted path (``name``, e.g.
  ``'layers.0.attn.q_proj.kernel'``), biases and then norms first. A leaf
  that nothing places raises a ``ValueError`` (the package would quietly
  give it one value for the whole leaf). Kernels are taken as Flax lays them
  out, ``(inputs, outputs)``: an output neuron is a column, a token a row
  of an embedding table and a column of an output kernel, and a head a
  group of ``head_dim`` consecutive output columns (or index 1 of an
  ``(inputs, heads, head_dim)`` kernel). For PyTorch's ``(outputs,
  inputs)`` layout return the axes, e.g. ``(0,)``.

  Sharding: ``mu`` follows its parameter; ``nu`` is a reduction of it and
  inherits the sharding of the axes it keeps (a head split needs the
  head axis' sharding to divide the heads).

  Args:
    betas: :math:`(\beta_1, \beta_2)`.
    eps: :math:`\epsilon`, outside the square root.
    num_heads: the query heads (static; needed when a leaf is a query or
      key).
    num_kv_heads: the key heads, with grouped-query attention (static;
      default ``num_heads``).
    block_fn: ``(name, leaf) -> role | axes | None``, as above.
    mu_dtype: dtype of the first moment (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`~sgg_optax.bases.ScaleByAdamMiniState`.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> params = {'q_proj': {'kernel': jnp.ones((8, 8))},
    ...           'mlp': {'kernel': jnp.ones((8, 16))},
    ...           'norm': {'scale': jnp.ones(8)}}
    >>> state = sgg_optax.scale_by_adam_mini(num_heads=2).init(params)
    >>> print({k: v[next(iter(v))].shape for k, v in state.nu.items()})
    {'mlp': (1, 16), 'norm': (1,), 'q_proj': (1, 2, 1)}

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  if len(betas) != 2:
    raise ValueError(f'`betas` takes 2 decays, got {betas!r}.')
  for value in betas:
    if isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
      raise ValueError(f'`betas` must lie in [0, 1), got {betas!r}.')
  for name, heads in (('num_heads', num_heads),
                      ('num_kv_heads', num_kv_heads)):
    if heads is not None and (not isinstance(heads, int) or heads < 1):
      raise ValueError(f'`{name}` must be a positive int, got {heads!r}.')
  b1, b2 = betas

  def init_fn(params):
    treedef = jax.tree.structure(params)
    leaves = treedef.flatten_up_to(params)
    lays = _layouts(params, block_fn, num_heads, num_kv_heads)
    mu = [jnp.zeros_like(p, dtype=mu_dtype) for p in leaves]
    nu = [_block_mean(jnp.zeros_like(p, dtype=stat_dtype(p.dtype)), lay)
          for p, lay in zip(leaves, lays)]
    return ScaleByAdamMiniState(jnp.zeros([], jnp.int32),
                                treedef.unflatten(mu), treedef.unflatten(nu))

  def update_fn(updates, state, params=None):
    del params
    treedef = jax.tree.structure(updates)
    lays = _layouts(updates, block_fn, num_heads, num_kv_heads)
    t = optax.safe_increment(state.count)
    bc1, bc2 = one_minus_pow(b1, t), one_minus_pow(b2, t)
    out = []
    for g, m, v, lay in zip(treedef.flatten_up_to(updates),
                            treedef.flatten_up_to(state.mu),
                            treedef.flatten_up_to(state.nu), lays):
      grad = g.astype(v.dtype)
      v_old, v = v, b2 * v + (1 - b2) * _block_mean(jnp.square(grad), lay)
      m32 = b1 * m.astype(v.dtype) + (1 - b1) * grad
      h = jnp.sqrt(v) / jnp.sqrt(bc2) + eps
      u = m32.reshape(lay.view) * ((1 / bc1) / h)
      out.append((u.reshape(g.shape).astype(g.dtype),
                  *like((m32.astype(m.dtype), v), (m, v_old))))
    u, mu, nu = (treedef.unflatten(x) for x in zip(*out))
    return u, ScaleByAdamMiniState(t, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _no_decay(params: Any) -> Any:
  """The package's weight-decay rule: none for norms and biases."""
  def flag(path, _):
    name = _path_name(path)
    return not ('norm' in name or 'ln' in name or 'bias' in name)
  return jax.tree_util.tree_map_with_path(flag, params)


def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    block_fn: BlockFn | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Adam-mini with decoupled weight decay.

  ``chain(scale_by_adam_mini, add_decayed_weights, scale_by_learning_rate)``,
  as ``adam_mini.Adam_mini`` 1.1.1 steps (it decays the parameter before
  adding the update). Its defaults, and its weight-decay rule by default:
  leaves whose path contains ``norm``, ``ln`` or ``bias`` are not decayed.

  Args:
    learning_rate: a scalar or schedule.
    betas: see :func:`scale_by_adam_mini`.
    eps: see :func:`scale_by_adam_mini`.
    weight_decay: decoupled weight decay.
    mask: mask of the weight decay, as in :func:`optax.adamw` (default:
      the package's rule above).
    num_heads: see :func:`scale_by_adam_mini`.
    num_kv_heads: see :func:`scale_by_adam_mini`.
    block_fn: see :func:`scale_by_adam_mini`.
    mu_dtype: see :func:`scale_by_adam_mini`.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.adam_mini(1e-3, block_fn=lambda name, p: 'whole')
    >>> state = opt.init({'w': jnp.ones((4, 4))})
    >>> print(state[0].nu['w'].shape)
    (1, 1)

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  return optax.chain(
      scale_by_adam_mini(betas, eps, num_heads=num_heads,
                         num_kv_heads=num_kv_heads, block_fn=block_fn,
                         mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay,
                                _no_decay if mask is None else mask),
      optax.scale_by_learning_rate(learning_rate))
