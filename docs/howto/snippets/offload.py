"""Cluster ids in pinned host memory between steps."""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgg_optax

mesh = jax.make_mesh((1,), ('data',))
param_sh = {'w': NamedSharding(mesh, P('data')),
            'b': NamedSharding(mesh, P())}
params = jax.device_put({'w': jnp.ones((64, 32)), 'b': jnp.zeros(32)},
                        param_sh)
tx = optax.chain(optax.scale_by_adam(),
                 sgg_optax.sgg(recluster_interval=2),
                 optax.scale_by_learning_rate(1e-3))

# Only SGG's ids go to 'pinned_host'; every other leaf stays on the device.
state_sh = sgg_optax.state_shardings(tx, params,
                                     ids_memory_kind='pinned_host')
state = jax.jit(tx.init, out_shardings=state_sh)(params)
print(state[1].ids['w'].sharding.memory_kind)


def train_step(params, state, grads):
  state = sgg_optax.ids_to_device(state)   # XLA will not mix memory spaces
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


step = jax.jit(train_step, in_shardings=(param_sh, state_sh, param_sh),
               out_shardings=(param_sh, state_sh), donate_argnums=(0, 1))
grads = jax.device_put({'w': jnp.linspace(-1, 1, 64 * 32).reshape(64, 32),
                        'b': jnp.ones(32)}, param_sh)
with jax.set_mesh(mesh):                  # explicit axes: run under the mesh
  for _ in range(4):
    params, state = step(params, state, grads)
print(state[1].ids['w'].sharding.memory_kind)
