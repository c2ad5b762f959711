"""Flax NNX: SGG inside ``nnx.Optimizer``."""
import jax.numpy as jnp
from flax import nnx

import sgg_optax


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(16, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


model = MLP(nnx.Rngs(0))
tx = sgg_optax.adamw_sgg(1e-2, recluster_interval=5, beta3=0.9)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


x = jnp.linspace(-1, 1, 64 * 16).reshape(64, 16)
y = jnp.sin(x.sum(axis=1, keepdims=True))
for _ in range(10):
  loss = train_step(model, optimizer, x, y)

# The optax state lives at optimizer.opt_state; cluster_summary finds the
# SGG state inside it (the kernels are grouped, the biases are not).
summary = sgg_optax.cluster_summary(optimizer.opt_state)
print(summary.names)
print(summary.scales.shape)
