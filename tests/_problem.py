"""A small FSDP x tensor-parallel MLP trained with Adam + SGG.

Shared by the scale-out tests (sharding, offload, checkpoints) and by the
multi-process worker, so that every run of it, on one device, on an
8-device mesh, or on a 2-process cluster, trains exactly the same thing.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sgg_optax

INTERVAL = 2  # T: steps 2, 4, 6, ... refresh
SAMPLE = 64  # sample_size: G * SAMPLE < a weight's shard on 8 devices
BATCH = 16
SHAPES = {'w1': (128, 64), 'b1': (64,), 'w2': (64, 64)}
# FSDP on 'data' and tensor parallelism on 'model', as in the LLaMA rules.
SPECS = {'w1': P('data', 'model'), 'b1': P('model'), 'w2': P('model', 'data')}
DATA_SPEC = P('data')
NUM_GROUPS = 2  # the two weight matrices; the bias is not grouped


def make_tx() -> optax.GradientTransformation:
  """Adam, then SGG on the Adam update, then the learning rate."""
  return optax.chain(
      optax.scale_by_adam(),
      sgg_optax.sgg(recluster_interval=INTERVAL, beta3=0.5,
                    sample_size=SAMPLE),
      optax.scale_by_learning_rate(1e-2))


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {name: (rng.normal(size=shape) / np.sqrt(shape[0])).astype(
      np.float32) for name, shape in SHAPES.items()}


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of a step (inputs, targets)."""
  rng = np.random.default_rng(1000 + step)
  x = rng.normal(size=(BATCH, SHAPES['w1'][0])).astype(np.float32)
  y = rng.normal(size=(BATCH, SHAPES['w2'][1])).astype(np.float32)
  return x, y


def make_mesh(mode: AxisType, shape: tuple[int, int] = (4, 2)
              ) -> jax.sharding.Mesh:
  return jax.make_mesh(shape, ('data', 'model'), axis_types=(mode,) * 2)


def param_shardings(mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
  return {k: NamedSharding(mesh, s) for k, s in SPECS.items()}


def loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array
         ) -> jax.Array:
  """Mean squared error of a tanh MLP.

  Under an explicit-axes mesh the FSDP all-gathers of the weights are
  written out (``reshard``) and the contraction over the sharded hidden
  axis names its output sharding; under auto axes (or no mesh) XLA's
  sharding propagation does the same.
  """
  w1, w2 = params['w1'], params['w2']
  explicit = bool(jax.sharding.get_abstract_mesh().explicit_axes)
  kw = {}
  if explicit:
    w1 = jax.sharding.reshard(w1, P(None, 'model'))
    w2 = jax.sharding.reshard(w2, P('model', None))
    kw = {'out_sharding': P('data', None)}
  h = jnp.tanh(x @ w1 + params['b1'])
  return jnp.mean((jnp.matmul(h, w2, **kw) - y) ** 2)


def train_step(tx: optax.GradientTransformation):
  """``(params, state, x, y) -> (params, state, loss)``, not jitted."""
  def step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value
  return step


def single_device_run(steps: int, start: tuple[Any, Any] | None = None,
                      first_step: int = 0) -> tuple[Any, Any, list[float]]:
  """Unsharded reference: params, state and losses after ``steps`` steps."""
  tx = make_tx()
  if start is None:
    params = jax.tree.map(jnp.asarray, init_params())
    state = tx.init(params)
  else:
    params, state = start
  step = jax.jit(train_step(tx))
  losses = []
  for t in range(first_step, first_step + steps):
    params, state, value = step(params, state, *batch(t))
    losses.append(float(value))
  return params, state, losses


def abstract_train_state() -> dict[str, Any]:
  """``{'params', 'opt_state'}`` as shape structs: a checkpoint's target."""
  def init():
    params = jax.tree.map(jnp.asarray, init_params())
    return {'params': params, 'opt_state': make_tx().init(params)}
  return jax.eval_shape(init)
