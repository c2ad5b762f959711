"""The run cache of the pre-training experiments, and learning-rate tuning.

`Runner` trains a configuration or reloads its run JSON (only one written
by the same configuration and code); `tune_lr` picks the learning rate of
lowest dev loss, extending the grid past an optimal end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.common import records
from experiments.pretraining import loop
from experiments.pretraining import streams as streams_lib
from experiments.pretraining.config import TrainConfig, canonical


def _recluster(cfg: TrainConfig, t_frac: float) -> TrainConfig:
  """Sets T to `t_frac` of the run (when > 0)."""
  if t_frac > 0:
    return cfg.replace(recluster_interval=max(1, round(t_frac * cfg.steps)))
  return cfg


def _tag(cfg: TrainConfig) -> str:
  """A readable run name plus a hash of the configuration and the code."""
  key = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + records.code_key()
  digest = hashlib.sha1(key.encode()).hexdigest()[:8]
  return (f'{cfg.optimizer}_lr{cfg.lr:g}_bs{cfg.batch_size}_s{cfg.seed}_'
          f'{digest}')


def _same_code(result: dict[str, Any]) -> bool:
  prov = result.get('provenance') or {}
  return (prov.get('sgg_optax_source_sha256') == records.SGG_OPTAX_SOURCE
          and prov.get('experiments_source_sha256')
          == records.EXPERIMENTS_SOURCE)


class BudgetSpent(Exception):
  """The chunk's time (``--max-minutes``) would run out during the next run."""


class Runner:
  """Runs (or reloads) training runs and keeps their results.

  A run JSON is reused only when its configuration and both source hashes
  match this process's (`records.code_key()` is part of the file name, and
  the stored provenance is checked again on load).

  With ``max_minutes`` the runner works in chunks, as ``experiments.finetune
  --max-minutes``: it starts no run that the longest run so far says would
  end past the budget, and raises `BudgetSpent` instead. Every finished run
  is its own JSON, so the same command continues from them.
  """

  def __init__(self, out: pathlib.Path, fresh: bool, progress: bool,
               argv: Sequence[str] | None = None,
               max_minutes: float | None = None,
               clock: Callable[[], float] = time.monotonic):
    self.out = out
    self.fresh = fresh
    self.progress = progress
    self.argv = argv
    self._streams: dict[tuple[Any, ...], Any] = {}
    self.n_run = 0
    self.n_reused = 0
    self.max_minutes = max_minutes
    self.clock = clock
    self.start = clock()
    self.longest = 0.0  # seconds, of the runs trained by this runner

  def streams(self, cfg: TrainConfig) -> Any:
    key = (cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.data_dir)
    if key not in self._streams:
      self._streams[key] = streams_lib.load_streams(cfg)
    return self._streams[key]

  def run(self, cfg: TrainConfig) -> dict[str, Any]:
    tag = _tag(cfg)
    path = self.out / 'runs' / f'{tag}.json'
    if path.exists() and not self.fresh:
      result = json.loads(path.read_text())
      if result['config'] == dataclasses.asdict(cfg) and _same_code(result):
        self.n_reused += 1
        return result
    if (self.max_minutes is not None and self.clock() - self.start
        + self.longest > 60 * self.max_minutes):
      raise BudgetSpent(tag)
    t0 = self.clock()
    result = self._train(cfg, path, tag)
    self.longest = max(self.longest, self.clock() - t0)
    self.n_run += 1
    return result

  def _train(self, cfg: TrainConfig, path: pathlib.Path, tag: str
             ) -> dict[str, Any]:
    return loop.train(cfg, out=path, progress=self.progress, desc=tag,
                      streams=self.streams(cfg), argv=self.argv)


