"""Sharded training on a mesh: explicit axes and auto axes."""
import os

# Eight CPU devices stand in for accelerators here (before jax is imported).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import sgg_optax  # noqa: E402

# FSDP on 'data' and tensor parallelism on 'model'.
specs = {'w1': P('data', 'model'), 'b1': P('model'), 'w2': P('model', 'data')}
shapes = {'w1': (128, 64), 'b1': (64,), 'w2': (64, 32)}
tx = optax.chain(optax.scale_by_adam(),
                 sgg_optax.sgg(recluster_interval=2, beta3=0.5),
                 optax.scale_by_learning_rate(1e-2))


def loss_fn(params, x, y):
  w1, w2, kw = params['w1'], params['w2'], {}
  if jax.sharding.get_abstract_mesh().explicit_axes:
    # Explicit axes: write out the FSDP all-gathers of the weights and name
    # the output sharding of the contraction over the sharded hidden axis.
    w1 = jax.sharding.reshard(w1, P(None, 'model'))
    w2 = jax.sharding.reshard(w2, P('model', None))
    kw = {'out_sharding': P('data', None)}
  h = jax.nn.relu(x @ w1 + params['b1'])
  return jnp.mean((jnp.matmul(h, w2, **kw) - y) ** 2)


def train_step(params, state, x, y):
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


def train(axis_type):
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=(axis_type,) * 2)
  param_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  batch_sh = NamedSharding(mesh, P('data'))
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(jnp.full(shapes[k], 0.01), param_sh[k])
              for k in shapes}
    # The optimizer state's shardings follow the parameters': SGG's uint8
    # ids (and Adam's mu, nu) like their parameter, the rest replicated.
    state_sh = sgg_optax.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    step = jax.jit(train_step,
                   in_shardings=(param_sh, state_sh, batch_sh, batch_sh),
                   out_shardings=(param_sh, state_sh, None),
                   donate_argnums=(0, 1))
    x = jax.device_put(jnp.linspace(-1, 1, 16 * 128).reshape(16, 128),
                       batch_sh)
    y = jax.device_put(jnp.ones((16, 32)), batch_sh)
    for _ in range(6):                  # three refreshes
      params, state, loss = step(params, state, x, y)
  print(axis_type, state[1].ids['w1'].sharding.spec, float(loss))
  return loss


# Explicit axes (the default of jax.make_mesh): shardings are part of the
# types; call the step under jax.set_mesh(mesh), as above.
explicit = train(AxisType.Explicit)
# Auto axes: classic sharding propagation; the same code works.
auto = train(AxisType.Auto)
