"""Soak test: a long SGG run checked for leaks, slow-down and bad state.

Trains the ``tiny`` LLaMA preset for 20,000 steps with Adam + SGG and a
short refresh interval (T=10: 2,000 refreshes), saving an Orbax checkpoint
every 1,000 steps. It records the process's resident memory (RSS) and every
step's time, and at every checkpoint checks the SGG state: cluster ids below
``K``, centres, scales and the global statistic finite, every scale inside
the clamp. The results JSON says pass or fail for each criterion, with the
numbers:

* ``rss_flat``: the last RSS sample after warm-up is within ``--rss-tol``
  (5%) of the first one;
* ``step_time_stable``: the median step time of the last 1,000 steps is
  within ``--time-tol`` (10%) of that of the first 1,000 (the compiling
  first step left out);
* ``state_finite`` and ``scales_in_clamp``: at every checkpoint;
* ``checkpoint_restores``: the last checkpoint restores the final
  parameters and optimizer state bit for bit;
* ``loss_finite``: every sampled training loss is finite.

Run (about 10 minutes on one core of the 2-core machine; see ``--help``)::

  nice -n 10 python -m experiments.soak --out runs/soak

Outputs under ``--out``: ``soak.json``, ``soak.png`` (RSS and step time over
the steps) and ``checkpoints/`` (the last ``--max-to-keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import sgg_optax
from experiments.common import cli, corpora, model_config, records
from experiments.common import model as model_lib
from experiments.common import tokenizer as tokenizer_lib
from experiments.common.batches import train_batches


def rss_mib() -> float:
  """The process's resident set size in MiB (``VmRSS``)."""
  try:
    for line in pathlib.Path('/proc/self/status').read_text().splitlines():
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  # No procfs: the peak RSS (KiB on Linux), an upper bound of the current one.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_optimizer(args: argparse.Namespace) -> optax.GradientTransformation:
  """Adam (b1, b2) with SGG in the momentum or the update form, then the
  LR."""
  sgg_kw = dict(num_clusters=args.num_clusters,
                recluster_interval=args.recluster_interval, beta3=args.beta3,
                clamp=tuple(args.clamp))
  adam = optax.scale_by_adam(args.b1, args.b2)
  if args.form == 'momentum':
    parts = [sgg_optax.with_sgg(adam, **sgg_kw)]
  else:
    parts = [adam, sgg_optax.sgg(**sgg_kw)]
  return optax.chain(*parts, optax.scale_by_learning_rate(args.lr))


def check_sgg_state(opt_state: Any, num_clusters: int,
                    clamp: tuple[float, float]) -> dict[str, Any]:
  """Finiteness and clamp checks of every SGG state in ``opt_state``.

  Returns:
    ``finite`` (ids < K; centres, scales, cluster statistics, fractions and
    the global statistic finite), ``in_clamp`` (every scale in ``clamp``, to
    float32 rounding), and the extreme scales.
  """
  states = sgg_optax.find_sgg_states(opt_state)
  if not states:
    raise ValueError('No SGG state in the optimizer state.')
  host = lambda tree: [np.asarray(x) for x in jax.device_get(
      jax.tree.leaves(tree))]
  finite, in_clamp = True, True
  lo, hi = (float(np.float32(c)) for c in clamp)
  s_min, s_max = math.inf, -math.inf
  for state in states:
    for ids in host(state.ids):
      finite &= bool(ids.size == 0 or int(ids.max()) < num_clusters)
    for field in ('centres', 'scales', 'cluster_stats', 'fractions',
                  'global_stat'):
      for x in host(getattr(state, field)):
        finite &= bool(np.all(np.isfinite(x)))
    for s in host(state.scales):
      if s.size:
        s_min, s_max = min(s_min, float(s.min())), max(s_max, float(s.max()))
        in_clamp &= bool(np.all((s >= lo * (1 - 1e-6))
                                & (s <= hi * (1 + 1e-6))))
  return {'finite': finite, 'in_clamp': in_clamp, 'scale_min': s_min,
          'scale_max': s_max}


