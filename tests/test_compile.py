"""The compiled step's kernels: one per layer shape, not one per layer.

XLA compiles each distinct fused computation once, and compile time grows
with the number of distinct ones. A kernel that reads layer ``i``'s row of a
stacked statistic (or its part of the refresh's random draw) at a constant
offset is distinct for every layer; SGG passes those offsets in buffers
(``sampling.opaque_ints``), so a model with more layers of the same shapes
compiles no new kernel. The count of distinct fused computations in the
optimized HLO is deterministic, unlike compile time, which
``experiments/bench/step.py`` measures.
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import sgg_optax

_LR = optax.scale_by_learning_rate(1e-3)
FORMS = {
    'with_sgg': lambda **kw: optax.chain(
        sgg_optax.with_sgg(optax.scale_by_adam(), **kw), _LR),
    'chain link': lambda **kw: optax.chain(
        optax.scale_by_adam(), sgg_optax.sgg(**kw), _LR),
}


def _params(layers: int) -> dict:
  # 96 * 128 elements: larger than the sample, so the layers are sampled.
  tree = {'embed': jax.ShapeDtypeStruct((40, 96), jnp.float32)}
  for i in range(layers):
    tree[f'layer{i}'] = {
        'attn': jax.ShapeDtypeStruct((96, 128), jnp.float32),
        'mlp': jax.ShapeDtypeStruct((128, 96), jnp.float32),
        'norm': jax.ShapeDtypeStruct((96,), jnp.float32)}
  return tree


def distinct_kernels(tx: optax.GradientTransformation, params) -> int:
  """Distinct fused computations of the compiled, donated train step."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, params)
  text = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params).compile().as_text()
  bodies = set()
  for computation in re.split(r'\n(?=\S)', text):
    head, _, body = computation.partition('\n')
    if head.startswith('%fused_computation'):
      body = re.sub(r', metadata=\{[^}]*\}', '', body)
      bodies.add(re.sub(r'%[\w.\-]+', '%', body))
  assert bodies, 'no fused computation found: has the HLO text changed?'
  return len(bodies)


@pytest.mark.parametrize('assignment', ['frozen', 'dynamic'])
@pytest.mark.parametrize('form', list(FORMS))
def test_more_layers_of_the_same_shapes_compile_no_new_kernel(form,
                                                              assignment):
  tx = lambda: FORMS[form](recluster_interval=10, sample_size=512,
                           assignment=assignment)
  # (With very few layers, the batched refresh's (G, ...) shapes can
  # coincide with a layer's and share a kernel, so compare 4 and 8.)
  four, eight = (distinct_kernels(tx(), _params(n)) for n in (4, 8))
  assert eight == four, (four, eight)
  # The check can fail: Adam's step is per shape too, and SGG's refresh is
  # more than Adam's step.
  assert distinct_kernels(optax.adam(1e-3), _params(8)) < eight


def test_more_clusters_compile_no_new_kernel():
  """Past the select chain's unroll, K is a shape, not a count of kernels:
  the K-means walk back through its table is a loop and the ids are one
  comparison against all K - 1 boundaries (K = 255 compiled 5x slower
  when each cluster had kernels of its own)."""
  params = {'w': jax.ShapeDtypeStruct((96, 128), jnp.float32),
            'stack': jax.ShapeDtypeStruct((3, 32, 16), jnp.float32)}
  tx = lambda k: FORMS['with_sgg'](
      num_clusters=k, sample_size=512,
      stacked_layers={'w': False, 'stack': True})
  kernels = [distinct_kernels(tx(k), params) for k in (20, 255)]
  # Equal up to kernels that XLA shares where two shapes happen to
  # coincide (130 and 132 here; 212 and 1389 with kernels per cluster).
  assert max(kernels) - min(kernels) <= 4, kernels
