"""SGG's fixed costs against Adam: host dispatch by depth, train-step compile.

Two measurements that ``bench_step`` (device time of large steps) does not
make, each against Adam in one process:

* ``dispatch``: the wall time of one jitted optimizer step (``update`` +
  ``apply_updates``, state donated, the loop deciding the refresh:
  ``sgg_refresh=False``) on a tiny LLaMA-like tree of 12, 48 and 96
  layers (seven 8x8-ish matrices and two norm scales a layer), where the
  device work is negligible and the time is the host's dispatch of the
  state's arrays. Interleaved rounds in a random order; each round takes
  the fastest of ``--calls`` calls; reported: the median over rounds of the
  ratio to Adam, and the state's array count.
* ``compile``: the compile time and fused-kernel count of the program
  users compile, ``experiments.pretraining.step``'s whole train step (forward,
  backward and update) for a batch of ``--batch-size`` x ``--seq-len``:
  Adam, SGG's own schedule (``refresh=None``: a ``lax.cond``), and the
  loop-decided plain and refresh steps, for both SGG forms; for the
  momentum form also its refresh as a program of its own
  (``SGGTransformation.refresh`` on the optimizer state: no forward or
  backward pass), which a loop pairs with the plain step.

Run ``python -m experiments.bench_overhead --help``; results go to
``--out`` (``results.json`` and ``results.md``).
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import sgg_optax
from experiments.common import cli, records

FORMS = ('adam', 'chain', 'chain_dynamic', 'momentum', 'momentum_dynamic')


def tiny_tree(layers: int) -> dict:
  """A LLaMA-like tree with negligible device work: 9 leaves a layer."""
  layer = {'q': (8, 8), 'k': (8, 8), 'v': (8, 8), 'o': (8, 8),
           'gate': (8, 16), 'up': (8, 16), 'down': (16, 8),
           'attn_norm': (8,), 'mlp_norm': (8,)}
  tree = {f'layer_{i}': {k: jnp.full(s, 0.1, jnp.float32)
                         for k, s in layer.items()} for i in range(layers)}
  tree['embed'] = jnp.full((64, 8), 0.1, jnp.float32)
  return tree


def optimizer(form: str) -> optax.GradientTransformationExtraArgs:
  """Adam, or Adam with SGG in either form; the refresh never comes."""
  kw = dict(recluster_interval=2**30,
            assignment='dynamic' if form.endswith('dynamic') else 'frozen')
  lr = optax.scale_by_learning_rate(1e-3)
  if form == 'adam':
    return optax.with_extra_args_support(
        optax.chain(optax.scale_by_adam(), lr))
  if form.startswith('chain'):
    return optax.chain(optax.scale_by_adam(), sgg_optax.sgg(**kw), lr)
  return optax.chain(sgg_optax.with_sgg(optax.scale_by_adam(), **kw), lr)


def dispatch(layers: list[int], rounds: int, calls: int, seed: int
             ) -> list[dict]:
  """Per depth and form: state arrays, and the step time over Adam's."""
  rows = []
  rng = np.random.default_rng(seed)
  for depth in layers:
    params = tiny_tree(depth)
    grads = jax.tree.map(lambda p: p * 0.5, params)
    steps, states, extra = {}, {}, {}
    for form in FORMS:
      tx = optimizer(form)
      extra[form] = {} if form == 'adam' else {'sgg_refresh': False}

      def step(p, s, g, tx=tx, kw=extra[form]):
        u, s = tx.update(g, s, p, **kw)
        return optax.apply_updates(p, u), s
      steps[form] = jax.jit(step, donate_argnums=(0, 1))
      states[form] = (jax.tree.map(jnp.copy, params), tx.init(params))
      for _ in range(5):  # compile and warm up
        states[form] = steps[form](*states[form], grads)
      jax.block_until_ready(states[form])
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    for _ in tqdm(range(rounds), desc=f'dispatch, {depth} layers',
                  leave=False):
      for form in rng.permutation(FORMS):
        best = float('inf')
        for _ in range(calls):
          t0 = time.perf_counter()
          states[form] = steps[form](*states[form], grads)
          jax.block_until_ready(states[form])
          best = min(best, time.perf_counter() - t0)
        times[form].append(best)
    adam = np.asarray(times['adam'])
    for form in FORMS:
      ratio = np.asarray(times[form]) / adam
      rows.append({
          'layers': depth, 'form': form,
          'state_arrays': len(jax.tree.leaves(states[form][1])),
          'step_us': 1e6 * float(np.median(times[form])),
          'ratio_median': float(np.median(ratio)),
          'ratio_min': float(np.min(ratio))})
  return rows


def _refresh_program(cfg):
  """The momentum form's refresh on the split (model, optimizer) state:
  ``SGGTransformation.refresh`` of the same SGG as the run's optimizer."""
  from flax import nnx

  from experiments.pretraining import optim

  tx = sgg_optax.adamw_sgg(1.0, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           cluster_momentum=True, **optim._sgg_kwargs(cfg))

  def program(graphdef, state):
    model, opt = nnx.merge(graphdef, state)
    new = tx.refresh(nnx.as_pure(opt.opt_state))
    nnx.update(opt.opt_state, nnx.state(new))
    return nnx.state((model, opt))

  return program


