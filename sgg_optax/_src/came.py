"""CAME (Luo et al., ACL 2023) as an optax transformation."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgg_optax._src.base_utils import like, stat_dtype
from sgg_optax._src.config import MaskOrFn


class ScaleByCameState(NamedTuple):
  """State of :func:`scale_by_came`.

  Matrices and higher-rank leaves keep factored statistics (over their last
  two axes), vectors and scalars a full second moment; the fields a leaf
  does not use hold :class:`optax.MaskedNode`.

  Attributes:
    count: int32 number of updates so far.
    mu: the first moment of the clipped update, parameter-shaped.
    v_row: factored second moment, mean over the last axis (shape
      ``shape[:-1]``).
    v_col: factored second moment, mean over the second-to-last axis (shape
      ``shape[:-2] + shape[-1:]``).
    v: full second moment of leaves of rank below 2.
    res_row: factored instability :math:`(u - m)^2`, row statistic.
    res_col: factored instability, column statistic.
  """
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  mu: optax.Updates
  v_row: optax.Updates
  v_col: optax.Updates
  v: optax.Updates
  res_row: optax.Updates
  res_col: optax.Updates


def _unzip(like: Any, tree: Any, n: int) -> list[Any]:
  """``n`` trees out of ``tree``, whose leaves (at ``like``'s) are tuples."""
  return [jax.tree.map(lambda _, t, i=i: t[i], like, tree)
          for i in range(n)]


def _approx(row: jax.Array, col: jax.Array) -> jax.Array:
  """CAME's (and Adafactor's) rank-1 reconstruction, as ``1/sqrt``."""
  r = jax.lax.rsqrt(row / jnp.mean(row, axis=-1, keepdims=True))
  return r[..., None] * jax.lax.rsqrt(col)[..., None, :]


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def _check_unit(name: str, values: tuple[Any, ...]) -> None:
  for v in values:
    if isinstance(v, (int, float)) and not 0.0 <= v <= 1.0:
      raise ValueError(f'`{name}` must lie in [0, 1], got {values!r}.')


def scale_by_came(
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
    eps: tuple[float, float] = (1e-30, 1e-16),
    clip_threshold: float | jax.Array = 1.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Rescale updates by CAME, the confidence-guided Adafactor.

  For a gradient :math:`G` of rank 2 or more (factored over its last two
  axes; :math:`\mathbb 1` a vector of ones, :math:`n, m` the axis lengths):

  .. math::
    r_t &= \beta_2 r_{t-1} + (1-\beta_2)\,(G^2 + \epsilon_1)\mathbb 1/m,
    \qquad c_t = \beta_2 c_{t-1} + (1-\beta_2)\,\mathbb 1^\top(G^2 +
    \epsilon_1)/n, \\
    u_t &= G / \sqrt{r_t c_t^\top / \operatorname{mean}(r_t)}, \qquad
    u_t \leftarrow u_t / \max(1, \operatorname{RMS}(u_t)/d), \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, u_t, \qquad
    U_t = (u_t - m_t)^2 + \epsilon_2, \\
    R_t &= \beta_3 R_{t-1} + (1-\beta_3)\, U_t\mathbb 1/m, \qquad
    C_t = \beta_3 C_{t-1} + (1-\beta_3)\,\mathbb 1^\top U_t/n, \\
    \text{update} &= m_t / \sqrt{R_t C_t^\top / \operatorname{mean}(R_t)}.

  Vectors and scalars keep a full second moment
  :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)(g^2+\epsilon_1)`, the same
  clipping, and their update is :math:`m_t` (no instability term). There is
  no bias correction. This is the update of the authors' ``came-pytorch``
  0.1.3, statement for statement; the statistics are computed in float32
  (or wider) whatever the gradient's dtype, as there, and the update has the
  gradient's dtype.

  Sharding: the state follows the parameters (``mu`` and ``v`` have their
  shapes; the factored statistics are reductions of them and inherit the
  remaining axes' sharding); a step reduces over sharded axes and never
  gathers a parameter.

  Args:
    betas: :math:`(\beta_1, \beta_2, \beta_3)`: decays of the first moment,
      the second moment and the instability.
    eps: :math:`(\epsilon_1, \epsilon_2)`: added to the squared gradient and
      to the instability.
    clip_threshold: :math:`d`, the RMS above which an update is scaled down.
    mu_dtype: dtype of the first moment (default: the gradient's dtype
      promoted to float32 at least).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`~sgg_optax.bases.ScaleByCameState`.

  Example:
    >>> import jax.numpy as jnp, sgg_optax
    >>> tx = sgg_optax.scale_by_came()
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> print(state.v_row['w'].shape, state.v_col['w'].shape, state.v['b'])
    (2,) (3,) [0. 0. 0.]
    >>> u, state = tx.update({'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}, state)
    >>> print(u['b'])
    [0.1 0.1 0.1]

  References:
    Luo et al., `CAME: Confidence-guided Adaptive Memory Efficient
    Optimization <https://arxiv.org/abs/2307.02047>`_, ACL 2023.
  """
  if len(betas) != 3 or len(eps) != 2:
    raise ValueError(
        f'`betas` takes 3 decays and `eps` 2 epsilons, got betas={betas!r}, '
        f'eps={eps!r}.')
  _check_unit('betas', betas)
  if (isinstance(clip_threshold, (int, float))
      and not clip_threshold > 0):
    raise ValueError(f'`clip_threshold` must be positive, got '
                     f'{clip_threshold!r}.')
  b1, b2, b3 = betas
  eps1, eps2 = eps

  def init_leaf(p):
    dt = stat_dtype(p.dtype)
    z = jnp.zeros_like(p, dtype=dt)
    mu = jnp.zeros_like(p, dtype=mu_dtype or dt)
    if p.ndim < 2:
      return mu, optax.MaskedNode(), optax.MaskedNode(), z, (
          optax.MaskedNode()), optax.MaskedNode()
    # Reductions of a zero array, so that the statistics inherit the
    # parameter's sharding of their remaining axes, as the updates' do.
    row, col = jnp.sum(z, axis=-1), jnp.sum(z, axis=-2)
    return mu, row, col, optax.MaskedNode(), row, col

  def init_fn(params):
    parts = _unzip(params, jax.tree.map(init_leaf, params), 6)
    return ScaleByCameState(jnp.zeros([], jnp.int32), *parts)

  def update_leaf(g, mu, v_row, v_col, v, res_row, res_col):
    old_v_row, old_v_col, old_v, old_res_row, old_res_col = (
        v_row, v_col, v, res_row, res_col)
    dt = stat_dtype(g.dtype)
    grad = g.astype(dt)
    sq = jnp.square(grad) + eps1
    if g.ndim >= 2:
      v_row = b2 * v_row + (1 - b2) * jnp.mean(sq, axis=-1)
      v_col = b2 * v_col + (1 - b2) * jnp.mean(sq, axis=-2)
      u = _approx(v_row, v_col) * grad
    else:
      v = b2 * v + (1 - b2) * sq
      u = jax.lax.rsqrt(v) * grad
    u = u / jnp.maximum(_rms(u) / clip_threshold, 1.0)
    m = b1 * mu.astype(dt) + (1 - b1) * u
    if g.ndim >= 2:
      res = jnp.square(u - m) + eps2
      res_row = b3 * res_row + (1 - b3) * jnp.mean(res, axis=-1)
      res_col = b3 * res_col + (1 - b3) * jnp.mean(res, axis=-2)
      out = _approx(res_row, res_col) * m
    else:
      out = m
    stats = like((v_row, v_col, v, res_row, res_col),
                 (old_v_row, old_v_col, old_v, old_res_row, old_res_col))
    return (out.astype(g.dtype), like(m.astype(mu.dtype), mu), *stats)

  def update_fn(updates, state, params=None):
    del params
    new = jax.tree.map(update_leaf, updates, state.mu, state.v_row,
                       state.v_col, state.v, state.res_row, state.res_col)
    out, *parts = _unzip(updates, new, 7)
    return out, ScaleByCameState(optax.safe_increment(state.count), *parts)

  return optax.GradientTransformation(init_fn, update_fn)


def came(
    learning_rate: optax.ScalarOrSchedule,
    eps: tuple[float, float] = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""CAME with decoupled weight decay.

  ``chain(scale_by_came, add_decayed_weights, scale_by_learning_rate)``:
  :math:`\theta \leftarrow \theta - \eta\,(\text{update} + \lambda\theta)`,
  as ``came_pytorch.CAME`` 0.1.3 steps (it decays the parameter before
  adding the update, which reads the same parameter). The leading arguments
  are the package's, in its order and with its defaults.

  Args:
    learning_rate: a scalar or schedule.
    eps: see :func:`scale_by_came`.
    clip_threshold: see :func:`scale_by_came`.
    betas: see :func:`scale_by_came`.
    weight_decay: :math:`\lambda`, decoupled weight decay.
    mask: mask of the weight decay, as in :func:`optax.adamw`.
    mu_dtype: see :func:`scale_by_came`.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp, optax, sgg_optax
    >>> opt = sgg_optax.came(1e-2)
    >>> params = {'w': jnp.ones((2, 3))}
    >>> state = opt.init(params)
    >>> u, state = opt.update({'w': jnp.ones((2, 3))}, state, params)
    >>> print(u['w'][0].round(4))  # no bias correction: a large first step
    [-0.1111 -0.1111 -0.1111]

  References:
    Luo et al., `CAME: Confidence-guided Adaptive Memory Efficient
    Optimization <https://arxiv.org/abs/2307.02047>`_, ACL 2023.
  """
  return optax.chain(
      scale_by_came(betas, eps, clip_threshold, mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))
