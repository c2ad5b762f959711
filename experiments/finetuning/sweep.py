"""The fine-tuning sweep: tune every arm on dev, then run its seeds.

`python -m experiments.finetune` parses and checks the command line, then
calls `main`; the protocol is described there.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.common import records
from experiments.finetuning import aggregate as FA
from experiments.finetuning import report as FR

Run = dict[str, Any]
# get(lr, seed, T, beta3) -> run; T, beta3 None for AdamW.
Getter = Callable[[float, int, int | None, float | None], Run]


def lr_search(get: Callable[[float], Run], grid: Sequence[float],
              extensions: int) -> tuple[Run, list[float]]:
  """The best run on dev over `grid`, extended past an edge while the best
  rate sits there (geometric step of the grid, `extensions` times at most).

  Returns:
    The best run and every rate tried.
  """
  runs = {lr: get(lr) for lr in sorted(grid)}
  lrs = sorted(runs)
  ratio = lrs[-1] / lrs[-2] if len(lrs) > 1 else None
  for _ in range(extensions if ratio else 0):
    best, lrs = FA.best_of(list(runs.values())), sorted(runs)
    if best['lr'] == lrs[-1]:
      new = lrs[-1] * ratio
    elif best['lr'] == lrs[0]:
      new = lrs[0] / ratio
    else:
      break
    new = float(f'{new:.3g}')
    runs[new] = get(new)
  return FA.best_of(list(runs.values())), sorted(runs)


def tune_arm(get: Getter, sgg: bool, grid: Sequence[float], extensions: int,
             tune_seed: int, intervals: Sequence[int],
             beta3s: Sequence[float]) -> Run:
  """The arm's best tuning run: its LR, and for SGG its T and beta3."""
  t0, b0 = (intervals[0], beta3s[0]) if sgg else (None, None)
  best, _ = lr_search(lambda lr: get(lr, tune_seed, t0, b0), grid,
                      extensions)
  if not sgg:
    return best
  others = [get(best['lr'], tune_seed, t, b) for t in intervals
            for b in beta3s if (t, b) != (t0, b0)]
  return FA.best_of([best, *others])


def sgg_intervals(fracs: Sequence[float], steps: int) -> list[int]:
  """SGG's T for each fraction of the run (at least 1), without repeats."""
  out = []
  for f in fracs:
    t = max(1, round(f * steps))
    if t not in out:
      out.append(t)
  return out


class BudgetSpent(Exception):
  """The chunk's time (`--max-minutes`) would run out during the next run."""


class Sweep:
  """Runs (or reuses) every run the protocol asks for.

  With `args.max_minutes`, the sweep is a chunk: it starts no run that the
  longest run so far says would end past the budget, and raises
  `BudgetSpent` instead. Every finished run is already its own JSON, so the
  same command continues from them.
  """

  def __init__(self, args: argparse.Namespace):
    import jax.numpy as jnp

    from experiments.common import lora as L
    from experiments.finetuning import run as FRun
    self.args, self.FRun = args, FRun
    self.runs_dir = pathlib.Path(args.out) / 'runs'
    sizes = FRun.EvalSizes(args.dev_windows, args.test_windows,
                           args.cls_dev_per_topic, args.cls_test_examples,
                           args.eval_batch_size)
    self.ctx = FRun.Context(args.n_layers, getattr(jnp, args.dtype), sizes,
                            args.seq_len, args.cls_seq_len, args.command)
    targets = (args.lora_targets if args.lora_targets in L.TARGET_PRESETS
               else tuple(args.lora_targets.split(',')))
    self.lora = L.LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                             dropout=args.lora_dropout, targets=targets)
    self.runs: list[Run] = []
    self.start, self.longest, self.made = time.monotonic(), 0.0, 0

  def spec(self, task, method, optimizer, lr, seed, interval, beta3):
    from experiments.finetuning import step as FS
    a = self.args
    opt = FS.OptSettings(
      name=optimizer, b2=a.b2, weight_decay=a.weight_decay, clip=a.clip,
      sgg_k=a.sgg_k,
      sgg_interval=interval or 1, sgg_beta3=0.0 if beta3 is None else beta3,
      sgg_momentum=a.sgg_form == 'momentum', sgg_rule=a.sgg_rule,
      sgg_cluster_decay=a.sgg_cluster_decay)
    lm = task == 'lm'
    return self.FRun.RunSpec(
      task=task, method=method, opt=opt, lr=lr, seed=seed, steps=a.steps,
      batch_size=a.batch_size if lm else a.cls_batch_size,
      seq_len=a.seq_len if lm else a.cls_seq_len, lora=self.lora,
      warmup_frac=a.warmup_frac)

  def get(self, task, method, optimizer, lr, seed, interval, beta3) -> Run:
    """The run's JSON: reused if this code made it for this spec."""
    spec = self.spec(task, method, optimizer, lr, seed, interval, beta3)
    path = self.runs_dir / f'{spec.name}.json'
    r = self.FRun.cached(path, spec)
    if r is None:
      budget = self.args.max_minutes * 60 if self.args.max_minutes else None
      if (budget is not None
          and time.monotonic() - self.start + self.longest > budget):
        raise BudgetSpent(spec.name)
      t0 = time.monotonic()
      r = self.FRun.run(self.ctx, spec, path, quiet=self.args.quiet,
                        log_every=self.args.log_every)
      self.longest = max(self.longest, time.monotonic() - t0)
      self.made += 1
      _report(r)
    if r not in self.runs:
      self.runs.append(r)
    return r

  def arm(self, task: str, method: str, optimizer: str) -> None:
    """Tunes one arm on dev, then runs its reported seeds."""
    a = self.args
    sgg = optimizer == 'adamw_sgg'

    def get(lr, seed, interval, beta3):
      return self.get(task, method, optimizer, lr, seed, interval, beta3)

    best = tune_arm(get, sgg, a.lrs_full if method == 'full' else a.lrs_lora,
                    a.grid_extensions, a.tune_seed,
                    a.sgg_intervals or sgg_intervals(a.sgg_interval_fracs,
                                                     a.steps),
                    a.sgg_beta3s)
    for seed in a.seeds:
      get(best['lr'], seed, *FA.config(best)[1:])

  def zero_shot(self, task: str) -> list[Run]:
    import json
    out = []
    for precision in sorted({'qlora' if m == 'qlora' else 'f32'
                             for m in self.args.methods}):
      path = self.runs_dir / f'zeroshot-{task}-{precision}.json'
      r = json.loads(path.read_text()) if path.exists() else None
      if r is None or r.get('code_key') != _code_key():
        r = self.FRun.zero_shot(self.ctx, task, precision, path)
      out.append(r)
    return out


