"""The momentum form's refresh as a small program on the optimizer state."""
import jax
import jax.numpy as jnp
from flax import nnx

import sgg_optax

T = 5  # recluster_interval


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(16, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


model = MLP(nnx.Rngs(0))
tx = sgg_optax.adamw_sgg(1e-2, recluster_interval=T, beta3=0.9)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
graphdef, state = nnx.split((model, optimizer))


# One train step, compiled once: it never refreshes and holds no conditional.
@jax.jit
def train_step(state, x, y):
  model, optimizer = nnx.merge(graphdef, state)

  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads, sgg_refresh=False)
  return nnx.state((model, optimizer)), loss


# The refresh reads the momentum in the optimizer state: no forward or
# backward pass.
@jax.jit
def refresh(state):
  model, optimizer = nnx.merge(graphdef, state)
  opt_state = tx.refresh(nnx.as_pure(optimizer.opt_state))
  nnx.update(optimizer.opt_state, nnx.state(opt_state))
  return nnx.state((model, optimizer))


x = jnp.linspace(-1, 1, 64 * 16).reshape(64, 16)
y = jnp.sin(x.sum(axis=1, keepdims=True))
for step in range(12):
  state, loss = train_step(state, x, y)
  if sgg_optax.refresh_due(step, T):  # after updates T, 2T, ...
    state = refresh(state)

nnx.update((model, optimizer), state)
summary = sgg_optax.cluster_summary(optimizer.opt_state)
print('refreshes:', summary.refreshes.tolist())
print('train step has a conditional:', ' conditional(' in train_step.lower(
    state, x, y).compile().as_text())
