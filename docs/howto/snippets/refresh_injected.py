"""The refresh program of an alias whose hyperparameters are injected."""
import jax
import jax.numpy as jnp
import optax

import sgg_optax

T = 2  # recluster_interval
STATIC = dict(num_clusters=3, sample_size=4096)  # shapes: not injectable
tx = optax.inject_hyperparams(sgg_optax.adamw_sgg, static_args=tuple(STATIC))(
    learning_rate=1e-2, recluster_interval=T, beta3=0.5, **STATIC)


# optax.inject_hyperparams returns a plain optax transformation, without
# `refresh`. Build the alias from the hyperparameters in the state and the
# static arguments, so that the refresh uses the injected values.
@jax.jit
def refresh(opt_state):
  sgg_part = sgg_optax.adamw_sgg(**STATIC, **opt_state.hyperparams)
  return opt_state._replace(
      inner_state=sgg_part.refresh(opt_state.inner_state))


params = {'w': jnp.linspace(-1.0, 1.0, 48).reshape(6, 8)}
loop_step = jax.jit(lambda g, s: tx.update(g, s, params, sgg_refresh=False))
own_step = jax.jit(lambda g, s: tx.update(g, s, params))
loop = own = tx.init(params)
for i in range(2 * T):
  grads = {'w': jnp.sin(3.0 * (i + 1) * params['w']) ** 3}
  _, loop = loop_step(grads, loop)
  if sgg_optax.refresh_due(i, T):
    loop = refresh(loop)
  _, own = own_step(grads, own)

print('refreshed by the loop:', sgg_optax.cluster_summary(loop).scales.round(3))
print('own schedule:         ', sgg_optax.cluster_summary(own).scales.round(3))