def _code_key() -> str:
  from experiments.finetuning.run import CODE_KEY
  return CODE_KEY


def _report(r: Run) -> None:
  metric = 'ppl' if r['task'] == 'lm' else 'accuracy'
  extra = (f', clamped {r["clamped_fraction"]:.2f} (raw '
           f'{r["raw_clamped_fraction"]:.2f})' if 'clamped_fraction' in r
           else '')
  print(f'{r["name"]}: dev {metric} {r[f"dev_{metric}"]:.4g}, test {metric} '
        f'{r[f"test_{metric}"]:.4g}{extra}, {r["step_seconds_median"]:.3f} '
        f's/step, {r["wall_seconds"]:.0f} s', flush=True)


def arms(args: argparse.Namespace) -> list[tuple[str, str, str]]:
  """(task, method, optimizer) in run order; smoke: cls with LoRA only."""
  out = []
  for task in args.tasks:
    methods = args.methods
    if args.smoke and task == 'cls':
      methods = [m for m in methods if m == 'lora'] or methods[:1]
    out += [(task, m, o) for m in methods for o in args.optimizers]
  return out


def main(args: argparse.Namespace) -> dict[str, Any] | None:
  """Runs the sweep (or only its summary) and writes the results folder.

  Returns:
    The summary; None when a `--max-minutes` chunk ended first.
  """
  out = pathlib.Path(args.out)
  if args.summary_only:
    runs, zero = FA.load_runs(out), _load_zero_shot(out)
    return FR.summarize(out, runs, zero, args.tune_seed, args.seeds)
  out.mkdir(parents=True, exist_ok=True)
  FR.write_command(out, args.command)
  records.write_json(out / 'args.json', vars(args))  # every resolved setting
  sweep = Sweep(args)
  print(f'SmolLM2 loaded in {sweep.ctx.bases.load_seconds:.1f} s '
        f'({sweep.ctx.bases.n_layers} layers)', flush=True)
  zero = []
  for task in args.tasks:
    if args.zero_shot:
      zero += sweep.zero_shot(task)
  try:
    for arm in arms(args):
      sweep.arm(*arm)
  except BudgetSpent as e:
    minutes = (time.monotonic() - sweep.start) / 60
    print(f'chunk over after {minutes:.1f} min and {sweep.made} new run(s): '
          f'{e} would end past --max-minutes {args.max_minutes:g}. Run the '
          'same command again to continue from the run JSONs.', flush=True)
    return None
  summary = FR.summarize(out, sweep.runs, zero, args.tune_seed, args.seeds)
  print(FR.markdown(summary))
  return summary


def _load_zero_shot(out: pathlib.Path) -> list[Run]:
  import json
  runs = [json.loads(p.read_text())
          for p in sorted((out / 'runs').glob('zeroshot-*.json'))]
  return [r for r in runs if r.get('code_key') == _code_key()]
