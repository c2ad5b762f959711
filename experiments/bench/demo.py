"""A one-minute demo: a small MLP trained with Adam and with Adam+SGG.

Run ``python -m experiments.demo --help``. It prints both training losses
and SGG's per-layer cluster scales at the end.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import trange

import sgg_optax


def _data(seed: int, n: int = 512, dim: int = 32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  w = rng.normal(size=(dim, 1)).astype(np.float32)
  y = np.sin(x @ w) + 0.1 * rng.normal(size=(n, 1)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _init(key, sizes):
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    params[f'layer{i}'] = {'kernel': jax.random.normal(sub, (a, b)) / a**0.5,
                           'bias': jnp.zeros((b,))}
  return params


def _loss(params, x, y):
  h = x
  for i in range(len(params)):
    layer = params[f'layer{i}']
    h = h @ layer['kernel'] + layer['bias']
    if i < len(params) - 1:
      h = jax.nn.gelu(h)
  return jnp.mean((h - y) ** 2)


def train(tx: optax.GradientTransformation, steps: int, seed: int):
  x, y = _data(seed)
  params = _init(jax.random.key(seed), [x.shape[1], 128, 128, 1])
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  for _ in trange(steps, leave=False):
    params, state, loss = step(params, state)
  return float(loss), state


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--recluster-interval', type=int, default=50)
  parser.add_argument('--beta3', type=float, default=0.9)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  adam_loss, _ = train(optax.adam(args.lr), args.steps, args.seed)
  tx = optax.chain(optax.scale_by_adam(),
                   sgg_optax.sgg(recluster_interval=args.recluster_interval,
                                 beta3=args.beta3),
                   optax.scale_by_learning_rate(args.lr))
  sgg_loss, state = train(tx, args.steps, args.seed)
  print(f'final training loss  adam: {adam_loss:.5f}  adam+sgg: {sgg_loss:.5f}')
  summary = sgg_optax.cluster_summary(state)
  for name, scales in zip(summary.names, summary.scales):
    print(f'  {name:16s} scales {np.array2string(scales, precision=3)}')


if __name__ == '__main__':
  main()
