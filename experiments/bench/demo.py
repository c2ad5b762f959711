"""A one-minute demo: AdamW and AdamW+SGG on the same small regression.

Run ``python -m experiments.demo --help``. A 3-layer MLP learns a noisy
function of 32 inputs from a small training set; both optimizers start from
the same initialisation, see the same batches and use the same learning
rate. It prints the loss on held-out data (examples never trained on) as
training goes, and SGG's per-layer cluster scales at the end: what SGG
changed. One seed and one learning rate: the demo shows SGG at work, it
does not rank the optimizers (for that, ``python -m experiments.pretrain``
tunes each one and compares seeds).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sgg_optax
from experiments.common import cli

N_TEST = 2048  # held-out examples
NOISE = 0.3  # sd of the label noise


def _data(seed: int, n_train: int, n_test: int = N_TEST, dim: int = 32):
  """Training and held-out examples of one noisy function."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(dim, 4)).astype(np.float32) / np.sqrt(dim)
  def draw(n):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.sin(x @ w).sum(1, keepdims=True)
    return jnp.asarray(x), jnp.asarray(y + NOISE * rng.normal(size=y.shape)
                                       .astype(np.float32))
  return draw(n_train), draw(n_test)


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


def train(tx, args, report_every):
  """Trains with ``tx``; returns the held-out losses and the final state."""
  (x, y), (x_test, y_test) = _data(args.seed, args.train_examples)
  params = _init(jax.random.key(args.seed), [x.shape[1], 128, 128, 1])
  state = tx.init(params)

  @jax.jit
  def step(params, state, idx):
    grads = jax.grad(_loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  evaluate = jax.jit(_loss)
  rng = np.random.default_rng(args.seed)
  held_out = {}
  for t in range(1, args.steps + 1):
    idx = rng.choice(len(x), args.batch_size, replace=False)
    params, state = step(params, state, idx)
    if t % report_every == 0:
      held_out[t] = float(evaluate(params, x_test, y_test))
  return held_out, state


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.demo',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--steps', type=cli.positive_int, default=400,
                      help='optimizer steps of each run')
  parser.add_argument('--lr', type=cli.positive_float, default=3e-3,
                      help='the learning rate of both optimizers')
  parser.add_argument('--batch-size', type=cli.positive_int, default=64,
                      help='training examples per step')
  parser.add_argument('--train-examples', type=cli.int_at_least(64),
                      default=2048, help="size of the training set")
  parser.add_argument('--recluster-interval-frac',
                      type=cli.float_in(0.0, 1.0, low_open=True),
                      default=0.05,
                      help="SGG's T as a fraction of --steps (5%%: 20 "
                           'refreshes)')
  parser.add_argument('--beta3', type=cli.decay, default=0.9,
                      help="SGG's scale EMA decay")
  parser.add_argument('--seed', type=cli.non_negative_int, default=0,
                      help='data, initialisation and batch order')
  args = parser.parse_args(argv)
  if args.batch_size > args.train_examples:
    parser.error('argument --batch-size: larger than --train-examples')
  t = max(1, round(args.recluster_interval_frac * args.steps))
  every = max(1, args.steps // 4)
  adam, _ = train(optax.adamw(args.lr, weight_decay=0.0), args, every)
  sgg, state = train(sgg_optax.adamw_sgg(
      args.lr, weight_decay=0.0, recluster_interval=t, beta3=args.beta3),
      args, every)
  (_, _), (_, y_test) = _data(args.seed, args.train_examples)
  print(f'held-out loss: mean squared error on {N_TEST} unseen examples '
        f'(predicting 0 scores {float(jnp.mean(y_test ** 2)):.3f}, the '
        f'noise alone {NOISE ** 2:.3f}); SGG refreshes every {t} steps')
  print(f'{"step":>6} {"AdamW":>8} {"AdamW+SGG":>10}')
  for step in adam:
    print(f'{step:>6} {adam[step]:8.4f} {sgg[step]:10.4f}')
  summary = sgg_optax.cluster_summary(state)
  print('SGG cluster scales at the end (1 = unchanged step):')
  for name, scales in zip(summary.names, summary.scales):
    print(f'  {name:16s} {np.array2string(scales, precision=2)}')


if __name__ == '__main__':
  main()
