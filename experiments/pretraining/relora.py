"""ReLoRA: LoRA pre-training that merges and restarts its adapters.

ReLoRA (Lialin et al., ICLR 2024) trains LoRA adapters on frozen kernels
and, every ``interval`` steps, merges them into the kernels
(``W <- W + (alpha / r) A B``), draws a new ``A`` (``B`` back to zero, so
the model's function does not change), prunes the adapters' optimizer
state by magnitude (keeping the largest ``1 - prune_ratio`` of each
moment) and re-warms the learning rate from zero (the "jagged" cosine).
The sum of the merged updates can reach a rank LoRA alone never has.

`jagged_schedule` is the learning-rate side; `Restart` is the merge, the
re-initialisation and the pruning, a pure function of the train step's
split ``(model, optimizer)`` state that the loop applies after every
``interval`` steps (experiments/pretraining/loop.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.common import lora as lora_lib

# ReLoRA's settings at our scale. Its LLaMA-60M recipe (the authors' code,
# scripts/60M_relora.sh: 10,000 steps, a restart every 1,000, a 100-step
# re-warm-up) restarts every 10% of the run and re-warms over 1% of it; the
# paper prunes 99% of each moment by magnitude at every restart.
INTERVAL_FRAC = 0.1
REWARM_FRAC = 0.01
PRUNE_RATIO = 0.99


def settings(steps: int) -> dict[str, Any]:
  """ReLoRA's restart interval, re-warm-up and pruning for a run's length."""
  return dict(interval=max(2, round(INTERVAL_FRAC * steps)),
              rewarm=max(1, round(REWARM_FRAC * steps)),
              prune_ratio=PRUNE_RATIO)


def jagged_schedule(schedule: optax.Schedule, interval: int,
                    rewarm: int) -> optax.Schedule:
  r"""``schedule`` re-warmed linearly from zero after every restart.

  .. math::
    \eta'(t) = \eta(t) \min\left(1, \frac{t \bmod N}{w}\right)
    \quad (t \ge N), \qquad \eta'(t) = \eta(t) \quad (t < N)

  with ``N = interval`` and ``w = rewarm``: the update right after a
  restart (``t = kN``) has learning rate zero, and ``w`` updates later the
  schedule is whole again, as ReLoRA's ``cosine_restarts``.

  Args:
    schedule: the underlying schedule (warm-up and cosine).
    interval: steps between restarts.
    rewarm: steps of the linear re-warm-up after each restart.

  Returns:
    The jagged schedule.
  """
  if interval < 1 or rewarm < 1:
    raise ValueError(f'interval and rewarm must be >= 1, got {interval}, '
                     f'{rewarm}.')

  def fn(count: Any) -> Any:
    since = jnp.asarray(count % interval, jnp.float32)
    factor = jnp.where(count >= interval, jnp.minimum(1.0, since / rewarm),
                       1.0)
    return schedule(count) * factor

  return fn


def _prune(x: jax.Array, ratio: float) -> jax.Array:
  """Zeroes the ``ratio`` share of ``x``'s entries of smallest magnitude."""
  mag = jnp.abs(x).astype(jnp.float32)
  threshold = jnp.quantile(mag.reshape(-1), ratio)
  return jnp.where(mag > threshold, x, jnp.zeros_like(x))


def _is_adapter_moment(path: tuple[Any, ...], value: Any) -> bool:
  """An optimizer-state array of an adapter (not a count or a scalar)."""
  names = [str(p) for p in path]
  return (names[:2] == ['1', 'opt_state']
          and bool(set(names) & set(lora_lib.LORA_NAMES))
          and hasattr(value, 'ndim') and value.ndim >= 1
          and jnp.issubdtype(value.dtype, jnp.floating))


@dataclasses.dataclass(frozen=True)
class Restart:
  """ReLoRA's restart after every ``interval`` steps.

  Attributes:
    interval: steps between restarts (a restart follows step ``kN``, never
      the last step).
    steps: the run's length.
    prune_ratio: share of each adapter moment zeroed, by magnitude.
    seed: the run's seed (restart ``k``'s new ``A`` draws from it and the
      step, so a resumed run draws the same).
  """

  interval: int
  steps: int
  prune_ratio: float
  seed: int

  def due(self, done: int) -> bool:
    """Whether a restart follows the ``done``-th update."""
    return done % self.interval == 0 and 0 < done < self.steps

  def __call__(self, graphdef: nnx.GraphDef, state: nnx.State,
               done: int) -> nnx.State:
    """The split ``(model, optimizer)`` state after a restart."""
    return _restart(graphdef, state, jnp.int32(done), jnp.int32(self.seed),
                    self.prune_ratio)


@functools.partial(jax.jit, static_argnums=(0, 4), donate_argnums=1)
def _restart(graphdef: nnx.GraphDef, state: nnx.State, done: jax.Array,
             seed: jax.Array, prune_ratio: float) -> nnx.State:
  """Merges every adapter, re-initialises it and prunes its moments."""
  model, opt = nnx.merge(graphdef, state)
  key = jax.random.fold_in(jax.random.key(seed), done)
  for i, (_, layer) in enumerate(lora_lib.iter_lora(model)):
    kernel = layer.base.kernel
    kernel.set_value((lora_lib.merged_kernel(layer)).astype(kernel.dtype))
    a, b = layer.lora_a, layer.lora_b
    d_in = a.shape[0]
    bound = 1.0 / math.sqrt(d_in)
    a.set_value(jax.random.uniform(jax.random.fold_in(key, i), a.shape,
                                   a.dtype, -bound, bound))
    b.set_value(jnp.zeros_like(b.get_value()))
  flat = []
  for path, var in nnx.to_flat_state(nnx.state((model, opt))):
    value = var.get_value()
    if _is_adapter_moment(path, value):
      var = var.replace(_prune(value, prune_ratio))
    flat.append((path, var))
  return nnx.from_flat_state(flat)
