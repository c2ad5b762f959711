"""Choosing K, T and beta3: does SGG act within the run?"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sgg_optax

STEPS = 40
kw, kx = jax.random.split(jax.random.key(0))
params = {'w': jax.random.normal(kw, (64, 32)) / 8}
x = jax.random.normal(kx, (256, 64))
y = jnp.sin(3 * x[:, :32])


def loss(params):
  return jnp.mean((x @ params['w'] - y) ** 2)


# T and beta3 as injected hyperparameters: one compiled step for every run
# (the integers that fix shapes stay static).
tx = optax.inject_hyperparams(
    sgg_optax.adamw_sgg,
    static_args=('num_clusters', 'sample_size'))(
        learning_rate=1e-2, recluster_interval=500, beta3=0.99)


@jax.jit
def step(p, state):
  updates, state = tx.update(jax.grad(loss)(p), state, p)
  return optax.apply_updates(p, updates), state


for t, beta3 in [(500, 0.99), (2, 0.99), (2, 0.9)]:
  p, state = params, tx.init(params)
  state.hyperparams.update(recluster_interval=t, beta3=beta3)
  for _ in range(STEPS):
    p, state = step(p, state)
  summary = sgg_optax.cluster_summary(state)
  refreshes = summary.count // t
  moved = 1 - beta3 ** refreshes      # share of the way to the targets
  print(f'T={t:<3} beta3={beta3}: {refreshes:2d} refreshes, '
        f'{moved:4.0%} of the way, max |S-1| = '
        f'{np.abs(summary.scales - 1).max():.2f}')
