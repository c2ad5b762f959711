"""Flax NNX: CAME with SGG (``sgg_optax.came_sgg``) inside ``nnx.Optimizer``."""
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
# CAME's defaults (betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16)); SGG
# clusters CAME's first moment every 5 steps.
tx = sgg_optax.came_sgg(1e-3, weight_decay=1e-2, recluster_interval=5,
                        beta3=0.9)
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
losses = [float(train_step(model, optimizer, x, y)) for _ in range(20)]
print('loss went down:', losses[-1] < losses[0])

# CAME's state (first moment, factored second moment and instability) and
# SGG's, both inside optimizer.opt_state.
came_state = optimizer.opt_state[0].inner_state
print(came_state.v_row['hidden']['kernel'].shape,
      came_state.v_col['hidden']['kernel'].shape)
summary = sgg_optax.cluster_summary(optimizer.opt_state)
print(summary.names, summary.refreshes)
