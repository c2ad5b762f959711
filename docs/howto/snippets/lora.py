"""LoRA: optimizer state for the adapters only."""
import jax.numpy as jnp
import optax
from flax import nnx

import sgg_optax

# 1. Flax NNX: LoRAParam is a subclass of nnx.Param; wrt= selects it, so
# only the adapters get Adam and SGG state. SGG's default mask (tensors of
# two or more dimensions) then groups the A and B factors.
base = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
model = nnx.LoRA(64, 4, 64, base_module=base, rngs=nnx.Rngs(1))
optimizer = nnx.Optimizer(
    model, sgg_optax.adamw_sgg(1e-3, recluster_interval=50), wrt=nnx.LoRAParam)
print(sgg_optax.cluster_summary(optimizer.opt_state).names)

# 2. Plain optax over the whole tree: optax.partition gives the frozen
# leaves set_to_zero() and no state.
params = {'kernel': jnp.ones((64, 64)),
          'lora_a': jnp.ones((64, 4)), 'lora_b': jnp.zeros((4, 64))}
labels = {'kernel': 'frozen', 'lora_a': 'train', 'lora_b': 'train'}
tx = optax.partition(
    {'train': sgg_optax.adamw_sgg(1e-3, recluster_interval=50),
     'frozen': optax.set_to_zero()},
    labels)
state = tx.init(params)
print(sgg_optax.cluster_summary(state).names)
