"""The refresh decided by the training loop: no ``lax.cond`` in the step."""
import functools

import jax
import jax.numpy as jnp
import optax
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
tx = optax.chain(optax.scale_by_adam(),
                 sgg_optax.sgg(recluster_interval=T, beta3=0.9),
                 optax.scale_by_learning_rate(1e-2))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
graphdef, state = nnx.split((model, optimizer))


# `refresh` is static: the step compiles twice (plain and refresh), and
# neither program holds a conditional.
@functools.partial(jax.jit, static_argnames='refresh', donate_argnums=0)
def train_step(state, x, y, refresh):
  model, optimizer = nnx.merge(graphdef, state)

  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads, sgg_refresh=refresh)
  return nnx.state((model, optimizer)), loss


x = jnp.linspace(-1, 1, 64 * 16).reshape(64, 16)
y = jnp.sin(x.sum(axis=1, keepdims=True))
for step in range(12):
  state, loss = train_step(state, x, y,
                           refresh=sgg_optax.refresh_due(step, T))

nnx.update((model, optimizer), state)  # back into the NNX objects
summary = sgg_optax.cluster_summary(optimizer.opt_state)
print('refreshes:', summary.refreshes.tolist())
print('plain step has a conditional:', ' conditional(' in train_step.lower(
    state, x, y, refresh=False).compile().as_text())
