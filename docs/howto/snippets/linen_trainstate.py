"""Flax Linen: SGG in a ``TrainState``."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state

import sgg_optax


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.relu(nn.Dense(32)(x)))


model = MLP()
x = jnp.linspace(-1, 1, 64 * 16).reshape(64, 16)
y = jnp.sin(x.sum(axis=1, keepdims=True))
params = model.init(jax.random.key(0), x)['params']

# apply_gradients calls tx.update(grads, opt_state, params) with no extra
# arguments; every SGG optimizer accepts that.
state = train_state.TrainState.create(
    apply_fn=model.apply, params=params,
    tx=sgg_optax.adamw_sgg(1e-2, recluster_interval=5, beta3=0.9))


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    return jnp.mean((state.apply_fn({'params': params}, x) - y) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


for _ in range(10):
  state, loss = train_step(state, x, y)
print(sgg_optax.cluster_summary(state.opt_state).names)
