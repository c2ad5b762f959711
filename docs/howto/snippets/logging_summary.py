"""Reading ``cluster_summary`` in a training log."""
import jax
import jax.numpy as jnp
import optax

import sgg_optax

params = {'layer0': {'kernel': jnp.ones((32, 16)), 'bias': jnp.zeros(16)},
          'layer1': {'kernel': jnp.ones((16, 4)), 'bias': jnp.zeros(4)}}
tx = optax.chain(optax.scale_by_adam(),
                 sgg_optax.sgg(recluster_interval=5, beta3=0.9),
                 optax.scale_by_learning_rate(1e-2))
state = tx.init(params)


@jax.jit
def step(params, state, t):
  grads = jax.tree.map(
      lambda p: jnp.sin(jnp.arange(p.size).reshape(p.shape) + t), params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


for t in range(20):
  params, state = step(params, state, t)
  if (t + 1) % 10 == 0:              # every log interval: one small copy
    summary = sgg_optax.cluster_summary(state)
    print(f'step {summary.count}: D = {summary.global_stat:.3g}')
    for name, scales, fractions in zip(
        summary.names, summary.scales, summary.fractions):
      print(f'  {name:14s} scales {scales.round(2)}  '
            f'fractions {fractions.round(2)}')

# Row names for any parameter tree (the same mask as sgg's), and a flat
# dict for metric loggers (TensorBoard, wandb, ...).
print(sgg_optax.group_names(params))
metrics = summary.scalars(prefix='sgg')
print(len(metrics), 'scalars, e.g.', sorted(metrics)[:2])
