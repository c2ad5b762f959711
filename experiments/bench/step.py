"""Step time, compile time and memory of SGG against its base optimizer.

Everything is measured in one process: each optimizer's jitted train step
(``update`` + ``apply_updates``, parameters and state donated) is compiled
and warmed up (``--warmup`` calls each, enough for the allocator to settle
on the large temporaries), and then each base optimizer and its SGG
variants are timed in interleaved rounds, in a random order every round,
so that machine load and the cache state left by the previous step hit
them alike. A round takes the fastest of ``--calls`` calls of each of
``--instances`` copies of a variant's buffers (where the allocator put a
copy moves its step time by up to 10%). Reported ratios are medians over
rounds of the per-round ratio to the base optimizer (and the minimum), for:

* a step that does not re-cluster (``recluster_interval`` never reached),
* a step that re-clusters (``recluster_interval=1``),
* the amortised cost at ``T``: ``((T - 1) * plain + refresh) / T``.

Every SGG optimizer is timed twice: with SGG's own on-device schedule (a
``lax.cond`` in every step), and with the refresh decided by the loop
(rows "loop decides": ``sgg_refresh=False`` for the plain step, ``True``
for the refresh step; two programs, neither with a conditional).

It also counts SGG's state bytes beyond the base optimizer per grouped
parameter, the compile time of the plain step (the time to the first step)
and of the refresh step, and the compiled plain step's memory
(``compiled.memory_analysis()``). Results go to a JSON and a Markdown table.

Run ``python -m experiments.bench_step --help``.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import sgg_optax
from experiments.common import cli, records

NEVER = 2**30  # a recluster interval no benchmark reaches


def matrix_tree(size: int) -> dict[str, tuple[int, ...]]:
  """One square-ish matrix of about ``size`` parameters."""
  side = int(math.sqrt(size))
  return {'w': (side, size // side)}


def llama_tree(size: int) -> dict[str, tuple[int, ...]]:
  """A LLaMA-like tree of about ``size`` parameters and ~100 leaves.

  Token embedding, untied output head, and per layer four attention kernels,
  three SwiGLU kernels and two norm scales (the norms are 1-D, so SGG leaves
  them alone by default).
  """
  layers, vocab = 10, 8192 if size > 1e6 else 512
  # solve 2*vocab*d + layers*(4 d^2 + 3 * d * (8d/3)) = size for d
  a, b = 12 * layers, 2 * vocab
  dim = max(64, round((-b + math.sqrt(b * b + 4 * a * size)) / (2 * a) / 64)
            * 64)
  ffn = round(8 * dim / 3 / 64) * 64
  shapes = {'embed': (vocab, dim), 'head': (dim, vocab), 'final_norm': (dim,)}
  for i in range(layers):
    for name in ('q', 'k', 'v', 'o'):
      shapes[f'layer{i:02d}/attn_{name}'] = (dim, dim)
    shapes[f'layer{i:02d}/mlp_gate'] = (dim, ffn)
    shapes[f'layer{i:02d}/mlp_up'] = (dim, ffn)
    shapes[f'layer{i:02d}/mlp_down'] = (ffn, dim)
    shapes[f'layer{i:02d}/attn_norm'] = (dim,)
    shapes[f'layer{i:02d}/mlp_norm'] = (dim,)
  return shapes


TREES = {'matrix': matrix_tree, 'llama': llama_tree}


def optimizers(lr: float, interval: int) -> dict[str, tuple[str, Callable]]:
  """name -> (base name, factory) with SGG re-clustering every ``interval``."""
  kw = dict(recluster_interval=interval)
  with_lr = lambda tx: optax.chain(tx, optax.scale_by_learning_rate(lr))
  return {
      'adam': ('adam', lambda: optax.adam(lr)),
      'adam+sgg (chain link)': ('adam', lambda: optax.chain(
          optax.scale_by_adam(), sgg_optax.sgg(**kw),
          optax.scale_by_learning_rate(lr))),
      'adam+sgg (chain link, dynamic ids)': ('adam', lambda: optax.chain(
          optax.scale_by_adam(), sgg_optax.sgg(assignment='dynamic', **kw),
          optax.scale_by_learning_rate(lr))),
      'adam+sgg (with_sgg, momentum)': ('adam', lambda: with_lr(
          sgg_optax.with_sgg(optax.scale_by_adam(), **kw))),
      'adafactor': ('adafactor', lambda: optax.adafactor(lr)),
      'adafactor+sgg': ('adafactor', lambda: sgg_optax.adafactor_sgg(
          lr, **kw)),
  }


class Step:
  """A compiled, donated train step and its current buffers (``extra_args``
  go to ``tx.update``: ``sgg_refresh`` for a loop-decided refresh)."""

  def __init__(self, tx: optax.GradientTransformation, params, grads,
               instances: int = 1, **extra_args):
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params, **extra_args)
      return optax.apply_updates(params, updates), state

    # Several copies of the buffers (`instances`): how fast a step runs
    # depends on where the allocator put them (one copy may run 10% slower
    # than another of the same program, the first allocated most often);
    # a round times every copy and keeps the fastest.
    self.buffers = [(jax.tree.map(jnp.copy, params),
                     tx.init(jax.tree.map(jnp.copy, params)))
                    for _ in range(instances)]
    self.grads = grads
    jax.clear_caches()  # time a real compile, not a cache hit
    start = time.perf_counter()
    self.compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        *self.buffers[0], grads).compile()
    self.compile_s = time.perf_counter() - start
    mem = self.compiled.memory_analysis()
    self.memory = None if mem is None else {
        k: int(getattr(mem, k)) for k in (
            'argument_size_in_bytes', 'output_size_in_bytes',
            'temp_size_in_bytes', 'alias_size_in_bytes',
            'generated_code_size_in_bytes') if hasattr(mem, k)}

  @property
  def state(self):
    return self.buffers[0][1]

  def __call__(self, calls: int = 1) -> float:
    """The fastest of ``calls`` steps of every instance, in seconds."""
    best = math.inf
    for k, (params, state) in enumerate(self.buffers):
      for _ in range(calls):
        start = time.perf_counter()
        params, state = self.compiled(params, state, self.grads)
        jax.block_until_ready(params)
        best = min(best, time.perf_counter() - start)
      self.buffers[k] = params, state
    return best


def _state_bytes(state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state))


def _grouped_size(params) -> int:
  return sum(p.size for p in jax.tree.leaves(params) if p.ndim >= 2)


def bench_tree(name: str, shapes: dict, args) -> dict:
  """All optimizers on one parameter tree."""
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
            for k, s in shapes.items()}
  grads = {k: jnp.asarray(rng.standard_t(3, size=s) * 1e-2, jnp.float32)
           for k, s in shapes.items()}
  size = sum(p.size for p in params.values())
  plain = optimizers(args.lr, NEVER)
  refresh = optimizers(args.lr, 1)
  if args.optimizers:
    keep = set(args.optimizers) | {plain[o][0] for o in args.optimizers}
    plain = {k: v for k, v in plain.items() if k in keep}
  steps = {}
  bases = {}
  n = args.instances
  for opt in tqdm(plain, desc=f'{name}: compile', leave=False):
    bases[opt] = plain[opt][0]
    steps[(opt, 'plain')] = Step(plain[opt][1](), params, grads, n)
    if opt == plain[opt][0]:
      continue
    steps[(opt, 'refresh')] = Step(refresh[opt][1](), params, grads, n)
    # The same optimizer with the refresh decided by the loop: a plain and
    # a refresh step, neither holding a lax.cond.
    loop = f'{opt}, loop decides'
    bases[loop] = plain[opt][0]
    for kind, flag in (('plain', False), ('refresh', True)):
      steps[(loop, kind)] = Step(plain[opt][1](), params, grads, n,
                                 sgg_refresh=flag)
  for step in steps.values():
    step(args.warmup)
  times = {key: [] for key in steps}
  # Each base optimizer's variants are timed in their own rounds, in a new
  # random order every round: a step timed right after one that wrote
  # large temporaries (Adafactor's, the chain link's) runs slower, and a
  # fixed order would charge that to the same variant every round.
  order = np.random.default_rng(0)
  for base in dict.fromkeys(bases.values()):
    group = [key for key in steps if bases[key[0]] == base]
    for _ in tqdm(range(args.repeats), desc=f'{name}: {base} rounds',
                  leave=False):
      for i in order.permutation(len(group)):
        times[group[i]].append(steps[group[i]](args.calls))
  rows = []
  for opt, base in bases.items():
    base_t = np.array(times[(base, 'plain')])
    t = np.array(times[(opt, 'plain')])
    row = {
        'optimizer': opt, 'base': base,
        'step_ms': 1e3 * float(np.median(t)),
        'plain_ratio': float(np.median(t / base_t)),
        'plain_ratio_min': float(np.min(t / base_t)),
        'compile_s': steps[(opt, 'plain')].compile_s,
        'compile_ratio': (steps[(opt, 'plain')].compile_s
                          / steps[(base, 'plain')].compile_s),
        'memory': steps[(opt, 'plain')].memory,
        'temp_mib': (steps[(opt, 'plain')].memory or {}).get(
            'temp_size_in_bytes', 0) / 2**20,
        'state_bytes': _state_bytes(steps[(opt, 'plain')].state),
    }
    extra = row['state_bytes'] - _state_bytes(steps[(base, 'plain')].state)
    row['extra_state_bytes_per_grouped_param'] = extra / _grouped_size(params)
    if (opt, 'refresh') in steps:
      r = np.array(times[(opt, 'refresh')]) / base_t
      row['refresh_ratio'] = float(np.median(r))
      row['refresh_ratio_min'] = float(np.min(r))
      T = args.recluster_interval
      row['amortised_ratio'] = ((T - 1) * row['plain_ratio']
                                + row['refresh_ratio']) / T
      row['refresh_compile_s'] = steps[(opt, 'refresh')].compile_s
      row['refresh_temp_mib'] = (steps[(opt, 'refresh')].memory or {}).get(
          'temp_size_in_bytes', 0) / 2**20
    rows.append(row)
  return {'tree': name, 'params': int(size), 'leaves': len(shapes),
          'rows': rows}


def markdown(results: dict) -> str:
  """The results as Markdown tables, one per tree."""
  out = [f"Device: {results['device']}; {results['date']}; "
         f"{results['repeats']} interleaved rounds per base optimizer, "
         f"in random order (fastest of {results['calls']} calls of each of "
         f"{results['instances']} buffer copies), "
         f"medians of per-round "
         f"ratios to the base (min in brackets); amortised at "
         f"T={results['recluster_interval']}.", '']
  env = results['provenance'].get('environment')
  if env:
    out[-1:-1] = ['Environment: ' + ', '.join(f'`{k}={v}`'
                                              for k, v in env.items()) + '.']
  for tree in results['trees']:
    out.append(f"**{tree['tree']}** tree: {tree['params'] / 1e6:.1f}M "
               f"parameters, {tree['leaves']} leaves")
    out.append('')
    out.append('| optimizer | step (ms) | plain step | refresh step | '
               'amortised | compile | refresh compile | '
               'temporaries (MiB) | extra state (B/param) |')
    out.append('|---|---|---|---|---|---|---|---|---|')
    for r in tree['rows']:
      if r['optimizer'] == r['base']:
        out.append(f"| {r['optimizer']} | {r['step_ms']:.2f} | 1 | | | "
                   f"{r['compile_s']:.2f} s | | {r['temp_mib']:.2f} | |")
        continue
      out.append(
          f"| {r['optimizer']} | {r['step_ms']:.2f} | "
          f"{r['plain_ratio']:.3f} ({r['plain_ratio_min']:.3f}) | "
          f"{r['refresh_ratio']:.2f} ({r['refresh_ratio_min']:.2f}) | "
          f"{r['amortised_ratio']:.3f} | {r['compile_ratio']:.2f}x | "
          f"{r['refresh_compile_s']:.2f} s | {r['temp_mib']:.2f} | "
          f"{r['extra_state_bytes_per_grouped_param']:.3f} |")
    out.append('')
  return '\n'.join(out)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.bench_step',
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--trees', nargs='+', default=list(TREES),
                      choices=list(TREES))
  parser.add_argument('--size', type=cli.int_at_least(1000),
                      default=16_000_000, help='parameters per tree')
  parser.add_argument('--repeats', type=cli.positive_int, default=30,
                      help='interleaved timing rounds')
  parser.add_argument('--warmup', type=cli.non_negative_int, default=20,
                      help='untimed calls of each variant before timing')
  parser.add_argument('--calls', type=cli.positive_int, default=3,
                      help='calls per variant per round; the fastest counts')
  parser.add_argument('--instances', type=cli.positive_int, default=2,
                      help='copies of each variant\'s buffers; each is '
                      'called --calls times per round, the fastest counts')
  parser.add_argument('--recluster-interval', type=cli.positive_int,
                      default=500, help='T used for the amortised ratio')
  parser.add_argument('--optimizers', nargs='+', default=None,
                      choices=list(optimizers(1e-3, 1)),
                      help='subset of optimizers to time (their bases are '
                      'added); default all')
  parser.add_argument('--lr', type=cli.positive_float, default=1e-3)
  parser.add_argument('--pin-core', type=cli.non_negative_int, default=None,
                      help='pin this process to one CPU core (CPU runs)')
  parser.add_argument('--out', default='runs/bench_step',
                      help='directory for results.json, results.md and '
                      'COMMAND.txt')
  parser.add_argument('--smoke', action='store_true',
                      help='tiny trees and few rounds (CI)')
  return parser


def main(argv=None) -> None:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.pin_core is not None and args.pin_core not in os.sched_getaffinity(
      0):
    parser.error(f'argument --pin-core: core {args.pin_core} is not '
                 f'available; usable: {sorted(os.sched_getaffinity(0))}')
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    parser.error(f'argument --out: {out} exists and is not a directory')
  if args.smoke:
    args.size, args.repeats, args.warmup, args.calls = 50_000, 2, 1, 1
  if args.pin_core is not None:
    os.sched_setaffinity(0, {args.pin_core})
  device = jax.devices()[0]
  command = cli.command_line(argv, 'experiments.bench_step')
  results = {
      'device': f'{device.platform}: {device.device_kind} '
                f'({platform.processor() or platform.machine()}, '
                f'{len(os.sched_getaffinity(0))} cores usable)',
      'date': datetime.date.today().isoformat(),
      'jax': jax.__version__, 'optax': optax.__version__,
      'provenance': records.provenance(shlex.split(command)),
      'repeats': args.repeats, 'calls': args.calls,
      'instances': args.instances,
      'recluster_interval': args.recluster_interval,
      'trees': [bench_tree(t, TREES[t](args.size), args) for t in args.trees],
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  table = markdown(results)
  (out / 'results.md').write_text(table + '\n')
  env = ''.join(f'{k}={shlex.quote(v)} '
                for k, v in results['provenance']['environment'].items())
  (out / 'COMMAND.txt').write_text(env + command + '\n')
  print(table)


if __name__ == '__main__':
  main()
