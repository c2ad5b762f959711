"""Orbax checkpoints of an SGG optimizer state."""
import tempfile

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

import sgg_optax

params = {'w': jnp.ones((32, 16)), 'b': jnp.zeros(16)}
grads = {'w': jnp.linspace(-1, 1, 512).reshape(32, 16), 'b': jnp.ones(16)}
tx = sgg_optax.adamw_sgg(1e-3, recluster_interval=2)
state = tx.init(params)
for _ in range(3):
  updates, state = tx.update(grads, state, params)
  params = optax.apply_updates(params, updates)

with tempfile.TemporaryDirectory() as directory:
  with ocp.CheckpointManager(directory) as manager:
    manager.save(3, args=ocp.args.StandardSave(
        {'params': params, 'opt_state': state}))
    manager.wait_until_finished()

  # Always restore onto an abstract target: it carries the state's structure
  # (NamedTuples, optax.MaskedNode for ungrouped parameters) and, for a
  # sharded restore, the shardings (e.g. from sgg_optax.state_shardings).
  target = jax.eval_shape(lambda: {'params': params,
                                   'opt_state': tx.init(params)})
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(3, args=ocp.args.StandardRestore(target))

updates, _ = tx.update(grads, restored['opt_state'], restored['params'])
print(jax.tree.structure(restored['opt_state']) == jax.tree.structure(state))
