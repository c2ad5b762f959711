"""What a fine-tuning run logs: losses, step times, SGG's scales over time."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

import sgg_optax
from experiments.common import records


class ScaleHistory:
  """SGG's scales after every refresh, and how many sit at the clamp.

  `clamped_fraction` is `records.clamped_fraction` of the stored scales. With
  the MDA rule the clamp acts on the raw ratio *before* the EMA, so a stored
  scale only approaches a bound; the raw ratio of each refresh is recovered
  from two successive scales, `raw = (s_t - beta3 s_{t-1}) / (1 - beta3)`,
  and `raw_clamped_fraction` is the share of raw ratios at a bound (rtol
  1e-3: the inversion amplifies float32 rounding by 1 / (1 - beta3)).
  """

  def __init__(self, opt_state: Any, *, interval: int, beta3: float,
               clamp: tuple[float, float], clamp_before: bool):
    self.interval, self.beta3, self.clamp = interval, beta3, clamp
    self.clamp_before = clamp_before
    self.prev = sgg_optax.cluster_summary(opt_state).scales
    self.rows: dict[str, list[float]] = {
      k: [] for k in ('step', 'clamped_fraction', 'raw_clamped_fraction',
                      'min', 'median', 'max')}

  def observe(self, step: int, opt_state: Any) -> None:
    """Reads the scales after `step` (0-based) if SGG refreshed there."""
    if (step + 1) % self.interval:
      return
    scales = sgg_optax.cluster_summary(opt_state).scales
    row = {'step': step + 1,
           'clamped_fraction': records.clamped_fraction(scales, self.clamp),
           'min': float(scales.min()), 'median': float(np.median(scales)),
           'max': float(scales.max())}
    if self.clamp_before:
      raw = (scales - self.beta3 * self.prev) / (1.0 - self.beta3)
      row['raw_clamped_fraction'] = records.clamped_fraction(
        raw, self.clamp, rtol=1e-3)
    else:
      row['raw_clamped_fraction'] = row['clamped_fraction']
    for k, v in row.items():
      self.rows[k].append(v)
    self.prev = scales

  def result(self) -> dict[str, Any]:
    last = {k: (v[-1] if v else None) for k, v in self.rows.items()}
    return {'clamped_fraction': last['clamped_fraction'] or 0.0,
            'raw_clamped_fraction': last['raw_clamped_fraction'] or 0.0,
            'sgg_refreshes': len(self.rows['step']),
            'sgg_history': self.rows}


class RunLog:
  """Training losses (synced every `log_every` steps), step times and a
  progress bar; `ScaleHistory` of SGG runs."""

  def __init__(self, name: str, steps: int, tokens_per_step: int, *,
               quiet: bool, log_every: int, scales: ScaleHistory | None):
    from tqdm.auto import tqdm
    self.steps, self.tokens_per_step = steps, tokens_per_step
    self.log_every, self.scales = max(1, log_every), scales
    self.bar = tqdm(total=steps, desc=name, leave=False, mininterval=1.0,
                    file=sys.stdout, disable=quiet)
    self.losses: list[float] = []
    self.pending: list[Any] = []
    self.times: list[float] = []
    self.compile_seconds: float | None = None
    self.t_prev = time.perf_counter()

  def step(self, step: int, loss: Any, opt_state: Any) -> None:
    """Records one step's (device) loss; syncs on logging steps."""
    self.pending.append(loss)
    if self.scales is not None:
      self.scales.observe(step, opt_state)
    last = step + 1 == self.steps
    if not (step == 0 or (step + 1) % self.log_every == 0 or last):
      return
    values = [float(x) for x in self.pending]
    now = time.perf_counter()
    if step == 0:
      self.compile_seconds = now - self.t_prev
    else:
      self.times.append((now - self.t_prev) / len(self.pending))
    self.t_prev, self.pending = now, []
    self.losses.extend(values)
    self.bar.update(len(values))
    post = {'loss': f'{values[-1]:.3f}'}
    if self.times:
      post['tok/s'] = f'{self.tokens_per_step / self.times[-1]:.0f}'
    self.bar.set_postfix(post)

  def result(self) -> dict[str, Any]:
    self.bar.close()
    step_s = float(np.median(self.times)) if self.times else math.nan
    out = {'train_loss': self.losses, 'step_seconds_median': step_s,
           'compile_seconds': self.compile_seconds,
           'tokens_per_second': (self.tokens_per_step / step_s
                                 if self.times else None)}
    if self.scales is not None:
      out.update(self.scales.result())
    return out