def _flat(tree: Any) -> dict[str, jax.Array]:
  """A tree's arrays by their key path (an Orbax-friendly flat dict)."""
  return {jax.tree_util.keystr(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpoints:
  """Orbax CheckpointManager of the parameters and optimizer state."""

  def __init__(self, directory: pathlib.Path, max_to_keep: int):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, step: int, params: Any, opt_state: Any) -> None:
    ocp = self._ocp
    self.manager.save(step, args=ocp.args.StandardSave(
        {'params': _flat(params), 'opt_state': _flat(opt_state)}))
    self.manager.wait_until_finished()

  def restore_latest(self, params: Any, opt_state: Any
                     ) -> tuple[int, dict[str, Any]]:
    step = self.manager.latest_step()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        {'params': _flat(params), 'opt_state': _flat(opt_state)})
    return step, self.manager.restore(
        step, args=self._ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
  return a.keys() == b.keys() and all(
      np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _window_median(times: np.ndarray, lo: int, hi: int) -> float:
  window = times[lo:hi]
  return float(np.median(window)) if window.size else math.nan


def plot(path: pathlib.Path, rss: list[tuple[int, float]],
         times: np.ndarray, window: int, title: str) -> None:
  """RSS and (rolling median) step time over the steps."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
  steps, mib = zip(*rss) if rss else ((), ())
  ax1.plot(steps, mib, lw=1)
  ax1.set_ylabel('RSS (MiB)')
  ax1.set_title(title)
  ax1.grid(alpha=0.3)
  width = max(1, min(window // 10, len(times)))
  if len(times) >= width:
    kernel = np.lib.stride_tricks.sliding_window_view(times * 1e3, width)
    ax2.plot(np.arange(width, len(times) + 1), np.median(kernel, -1), lw=1,
             label=f'median of {width} steps')
  ax2.set_ylabel('step time (ms)')
  ax2.set_xlabel('step')
  ax2.set_yscale('log')
  ax2.grid(alpha=0.3)
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m experiments.soak',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  pos, frac = cli.positive_int, cli.positive_float
  p.add_argument('--steps', type=pos, default=20_000, help='optimizer steps')
  p.add_argument('--form', choices=('momentum', 'update'),
                 type=lambda s: 'update' if s == 'chain' else s,
                 default='momentum',
                 help="SGG's form: it clusters Adam's momentum (with_sgg) or "
                 "its update (the chain link sgg()); 'chain' is a "
                 "deprecated spelling of 'update'")
  p.add_argument('--recluster-interval', type=pos, default=10,
                 help="SGG's T")
  p.add_argument('--num-clusters', type=pos,
                 default=3, help="SGG's K")
  p.add_argument('--beta3', type=cli.decay, default=0.99, help="SGG's beta3")
  p.add_argument('--clamp', type=frac, nargs=2, default=(0.1, 10.0),
                 metavar=('LOW', 'HIGH'), help="SGG's scale clamp")
  p.add_argument('--b1', type=cli.decay, default=0.9)
  p.add_argument('--b2', type=cli.decay, default=0.95)
  p.add_argument('--lr', type=frac, default=1e-3)
  p.add_argument('--preset', choices=tuple(model_config.PRESETS),
                 default='tiny', help='experiments.common.model_config preset')
  p.add_argument('--tokenizer', choices=('bpe', 'bytes'), default='bpe')
  p.add_argument('--vocab-size', type=cli.int_at_least(258), default=4096,
                 help='BPE vocabulary size')
  p.add_argument('--corpus', choices=corpora.corpus_names(),
                 default='bbc_news')
  p.add_argument('--batch-size', type=pos, default=4)
  p.add_argument('--seq-len', type=pos, default=64)
  p.add_argument('--seed', type=cli.non_negative_int, default=0)
  p.add_argument('--ckpt-every', type=pos, default=1000,
                 help='checkpoint (and state check) period in steps')
  p.add_argument('--max-to-keep', type=pos, default=2,
                 help='checkpoints kept on disk')
  p.add_argument('--rss-every', type=pos, default=100,
                 help='RSS sampling period in steps')
  p.add_argument('--window', type=pos, default=1000,
                 help='steps in the first and last step-time windows')
  p.add_argument('--warmup', type=cli.non_negative_int, default=1000,
                 help='steps before the first RSS sample that counts')
  p.add_argument('--rss-tol', type=cli.non_negative_float, default=0.05,
                 help='allowed relative RSS growth after warm-up')
  p.add_argument('--time-tol', type=cli.non_negative_float, default=0.10,
                 help='allowed relative change of the median step time')
  p.add_argument('--loss-every', type=pos, default=100,
                 help='training-loss readback period in steps')
  p.add_argument('--out', default='runs/soak', help='output directory')
  p.add_argument('--no-progress', action='store_true',
                 help='no progress bar')
  args = p.parse_args(argv)
  if args.num_clusters > 255:
    p.error(f'argument --num-clusters: must be at most 255, got '
            f'{args.num_clusters}')
  low, high = args.clamp
  if not low <= 1.0 <= high:
    p.error(f'argument --clamp: must satisfy LOW <= 1 <= HIGH, got '
            f'{low:g} {high:g}')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  ckpt_dir = out / 'checkpoints'
  if ckpt_dir.exists():  # a soak starts fresh: no resume
    shutil.rmtree(ckpt_dir)
  t_start = time.time()

  tok = tokenizer_lib.get_tokenizer(args.tokenizer, args.corpus,
                                    args.vocab_size)
  tokens = tokenizer_lib.tokenize_split(args.corpus, corpora.TRAIN, tok)
  config = model_config.get_config(args.preset, vocab_size=tok.vocab_size,
                                   max_seq_len=args.seq_len)
  model = model_lib.Llama(config, rngs=nnx.Rngs(args.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = build_optimizer(args)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    def loss(p):
      return model_lib.loss_fn(nnx.merge(graphdef, p), batch)
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  batches = train_batches(tokens, batch_size=args.batch_size,
                          seq_len=args.seq_len, seed=args.seed)
  ckpt = Checkpoints(ckpt_dir, args.max_to_keep)
  clamp = tuple(args.clamp)
  times = np.zeros(args.steps)
  rss: list[tuple[int, float]] = [(0, rss_mib())]
  losses: list[tuple[int, float]] = []
  checks: list[dict[str, Any]] = []
  bar = tqdm(total=args.steps, desc=f'soak ({args.form})',
             disable=args.no_progress, dynamic_ncols=True, mininterval=1.0)
  for step in range(args.steps):
    batch = jnp.asarray(next(batches))
    t0 = time.perf_counter()
    params, opt_state, value = train_step(params, opt_state, batch)
    jax.block_until_ready((params, opt_state))
    times[step] = time.perf_counter() - t0
    done = step + 1
    if done % args.loss_every == 0 or done == args.steps:
      losses.append((done, float(value)))
      bar.set_postfix(loss=f'{losses[-1][1]:.3f}', rss=f'{rss[-1][1]:.0f}M',
                      refresh=False)
    if done % args.ckpt_every == 0 or done == args.steps:
      before = rss_mib()
      ckpt.save(done, params, opt_state)
      check = check_sgg_state(opt_state, args.num_clusters, clamp)
      checks.append({'step': done, **check, 'rss_before_mib': before,
                     'rss_after_mib': rss_mib()})
    if done % args.rss_every == 0 or done == args.steps:
      rss.append((done, rss_mib()))
    bar.update(1)
  bar.close()

  last_step, restored = ckpt.restore_latest(params, opt_state)
  restores = last_step == args.steps and _same(
      restored['params'], _flat(params)) and _same(
          restored['opt_state'], _flat(opt_state))
  ckpt.close()

  # Criteria.
  after = [(s, m) for s, m in rss if s >= min(args.warmup, args.steps)]
  rss_first, rss_last = after[0][1], after[-1][1]
  rss_growth = rss_last / rss_first - 1.0
  # Where the growth happens: in the checkpoint saves (and state checks) or
  # in the training steps between them.
  in_saves = sum(c['rss_after_mib'] - c['rss_before_mib'] for c in checks
                 if c['step'] > after[0][0])
  steps_after, mib_after = np.array(after, dtype=float).T
  slope = (float(np.polyfit(steps_after, mib_after, 1)[0]) * 1000
           if len(after) > 1 else 0.0)
  window = min(args.window, max(args.steps - 1, 1))
  t_first = _window_median(times, 1, 1 + window)
  t_last = _window_median(times, args.steps - window, args.steps)
  drift = t_last / t_first - 1.0
  finite_losses = all(math.isfinite(v) for _, v in losses)
  criteria = {
      'rss_flat': {
          'pass': bool(abs(rss_growth) <= args.rss_tol),
          'first_mib': rss_first, 'last_mib': rss_last,
          'first_step': after[0][0], 'last_step': after[-1][0],
          'relative_change': rss_growth, 'tolerance': args.rss_tol,
          'max_mib_after_warmup': max(m for _, m in after),
          'slope_mib_per_1000_steps': slope,
          'growth_in_checkpoint_saves_mib': in_saves,
          'growth_between_saves_mib': rss_last - rss_first - in_saves},
      'step_time_stable': {
          'pass': bool(abs(drift) <= args.time_tol),
          'first_window_median_ms': 1e3 * t_first,
          'last_window_median_ms': 1e3 * t_last,
          'first_window_mean_ms': 1e3 * float(np.mean(times[1:1 + window])),
          'last_window_mean_ms': 1e3 * float(np.mean(times[-window:])),
          'window_steps': window, 'relative_change': drift,
          'tolerance': args.time_tol,
          'first_step_ms': 1e3 * float(times[0])},
      'state_finite': {
          'pass': all(c['finite'] for c in checks),
          'checks': len(checks),
          'failed_at': [c['step'] for c in checks if not c['finite']]},
      'scales_in_clamp': {
          'pass': all(c['in_clamp'] for c in checks), 'clamp': list(clamp),
          'scale_min': min(c['scale_min'] for c in checks),
          'scale_max': max(c['scale_max'] for c in checks),
          'failed_at': [c['step'] for c in checks if not c['in_clamp']]},
      'checkpoint_restores': {'pass': bool(restores), 'step': last_step},
      'loss_finite': {'pass': finite_losses, 'samples': len(losses)},
  }
  refreshes = args.steps // args.recluster_interval
  result = {
      'passed': all(c['pass'] for c in criteria.values()),
      'criteria': criteria,
      'config': {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in vars(args).items()},
      'refreshes': refreshes,
      'num_params': sum(int(x.size) for x in jax.tree.leaves(params)),
      'wall_s': time.time() - t_start,
      'loss_first': losses[0][1] if losses else None,
      'loss_last': losses[-1][1] if losses else None,
      'curves': {
          'rss_mib': rss, 'loss': losses, 'checks': checks,
          'step_ms_per_100': [
              [int(i + 100), 1e3 * float(np.median(times[i:i + 100]))]
              for i in range(0, args.steps, 100)]},
      'provenance': records.provenance(
          sys.argv if argv is None
          else ['python', '-m', 'experiments.soak', *argv]),
  }
  (out / 'soak.json').write_text(json.dumps(result, indent=1))
  plot(out / 'soak.png', rss, times, window,
       f'soak: {args.steps} steps, {args.form} form, '
       f'T={args.recluster_interval} ({refreshes} refreshes)')
  verdict = 'PASS' if result['passed'] else 'FAIL'
  print(f'{verdict}: ' + ', '.join(
      f"{k}={'ok' if c['pass'] else 'FAIL'}" for k, c in criteria.items()))
  print(f"RSS {rss_first:.0f} -> {rss_last:.0f} MiB ({100 * rss_growth:+.1f}"
        f"%), step {1e3 * t_first:.2f} -> {1e3 * t_last:.2f} ms "
        f"({100 * drift:+.1f}%), wall {result['wall_s']:.0f} s; "
        f"wrote {out / 'soak.json'}")
  return result


if __name__ == '__main__':
  main()
