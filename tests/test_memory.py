"""The compiled step's temporary memory: SGG adds no update-sized buffer.

``compiled.memory_analysis()`` is deterministic, unlike timings, so this is
where the step's cost is asserted; ``experiments/bench/step.py`` times it.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import sgg_optax

SIDE = 4000  # a 16M-parameter matrix: 64 MB of float32 per buffer
MIB = 2**20


def _temp_bytes(tx: optax.GradientTransformation, **extra_args) -> int:
  params = {'w': jax.ShapeDtypeStruct((SIDE, SIDE), jnp.float32)}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra_args)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params).compile()
  return compiled.memory_analysis().temp_size_in_bytes


_LR = optax.scale_by_learning_rate(1e-3)
_MOMENTUM = {
    'momentum form': lambda **kw: optax.chain(sgg_optax.with_sgg(
        optax.scale_by_adam(), recluster_interval=500, **kw), _LR),
    'adamw_sgg': lambda **kw: sgg_optax.adamw_sgg(1e-3, **kw),
}
_CHAIN = {
    'chain link': lambda **kw: optax.chain(
        optax.scale_by_adam(), sgg_optax.sgg(recluster_interval=500, **kw),
        _LR),
}


@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
@pytest.mark.parametrize('name', list(_MOMENTUM))
def test_momentum_form_holds_no_update_sized_temporary(name, assignment):
  adam = _temp_bytes(optax.chain(optax.scale_by_adam(), _LR))
  temp = _temp_bytes(_MOMENTUM[name](assignment=assignment))
  assert adam <= 1 * MIB
  assert temp <= 1 * MIB, (name, temp, adam)


@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
def test_chain_link_holds_one_update_at_most(assignment):
  """The chain link's refresh reads the fresh update, a cond operand.

  XLA on CPU then writes the update out once per step (it does so too when
  the sample or the ids are taken outside the cond: any second reader of
  the fused Adam update makes XLA keep it), and never more than once.
  """
  temp = _temp_bytes(_CHAIN['chain link'](assignment=assignment))
  update = SIDE * SIDE * 4
  assert temp <= update + 1 * MIB, temp


@pytest.mark.parametrize('name,assignment', [
    ('chain link', 'frozen'), ('momentum form', 'frozen'),
    ('momentum form', 'dynamic'), ('adamw_sgg', 'frozen')])
def test_loop_decided_plain_step_holds_no_update_sized_temporary(
    name, assignment):
  """With ``sgg_refresh=False`` the step has no refresh to feed: the select
  chain fuses into the base update, for the chain link too."""
  tx = {**_MOMENTUM, **_CHAIN}[name](assignment=assignment)
  temp = _temp_bytes(tx, sgg_refresh=False)
  assert temp <= 1 * MIB, (name, assignment, temp)


def test_chain_link_dynamic_ids_hold_one_update_at_most():
  """Dynamic ids read the fresh update twice in every step (its cluster,
  then its scaling): XLA on CPU writes it out, as for the default chain."""
  temp = _temp_bytes(_CHAIN['chain link'](assignment='dynamic'),
                     sgg_refresh=False)
  assert temp <= SIDE * SIDE * 4 + 1 * MIB, temp
