"""Schedules and ``optax.inject_hyperparams``."""
import jax.numpy as jnp
import optax

import sgg_optax

params = {'w': jnp.ones((32, 16)), 'b': jnp.zeros(16)}
grads = {'w': jnp.linspace(-1, 1, 512).reshape(32, 16), 'b': jnp.ones(16)}

# 1. A learning-rate schedule: the aliases take any optax schedule.
schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=1e-3, warmup_steps=100, decay_steps=1000,
    end_value=1e-4)
tx = sgg_optax.adamw_sgg(schedule, recluster_interval=50)

# 2. SGG's own hyperparameters as injected state. Arguments that fix a
# shape or a loop count must be static; numeric ones (beta3, the interval,
# eps) become state that can be changed between steps without recompiling.
sgg = optax.inject_hyperparams(
    sgg_optax.sgg,
    static_args=('num_clusters', 'sample_size', 'mask'))
tx = optax.chain(
    optax.scale_by_adam(),
    sgg(num_clusters=3, recluster_interval=2, beta3=0.9),
    optax.scale_by_learning_rate(schedule),
)
state = tx.init(params)
print(sorted(state[1].hyperparams))

updates, state = tx.update(grads, state, params)
state[1].hyperparams['beta3'] = jnp.asarray(0.5)   # takes effect next refresh
updates, state = tx.update(grads, state, params)
