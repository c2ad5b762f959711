"""APOLLO (Zhu et al., MLSys 2025) as an optax transformation."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgg_optax._src.base_utils import (
    decay_updated,
    like,
    one_minus_pow,
    stat_dtype,
)
from sgg_optax._src.config import MaskOrFn

PROJS = ('random', 'svd')
SCALE_TYPES = ('channel', 'tensor')
_LIMIT = 1.01  # the norm-growth limiter's gamma
_TINY = 1e-8  # the package's guards in the ratios of norms

# (leaf index, refresh index, gradient) -> projection matrix; tests only.
Projector = Callable[[int, jax.Array, jax.Array], jax.Array]


class ScaleByApolloState(NamedTuple):
  """State of :func:`scale_by_apollo`.

  Attributes:
    count: int32 number of updates so far.
    mu: first moment; for a projected matrix of shape ``(m, n)`` it lives in
      the projected space, ``(m, r)`` if ``m >= n`` and ``(r, n)`` otherwise;
      other leaves keep a parameter-shaped one (Adam).
    nu: second moment, shaped like ``mu``.
    grad_norm: float32 norm of the previous scaled gradient of each
      projected matrix, for the norm-growth limiter
      (:class:`optax.MaskedNode` for other leaves, or without the limiter).
    projection: the SVD projection of each projected matrix, ``(r, n)`` or
      ``(m, r)``, refreshed every ``update_proj_gap`` steps
      (:class:`optax.MaskedNode` with ``proj='random'``, whose matrix is
      regenerated from the seed at every step rather than stored).
  """
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  nu: optax.Updates
  grad_norm: optax.Updates
  projection: optax.Updates


def _flags(spec: MaskOrFn, tree: Any) -> list[bool]:
  """The projected flag of every leaf of ``tree`` (default: matrices)."""
  leaves = jax.tree.leaves(tree)
  if spec is None:
    return [x.ndim == 2 for x in leaves]
  flags = spec(tree) if callable(spec) else spec
  treedef: Any = jax.tree.structure(tree)
  flags = treedef.flatten_up_to(jax.tree.broadcast(flags, tree))
  for x, f in zip(leaves, flags):
    if f and x.ndim != 2:
      raise ValueError(
          f'APOLLO projects matrices only; a leaf of shape {x.shape} is '
          'marked for projection.')
  return [bool(f) for f in flags]


def _right(shape: tuple[int, ...]) -> bool:
  """Whether a matrix is projected on the right (``G P^T``), as 'std'."""
  return shape[0] >= shape[1]


def _rank(shape: tuple[int, ...], rank: int, proj: str) -> int:
  # An SVD has min(m, n) singular vectors; a random matrix any number.
  return min(rank, *shape) if proj == 'svd' else rank


def _proj_shape(shape, rank, proj) -> tuple[int, int]:
  r = _rank(shape, rank, proj)
  return (r, shape[1]) if _right(shape) else (shape[0], r)


def _project(g: jax.Array, p: jax.Array) -> jax.Array:
  return g @ p.T if _right(g.shape) else p.T @ g


def _random_projection(key: jax.Array, index: int, refresh: jax.Array,
                       shape: tuple[int, int], rank: int) -> jax.Array:
  """The Gaussian projection of a leaf and period, with variance ``1/r``."""
  key = jax.random.fold_in(jax.random.fold_in(key, index), refresh)
  return jax.random.normal(key, shape, jnp.float32) / math.sqrt(rank)


def _svd_projection(g: jax.Array, rank: int) -> jax.Array:
  """The top-``rank`` singular vectors of ``g`` on its short side."""
  if jax.sharding.get_abstract_mesh().explicit_axes:
    # The SVD needs the whole matrix: refresh steps gather it.
    g = jax.sharding.reshard(g, jax.sharding.PartitionSpec())
  u, _, vh = jnp.linalg.svd(g, full_matrices=False)
  return vh[:rank] if _right(g.shape) else u[:, :rank]


def _moment_zeros(p: Any, rank: int, proj: str) -> jax.Array:
  """Zeros shaped (and, as in the step, sharded) like a projected gradient."""
  z = jnp.zeros_like(p, dtype=jnp.float32)
  r = _rank(p.shape, rank, proj)
  if _right(p.shape):  # G P^T keeps G's row sharding
    return jnp.sum(z, axis=1, keepdims=True) * jnp.zeros((1, r))
  return jnp.sum(z, axis=0, keepdims=True) * jnp.zeros((r, 1))


def _scale_by_apollo(
    rank: int, update_proj_gap: int, scale: float | jax.Array, proj: str,
    scale_type: str, betas: tuple[float, float], eps: float | jax.Array,
    correct_bias: bool, scale_front: bool, disable_nl: bool,
    projected: MaskOrFn, seed: int, projector: Projector | None,
) -> optax.GradientTransformation:
  """:func:`scale_by_apollo`, with a hook that gives the projections.

  ``projector(leaf_index, refresh_index, grad)`` returns the projection
  matrix of a period (with ``proj='svd'`` it is read at refresh steps and
  stored, as the SVD would be). Tests use it to replay a reference's
  matrices; the public API does not need it.
  """
  if proj not in PROJS:
    raise ValueError(f'`proj` must be one of {PROJS}, got {proj!r}.')
  if scale_type not in SCALE_TYPES:
    raise ValueError(
        f'`scale_type` must be one of {SCALE_TYPES}, got {scale_type!r}.')
  for name, value in (('rank', rank), ('update_proj_gap', update_proj_gap)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(
          f'`{name}` must be a positive Python int (static under '
          f'inject_hyperparams), got {value!r}.')
  b1, b2 = betas
  root_scale = jnp.sqrt(jnp.asarray(scale, jnp.float32))

  def init_fn(params):
    treedef = jax.tree.structure(params)
    leaves = treedef.flatten_up_to(params)
    flags = _flags(projected, params)
    mu, norms, projs = [], [], []
    for p, flag in zip(leaves, flags):
      if flag:
        mu.append(_moment_zeros(p, rank, proj))
        norms.append(optax.MaskedNode() if disable_nl
                     else jnp.zeros([], jnp.float32))
        projs.append(
            jnp.zeros(_proj_shape(p.shape, rank, proj), jnp.float32)
            if proj == 'svd' else optax.MaskedNode())
      else:
        mu.append(jnp.zeros_like(p, dtype=stat_dtype(p.dtype)))
        norms.append(optax.MaskedNode())
        projs.append(optax.MaskedNode())
    # Two trees of distinct buffers (a donated state must not alias).
    nu = [jnp.zeros_like(m) for m in mu]
    return ScaleByApolloState(
        jnp.zeros([], jnp.int32), treedef.unflatten(mu),
        treedef.unflatten(nu), treedef.unflatten(norms),
        treedef.unflatten(projs))

  def adam_leaf(g, m, v, correction):
    m_old, v_old = m, v
    grad = g.astype(m.dtype)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * jnp.square(grad)
    u = correction * m / (jnp.sqrt(v) + eps)
    return u.astype(g.dtype), *like((m, v), (m_old, v_old))

  def apollo_leaf(index, g, m, v, norm, p_old, count, correction):
    m_old, v_old, norm_old = m, v, norm
    grad = g.astype(jnp.float32)
    refresh = count // update_proj_gap
    if proj == 'svd':
      fresh = ((lambda: projector(index, refresh, grad)) if projector
               else (lambda: _svd_projection(grad, _rank(g.shape, rank,
                                                         proj))))
      p = jax.lax.cond(count % update_proj_gap == 0, fresh, lambda: p_old)
      p_new = p
    else:
      p = (projector(index, refresh, grad) if projector else
           _random_projection(jax.random.key(seed), index, refresh,
                              _proj_shape(g.shape, rank, proj), rank))
      p_new = p_old
    r = _project(grad, p)
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * jnp.square(r)
    normed = m / (jnp.sqrt(v) + eps)
    if scale_type == 'channel':  # along the side the projection keeps
      axis = 1 if _right(g.shape) else 0
      factor = (jnp.linalg.norm(normed, axis=axis, keepdims=True)
                / (jnp.linalg.norm(r, axis=axis, keepdims=True) + _TINY))
    else:
      factor = jnp.linalg.norm(normed) / (jnp.linalg.norm(r) + _TINY)
    s = grad * factor
    if scale_front:
      s = s * root_scale
    if not disable_nl:  # Fira's norm-growth limiter (none at the 1st step)
      size = jnp.linalg.norm(s)
      limiter = jnp.where(
          count == 0, 1.0,
          jnp.maximum(size / (norm + _TINY), _LIMIT) / _LIMIT)
      s = s / limiter
      norm = size / limiter
    if not scale_front:
      s = s * root_scale
    return ((correction * s).astype(g.dtype),
            *like((m, v, norm, p_new), (m_old, v_old, norm_old, p_old)))

  def update_fn(updates, state, params=None):
    del params
    treedef = jax.tree.structure(updates)
    count = state.count
    t = optax.safe_increment(count)
    correction = jnp.asarray(1.0, jnp.float32)
    if correct_bias:
      correction = (jnp.sqrt(one_minus_pow(b2, t)) / one_minus_pow(b1, t))
    flat = [treedef.flatten_up_to(x) for x in (
        updates, state.mu, state.nu, state.grad_norm, state.projection)]
    flags = _flags(projected, updates)
    outs = []
    for index, (g, m, v, norm, p, flag) in enumerate(zip(*flat, flags)):
      if flag:
        outs.append(apollo_leaf(index, g, m, v, norm, p, count, correction))
      else:
        outs.append(adam_leaf(g, m, v, correction) + (norm, p))
    u, mu, nu, norms, projs = (treedef.unflatten(x) for x in zip(*outs))
    return u, ScaleByApolloState(t, mu, nu, norms, projs)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_apollo(
    rank: int = 256,
    update_proj_gap: int = 200,
    scale: float | jax.Array = 1.0,
    proj: str = 'random',
    scale_type: str = 'channel',
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | jax.Array = 1e-6,
    *,
    correct_bias: bool = True,
    scale_front: bool = False,
    disable_nl: bool = False,
    projected: MaskOrFn = None,
    seed: int = 0,
) -> optax.GradientTransformation:
  r"""Rescale updates by APOLLO: Adam's step size, estimated in a subspace.

  A matrix gradient :math:`G \in \mathbb R^{m\times n}` is projected to rank
  :math:`r`, :math:`R = G P^\top` with :math:`P \in \mathbb R^{r\times n}`
  if :math:`m \ge n`, else :math:`R = P^\top G` with
  :math:`P \in \mathbb R^{m\times r}`, and Adam's moments live there:

  .. math::
    M_t = \beta_1 M_{t-1} + (1-\beta_1) R, \qquad
    V_t = \beta_2 V_{t-1} + (1-\beta_2) R^2, \qquad
    \tilde R = M_t / (\sqrt{V_t} + \epsilon).

  The raw gradient is scaled by the ratio of norms along the side the
  projection keeps (``'channel'``: per row if :math:`m \ge n`, per column
  otherwise) or of the whole matrices (``'tensor'``),
  :math:`s = \|\tilde R\| / (\|R\| + 10^{-8})`, then limited in its norm
  growth (Fira's limiter, :math:`\gamma = 1.01`) and scaled:

  .. math::
    S_t = s\,G, \qquad
    S_t \leftarrow S_t \big/ \max\!\Big(1, \frac{\|S_t\|}{\gamma\,
    (\|S_{t-1}\| + 10^{-8})}\Big), \qquad
    \text{update} = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
    \sqrt{\text{scale}}\; S_t,

  with no limit at the first step, and :math:`\|S_{t-1}\|` the previous
  *limited* norm. :math:`P` is redrawn every ``update_proj_gap`` steps
  (from step 0); the moments carry over into the new basis. Other leaves
  (biases, norms, and matrices left out by ``projected``) get Adam in the
  package's form, :math:`\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
  m_t/(\sqrt{v_t}+\epsilon)`. APOLLO-Mini is ``rank=1,
  scale_type='tensor'`` (the authors use ``scale=128`` with it).

  This is the update of the authors' ``apollo-torch`` 1.0.3
  (``APOLLOAdamW`` with ``proj_type='std'``), statement for statement. The
  random projection is Gaussian with variance :math:`1/r`, drawn from JAX's
  generator (a function of ``seed``, the leaf's index in the tree and the
  period), so it is regenerated at every step rather than stored; it
  differs from the draws of torch's generator. ``proj='svd'`` stores the
  top singular vectors of the gradient at each refresh (the signs of
  singular vectors are arbitrary: within a period the update does not
  depend on them, but the moments carried into the next basis do).

  Sharding: the moments of a projected matrix are ``(m, r)`` or ``(r, n)``,
  sharded like the matrix's kept side; the projection is replicated; a step
  multiplies the sharded gradient by it and reduces norms, gathering no
  parameter, except that the SVD (``proj='svd'``, at refresh steps) needs
  the whole gradient matrix.

  Args:
    rank: :math:`r` (static).
    update_proj_gap: steps between projection refreshes (static).
    scale: the heuristic ``scale``; the update is multiplied by its square
      root, as in the package.
    proj: ``'random'`` or ``'svd'``.
    scale_type: ``'channel'`` (APOLLO) or ``'tensor'`` (APOLLO-Mini).
    betas: :math:`(\beta_1, \beta_2)`.
    eps: :math:`\epsilon`, outside the square root.
    correct_bias: multiply by Adam's bias correction (the package's
      default).
    scale_front: apply ``scale`` before the norm-growth limiter.
    disable_nl: no norm-growth limiter.
    projected: which leaves are projected, as
      :func:`optax.add_decayed_weights`' ``mask`` (a tree of bools, a prefix
      of one, or a callable); only matrices may be. Default: every leaf of
      rank 2.
    seed: seed of the random projections.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`~sgg_optax.bases.ScaleByApolloState`.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> tx = sgg_optax.scale_by_apollo(rank=2, update_proj_gap=10)
    >>> params = {'w': jnp.ones((8, 4)), 'b': jnp.ones(4)}
    >>> state = tx.init(params)
    >>> print(state.mu['w'].shape, state.mu['b'].shape)
    (8, 2) (4,)

  References:
    Zhu et al., `APOLLO: SGD-like Memory, AdamW-level Performance
    <https://arxiv.org/abs/2412.05270>`_, MLSys 2025.
  """
  return _scale_by_apollo(rank, update_proj_gap, scale, proj, scale_type,
                          betas, eps, correct_bias, scale_front, disable_nl,
                          projected, seed, None)


def alias_tail(learning_rate, weight_decay, mask):
  """The learning rate, then the weight decay of the updated parameter."""
  decay = decay_updated(learning_rate, weight_decay)
  if mask is not None:
    decay = optax.masked(decay, mask)
  return optax.scale_by_learning_rate(learning_rate), decay


ALIAS_DOC = r"""
    learning_rate: a scalar or schedule.
    rank: see :func:`scale_by_apollo`.
    update_proj_gap: see :func:`scale_by_apollo`.
    scale: see :func:`scale_by_apollo`.
    proj: see :func:`scale_by_apollo`.
    scale_type: see :func:`scale_by_apollo`.
    betas: see :func:`scale_by_apollo`.
    eps: see :func:`scale_by_apollo`.
    weight_decay: :math:`\lambda`, decoupled weight decay of the updated
      parameter.
    mask: mask of the weight decay, as in :func:`optax.adamw`.
    correct_bias: see :func:`scale_by_apollo`.
    scale_front: see :func:`scale_by_apollo`.
    disable_nl: see :func:`scale_by_apollo`.
    projected: see :func:`scale_by_apollo`.
    seed: see :func:`scale_by_apollo`."""


def apollo(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 256,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj: str = 'random',
    scale_type: str = 'channel',
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    *,
    correct_bias: bool = True,
    scale_front: bool = False,
    disable_nl: bool = False,
    projected: MaskOrFn = None,
    seed: int = 0,
) -> optax.GradientTransformation:
  r"""APOLLO with decoupled weight decay (APOLLO-Mini with ``rank=1,
  scale_type='tensor'``).

  :func:`scale_by_apollo`, the learning rate, then the weight decay of the
  updated parameter, as ``apollo_torch.APOLLOAdamW`` 1.0.3 steps:
  :math:`\theta \leftarrow (1-\eta\lambda)(\theta - \eta\,\text{update})`
  (this differs from :func:`optax.adamw`'s order by
  :math:`\eta^2\lambda\,\text{update}`).

  Args:{args}

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> opt = sgg_optax.apollo(1e-2, rank=1, scale_type='tensor', scale=128)
    >>> params = {'w': jnp.ones((8, 4))}
    >>> state = opt.init(params)
    >>> u, state = opt.update({'w': jnp.ones((8, 4))}, state, params)
    >>> print(u['w'].shape)
    (8, 4)

  References:
    Zhu et al., `APOLLO: SGD-like Memory, AdamW-level Performance
    <https://arxiv.org/abs/2412.05270>`_, MLSys 2025.
  """
  base = _scale_by_apollo(rank, update_proj_gap, scale, proj, scale_type,
                          betas, eps, correct_bias, scale_front, disable_nl,
                          projected, seed, None)
  return optax.chain(base, *alias_tail(learning_rate, weight_decay, mask))


apollo.__doc__ = (apollo.__doc__ or '').replace('{args}', ALIAS_DOC)
