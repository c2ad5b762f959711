"""Helpers shared by the base optimizers (CAME, APOLLO, Adam-mini)."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def one_minus_pow(b: Any, t: jax.Array) -> jax.Array:
  r"""Adam's bias correction :math:`1 - b^t` in float32, without the
  cancellation of ``1 - b ** t``.

  With ``b = 0.999`` in float32, ``1 - b ** t`` is off by 1e-5 to 2e-5 of
  its value in the first steps (this: 2e-7); the reference packages compute
  it in float64. This takes
  :math:`-\operatorname{expm1}(t \log b)` with the logarithm of a Python
  ``b`` taken in float64 (a traced ``b``, e.g. under
  :func:`optax.inject_hyperparams`, is already rounded to its dtype).
  """
  tf = t.astype(jnp.float32)
  if isinstance(b, (int, float)):
    if b == 0:
      return jnp.ones_like(tf)
    return -jnp.expm1(tf * math.log(b))
  return -jnp.expm1(tf * jnp.log(b))


def stat_dtype(dtype: Any) -> Any:
  """The dtype statistics are computed and kept in (float32 at least)."""
  return jnp.promote_types(dtype, jnp.float32)


def like(new: Any, old: Any) -> Any:
  """``new`` with the sharding of ``old``, the state it replaces.

  Under explicit mesh axes shardings are types: a statistic computed from a
  sharded gradient (a reduction, a projection) comes out sharded like the
  gradient's kept axes, which need not be how the state was placed (e.g.
  replicated by :func:`~sgg_optax.state_shardings`). Resharding it to the
  incoming state's sharding keeps the state's types stable from step to
  step. Under auto axes (or without a mesh) XLA places it.
  """
  if not jax.sharding.get_abstract_mesh().explicit_axes:
    return new
  return jax.tree.map(
      lambda n, o: jax.sharding.reshard(n, jax.typeof(o).sharding.spec),
      new, old)


class DecayState(NamedTuple):
  """State of :func:`decay_updated`: the learning-rate schedule's count."""
  count: jax.Array  # type: ignore[assignment]


def decay_updated(learning_rate: optax.ScalarOrSchedule,
                   weight_decay: float | jax.Array
                   ) -> optax.GradientTransformation:
  r"""Decay the *updated* parameter: :math:`d \mapsto d - \eta\lambda
  (\theta + d)`, the package's order (it decays after stepping)."""

  def init_fn(params):
    del params
    return DecayState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    out = jax.tree.map(
        lambda d, p: (d - lr * weight_decay * (p + d)).astype(d.dtype),
        updates, params)
    return out, DecayState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