def compile_times(presets: list[str], batch: int, seq_len: int,
                  repeats: int) -> list[dict]:
  """Compile seconds and fused kernels of the pre-training train step."""
  from flax import nnx

  from experiments.pretraining import config as train_config
  from experiments.pretraining import distributed, optim, step

  variants = [('adam', None), ('adam_sgg_update', None),
              ('adam_sgg_update', False), ('adam_sgg_update', True),
              ('adam_sgg_momentum', None),
              ('adam_sgg_momentum', False), ('adam_sgg_momentum', True),
              ('adam_sgg_momentum', 'program')]
  rows = []
  for preset in presets:
    for name, refresh in tqdm(variants, desc=f'compile, {preset}',
                              leave=False):
      cfg = train_config.TrainConfig(preset=preset, optimizer=name,
                                     batch_size=batch, seq_len=seq_len)
      config = step.model_config(cfg, vocab_size=8192)
      mesh = distributed.make_mesh('data=1')
      with jax.set_mesh(mesh):
        model, opt = step._create(config, optim.build_optimizer(cfg),
                                  distributed.sharding_rules(mesh),
                                  jnp.int32(0))
        graphdef, state = nnx.split((model, opt))
        tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)
        if refresh == 'program':
          fn, args = (jax.jit(_refresh_program(cfg), static_argnums=0),
                      (graphdef, state))
        else:
          fn, args = step._train_step, (graphdef, state, tokens, refresh)
        seconds = []
        for _ in range(repeats):
          jax.clear_caches()
          t0 = time.perf_counter()
          compiled = fn.lower(*args).compile()
          seconds.append(time.perf_counter() - t0)
      text = compiled.as_text()
      rows.append({'preset': preset, 'optimizer': name,
                   'refresh': refresh, 'compile_s': float(np.min(seconds)),
                   'fusions': text.count(' fusion('),
                   'conditionals': text.count(' conditional(')})
  return rows


def _table(dispatch_rows: list[dict], compile_rows: list[dict]) -> str:
  lines = ['## Host dispatch of one loop-decided plain step (tiny layers)',
           '', '| layers | form | state arrays | step (us) | / Adam, median '
           '(min) |', '|---|---|---|---|---|']
  for r in dispatch_rows:
    lines.append(f"| {r['layers']} | {r['form']} | {r['state_arrays']} | "
                 f"{r['step_us']:.0f} | {r['ratio_median']:.3f} "
                 f"({r['ratio_min']:.3f}) |")
  lines += ['', '## Compile time of the whole train step', '',
            '| preset | optimizer | refresh | compile (s) | / Adam | fused '
            'kernels | conditionals |', '|---|---|---|---|---|---|---|']
  adam = {r['preset']: r['compile_s'] for r in compile_rows
          if r['optimizer'] == 'adam'}
  for r in compile_rows:
    label = {None: "SGG's own" if r['optimizer'] != 'adam' else '',
             False: 'loop: plain', True: 'loop: refresh',
             'program': 'refresh program (no train step)'}[r['refresh']]
    lines.append(f"| {r['preset']} | {r['optimizer']} | {label} | "
                 f"{r['compile_s']:.2f} | "
                 f"{r['compile_s'] / adam[r['preset']]:.2f} | "
                 f"{r['fusions']} | {r['conditionals']} |")
  pairs = _pairs(compile_rows)
  if pairs:
    lines += ['', 'What a loop that decides the refresh compiles, over '
              "Adam's train step:", '',
              '| preset | optimizer | plain step + | compile / Adam |',
              '|---|---|---|---|']
    lines += [f'| {p} | {o} | {w} | {x:.2f} |' for p, o, w, x in pairs]
  return '\n'.join(lines) + '\n'


def _pairs(compile_rows: list[dict]) -> list[tuple[str, str, str, float]]:
  """(preset, optimizer, what refreshes, plain + that over Adam)."""
  seconds = {(r['preset'], r['optimizer'], r['refresh']): r['compile_s']
             for r in compile_rows}
  out = []
  for (preset, name, refresh), s in seconds.items():
    plain = seconds.get((preset, name, False))
    if refresh in (True, 'program') and plain is not None:
      what = ('refresh train step' if refresh is True
              else 'refresh program')
      out.append((preset, name, what,
                  (plain + s) / seconds[(preset, 'adam', None)]))
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.bench_overhead',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--layers', type=cli.positive_int, nargs='+',
                      default=[12, 48, 96], help='depths of the tiny tree')
  parser.add_argument('--rounds', type=cli.positive_int, default=30)
  parser.add_argument('--calls', type=cli.positive_int, default=5,
                      help='calls per round; the fastest counts')
  parser.add_argument('--presets', nargs='*', default=['small', '60m'],
                      help='presets whose train-step compile is timed '
                      '(none: skip)')
  parser.add_argument('--batch-size', type=cli.positive_int, default=8)
  parser.add_argument('--seq-len', type=cli.positive_int, default=256)
  parser.add_argument('--compile-repeats', type=cli.positive_int,
                      default=2, help='compiles per variant; the fastest')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='runs/bench_overhead')
  args = parser.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  d = dispatch(args.layers, args.rounds, args.calls, args.seed)
  c = compile_times(args.presets, args.batch_size, args.seq_len,
                    args.compile_repeats) if args.presets else []
  table = _table(d, c)
  print(table)
  records.write_json(out / 'results.json', {
      'dispatch': d, 'compile': c, 'args': vars(args),
      'provenance': records.provenance()})
  (out / 'results.md').write_text(table)


if __name__ == '__main__':
  main()