class StoredRuns(Runner):
  """A `Runner` that trains nothing: it returns the run JSONs in ``out/runs``.

  A run is found by its configuration (the stored one's fields), whatever
  code wrote it, so `compare` rebuilds a committed folder's table from its
  run JSONs (`--from-runs`); a configuration with no run JSON is an error.
  An optimizer matches under any of its names (`config.DEPRECATED`).
  """

  def __init__(self, out: pathlib.Path):
    super().__init__(out, fresh=False, progress=False, argv=[])
    self._stored = [json.loads(p.read_text())
                    for p in sorted((out / 'runs').glob('*.json'))]

  def run(self, cfg: TrainConfig) -> dict[str, Any]:
    want = dataclasses.asdict(cfg)
    want['optimizer'] = canonical(cfg.optimizer)
    for result in self._stored:
      stored = dict(result['config'])
      stored['optimizer'] = canonical(stored['optimizer'])
      if all(want.get(k) == v for k, v in stored.items()):
        self.n_reused += 1
        return result
    raise LookupError(f'no run JSON in {self.out}/runs for {_tag(cfg)}')


def _score(result: dict[str, Any], split: str = 'dev') -> float:
  loss = result[f'{split}_loss']
  return math.inf if result['diverged'] or loss is None else loss


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
  ok = [v for v in values if v is not None and math.isfinite(v)]
  return {
    'values': list(values),
    'mean': float(np.mean(ok)) if ok else None,
    # Sample standard deviation (ddof=1) over the finished seeds.
    'std': float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0,
    'n': len(ok), 'n_diverged': len(values) - len(ok),
  }


def _fmt(mean: float | None, std: float) -> str:
  return 'diverged' if mean is None else f'{mean:8.2f} ± {std:5.2f}'


def _mean_of(results: Sequence[dict[str, Any]], key: str) -> float | None:
  values = [r[key] for r in results if r.get(key) is not None]
  return float(np.mean(values)) if values else None


def next_lr(grid: Sequence[float], upward: bool) -> float:
  """The grid's next LR beyond one end, at the ratio of its two end points.

  ``(2.5e-3, 5e-3, 1e-2)`` extends to 2e-2 upwards and 1.25e-3 downwards;
  the paper's ``(5e-4, 1e-3, 5e-3, 1e-2)`` to 2e-2 and 2.5e-4. A one-point
  grid extends by a factor of 2.
  """
  g = sorted(grid)
  if upward:
    return g[-1] * (g[-1] / g[-2] if len(g) > 1 else 2.0)
  return g[0] / (g[1] / g[0] if len(g) > 1 else 2.0)


def tune_lr(cfg: TrainConfig, runner: Runner, lrs: Sequence[float],
            seeds: Sequence[int], max_extensions: int,
            final_eval_only: bool = False) -> tuple[float, dict[str, Any]]:
  """The LR of lowest mean dev loss over ``seeds``, extending the grid.

  While the best LR is the smallest or the largest tried (and the grid has
  more than one point), the next LR beyond that end (`next_lr`) runs too,
  at most ``max_extensions`` times per end. With ``final_eval_only`` (tuning
  seeds that are not reported) the runs evaluate dev and test only at
  their end: the choice reads only the final dev loss, and no curve of
  theirs is plotted.

  Returns:
    The chosen LR and, per LR tried, the dev/test losses of its runs plus
    ``'lr_at_grid_edge'`` (still at an end after the extensions).
  """
  grid, sweep, extended = sorted(lrs), {}, {True: 0, False: 0}
  if final_eval_only:
    cfg = cfg.replace(eval_every=0)

  def run(lr: float) -> float:
    results = [runner.run(cfg.replace(lr=lr, seed=s)) for s in seeds]
    sweep[f'{lr:g}'] = {
      'lr': lr, 'seeds': list(seeds),
      'dev_loss': [r['dev_loss'] for r in results],
      'dev_ppl': [r['dev_ppl'] for r in results],
      'test_loss': [r['test_loss'] for r in results]}
    return float(np.mean([_score(r) for r in results]))

  scores = {lr: run(lr) for lr in grid}
  while True:
    best = min(grid, key=lambda lr: (scores[lr], lr))
    at_edge = len(grid) > 1 and best in (grid[0], grid[-1])
    upward = best == grid[-1]
    if not at_edge or extended[upward] >= max_extensions:
      break
    lr = next_lr(grid, upward)
    extended[upward] += 1
    scores[lr] = run(lr)
    grid = sorted(grid + [lr])
  return best, {'lrs': grid, 'by_lr': sweep, 'lr_at_grid_edge': at_edge,
                'extensions': extended[True] + extended[False]}
