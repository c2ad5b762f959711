"""The other rows of the paper's C4 table, as `--optimizer` names.

Each `Row` is one line of the paper's table that `experiments.train` can
run beside Adam and Adafactor (+ SGG), which `optim.py` builds itself:

* full rank: NAdam, RAdam, LAMB, Adan (optax), LAMB+SGG;
* memory-efficient: Adam-mini, CAME, CAME+SGG, APOLLO, APOLLO+SGG
  (sgg_optax's bases, looked up when the run starts: a row whose base the
  installed library lacks is *unavailable*, with a message saying so), and
  "Low-Rank", the factorised model ``W = U V`` (lowrank.py) trained
  from scratch with the Adam row's optimizer;
* low-rank pre-training: ReLoRA (LoRA adapters merged and restarted,
  relora.py; the Adam row's optimizer with a jagged schedule) and GaLore
  (``optax.contrib.galore``).

The rank of the low-rank rows (LoRA's, ReLoRA's, GaLore's projection, the
factorisation's) is ``--lora-rank``. Every row's own hyperparameters are
its paper's defaults, with the step counts scaled to the run's length where
the paper gives them in steps; `hyperparameters` states them, as used.
The shared recipe (schedule, peak learning rate, weight decay, gradient
clipping) is the run's, as for every other optimizer.

This module imports nothing from the rest of the pre-training package,
which imports it (config.py, optim.py, step.py, loop.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import optax

import sgg_optax
from experiments.common import lora as lora_lib
from experiments.common import model_config
from experiments.pretraining import relora

SECTIONS = {
  'full': 'Pre-training with full-rank optimizers',
  'memory': 'Pre-training with memory-efficient optimizers',
  'lowrank': 'Low-rank pre-training',
}
# GaLore's LLaMA-60M recipe: the projection every 200 of 10,000 steps, the
# update scaled by 0.25; APOLLO's the same gap.
PROJ_GAP_FRAC = 0.02
GALORE_SCALE = 0.25

Builder = Callable[[Any, optax.Schedule, dict[str, Any]],
                   optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Row:
  """One optimizer row.

  Attributes:
    label: the table's name for it.
    section: a `SECTIONS` key.
    reference: the paper (and the code matched, where not optax).
    build: ``(cfg, schedule, sgg_kwargs) -> transformation``; ``schedule``
      is the normalised one (peak 1), the peak learning rate comes later.
    library: sgg_optax attributes it needs (unavailable without them).
    sgg_base: for an SGG row, the row of its base optimizer.
    model: 'full' (the run's model, no adapters even with --lora-rank),
      'lora' (LoRA adapters of --lora-rank), 'factorized' (lowrank.py) or
      '' (LoRA adapters when --lora-rank > 0, as Adam).
    needs_rank: --lora-rank must be > 0.
  """

  label: str
  section: str
  reference: str
  build: Builder
  library: tuple[str, ...] = ()
  sgg_base: str | None = None
  model: str = ''
  needs_rank: bool = False


# --- the builders: each returns the kwargs it passes (`_kwargs`) ----------


def _proj_gap(cfg: Any) -> int:
  return max(1, round(PROJ_GAP_FRAC * cfg.steps))


def _dim(cfg: Any) -> tuple[int, int, int]:
  """(width, query heads, key/value heads) of the run's model (as
  step.model_config)."""
  base = model_config.get_config(cfg.preset)
  if not cfg.dim:
    return base.dim, base.n_heads, base.n_kv_heads
  heads = max(1, cfg.dim // base.head_dim)
  kv = heads if base.n_kv_heads == base.n_heads else max(1, heads // 2)
  return cfg.dim, heads, kv


def _kwargs(name: str, cfg: Any) -> dict[str, Any]:
  """The row's own hyperparameters (not the learning rate), as passed."""
  wd = cfg.weight_decay
  if name == 'nadam':
    return dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
  if name == 'radam':
    return dict(b1=0.9, b2=0.999, eps=1e-8, threshold=5.0)
  if name in ('lamb', 'lamb_sgg_momentum'):
    return dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=wd)
  if name == 'adan':
    # optax's (b1, b2, b3) are the paper's 1 - (0.02, 0.08, 0.01).
    return dict(b1=0.98, b2=0.92, b3=0.99, eps=1e-8, weight_decay=wd)
  if name == 'galore':
    return dict(rank=cfg.lora_rank, update_proj_gap=_proj_gap(cfg),
                scale=GALORE_SCALE, b1=0.9, b2=0.999, eps=1e-8,
                weight_decay=wd)
  if name in ('lowrank', 'relora'):
    out = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd)
    if name == 'relora':
      out.update(relora.settings(cfg.steps))
    return out
  # sgg_optax's bases: what the run fixes; the rest are the library's
  # defaults (its authors'), read from the signature by `hyperparameters`.
  dim, heads, kv = _dim(cfg)
  return dict(weight_decay=wd, update_proj_gap=_proj_gap(cfg),
              rank=max(1, dim // 4), num_heads=heads, num_kv_heads=kv)


def _library(name: str, attr: str, cluster_momentum: bool | None = None
             ) -> Builder:
  """A row built by ``sgg_optax.<attr>``, looked up when it is built."""

  def build(cfg: Any, schedule: optax.Schedule, sgg: dict[str, Any]
            ) -> optax.GradientTransformation:
    fn = getattr(sgg_optax, attr)
    kwargs = dict(_kwargs(name, cfg))
    if cluster_momentum is not None:
      kwargs.update(sgg, cluster_momentum=cluster_momentum)
    params = inspect.signature(fn).parameters
    return fn(schedule, **{k: v for k, v in kwargs.items() if k in params})

  return build


def _optax(name: str) -> Builder:
  """A row built from optax (or sgg_optax's LAMB+SGG)."""

  def build(cfg: Any, schedule: optax.Schedule, sgg: dict[str, Any]
            ) -> optax.GradientTransformation:
    kw = _kwargs(name, cfg)
    if name == 'nadam':
      return optax.nadamw(schedule, **kw)
    if name == 'radam':  # optax.radam has no weight decay: decoupled here
      return optax.chain(optax.scale_by_radam(**kw),
                         optax.add_decayed_weights(cfg.weight_decay),
                         optax.scale_by_learning_rate(schedule))
    if name == 'lamb':
      return optax.lamb(schedule, **kw)
    if name == 'lamb_sgg_momentum':
      return sgg_optax.lamb_sgg(schedule, **kw, cluster_momentum=True, **sgg)
    if name == 'adan':
      return optax.adan(schedule, **kw)
    if name == 'galore':
      adam = optax.scale_by_adam(kw['b1'], kw['b2'], kw['eps'])
      return optax.contrib.galore(
        schedule, rank=kw['rank'], update_proj_gap=kw['update_proj_gap'],
        scale=kw['scale'], base_optimizer=adam,
        weight_decay=kw['weight_decay'],
        weight_dimension_numbers=_galore_targets)
    adam = dict(b1=kw['b1'], b2=kw['b2'], eps=kw['eps'],
                weight_decay=kw['weight_decay'])
    return optax.adamw(row_schedule(cfg, schedule),
                       **adam)  # lowrank, relora

  return build


def _galore_targets(params: Any) -> Any:
  """GaLore projects the attention/MLP kernels only (as its paper)."""
  targets = set(lora_lib.TARGET_PRESETS['all'])

  def spec(path: Any, leaf: Any) -> Any:
    names = {str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path}
    if getattr(leaf, 'ndim', 0) == 2 and targets & names:
      return optax.contrib.GaLoreDimensionNumbers()
    return None

  return jax.tree_util.tree_map_with_path(spec, params)


ROWS: dict[str, Row] = {
  'nadam': Row('NAdam', 'full', 'Dozat, 2016 (optax.nadamw)',
               _optax('nadam')),
  'radam': Row('RAdam', 'full', 'Liu et al., ICLR 2020 (optax)',
               _optax('radam')),
  'lamb': Row('LAMB', 'full', 'You et al., ICLR 2020 (optax)',
              _optax('lamb')),
  'adan': Row('Adan', 'full', 'Xie et al., TPAMI 2024 (optax)',
              _optax('adan')),
  'lamb_sgg_momentum': Row(
    'LAMB+SGG (momentum)', 'full', 'sgg_optax.lamb_sgg',
    _optax('lamb_sgg_momentum'), sgg_base='lamb'),
  'adam_mini': Row('Adam-mini', 'memory', 'Zhang et al., ICLR 2025',
                   _library('adam_mini', 'adam_mini'),
                   library=('adam_mini',)),
  'lowrank': Row('Low-Rank (W = UV)', 'memory',
                 'Kamalakara et al., 2022 (arXiv 2209.13569)',
                 _optax('lowrank'), model='factorized', needs_rank=True),
  'came': Row('CAME', 'memory', 'Luo et al., ACL 2023',
              _library('came', 'came'), library=('came',)),
  'came_sgg_momentum': Row(
    'CAME+SGG (momentum)', 'memory', 'sgg_optax.came_sgg',
    _library('came_sgg_momentum', 'came_sgg', cluster_momentum=True),
    library=('came_sgg',), sgg_base='came'),
  'apollo': Row('APOLLO', 'memory', 'Zhu et al., MLSys 2025',
                _library('apollo', 'apollo'), library=('apollo',)),
  'apollo_sgg_update': Row(
    'APOLLO+SGG (update)', 'memory', 'sgg_optax.apollo_sgg',
    _library('apollo_sgg_update', 'apollo_sgg', cluster_momentum=False),
    library=('apollo_sgg',), sgg_base='apollo'),
  'relora': Row('ReLoRA', 'lowrank', 'Lialin et al., ICLR 2024',
                _optax('relora'), model='lora', needs_rank=True),
  'galore': Row('GaLore', 'lowrank',
                'Zhao et al., ICML 2024 (optax.contrib.galore)',
                _optax('galore'), model='full', needs_rank=True),
}
NAMES = tuple(ROWS)
LABELS = {name: row.label for name, row in ROWS.items()}


def unavailable(name: str) -> str | None:
  """Why row ``name`` cannot run with the installed sgg_optax (None: it can)."""
  row = ROWS.get(name)
  missing = [a for a in (row.library if row else ()) if not hasattr(
    sgg_optax, a)]
  if not missing:
    return None
  return (f'{name} needs sgg_optax.{", sgg_optax.".join(missing)}, which '
          f'sgg_optax {sgg_optax.__version__} does not have (the CAME, '
          'APOLLO and Adam-mini bases)')


def check(cfg: Any) -> str | None:
  """What stops ``cfg`` from running (None: nothing), as a usage error."""
  row = ROWS.get(cfg.optimizer)
  if row is None:
    return None
  if (why := unavailable(cfg.optimizer)) is not None:
    return why
  if row.needs_rank and cfg.lora_rank < 1:
    return (f'{cfg.optimizer} needs a rank: give --lora-rank R (R > 0; '
            "the paper's low-rank rows use a quarter of the width)")
  return None


def build(cfg: Any, schedule: optax.Schedule, sgg: dict[str, Any]
          ) -> optax.GradientTransformation:
  """Row ``cfg.optimizer``'s transformation (peak learning rate 1)."""
  if (why := check(cfg)) is not None:
    raise ValueError(why)
  return ROWS[cfg.optimizer].build(cfg, schedule, sgg)


def optimizer_key(cfg: Any) -> tuple[Any, ...]:
  """What shapes a row's optimizer beyond optim.py's key (its rank and
  the model's width and heads)."""
  return ((cfg.lora_rank, cfg.preset, cfg.dim) if cfg.optimizer in ROWS
          else ())


def model_ranks(cfg: Any) -> tuple[int, int]:
  """``(LoRA rank, factorisation rank)`` of the run's model."""
  model = ROWS[cfg.optimizer].model if cfg.optimizer in ROWS else ''
  if model == 'factorized':
    return 0, cfg.lora_rank
  if model == 'full':
    return 0, 0
  return cfg.lora_rank, 0


def row_schedule(cfg: Any, base: optax.Schedule) -> optax.Schedule:
  """The row's normalised schedule (ReLoRA's jagged one; else ``base``)."""
  if cfg.optimizer != 'relora':
    return base
  s = relora.settings(cfg.steps)
  return relora.jagged_schedule(base, s['interval'], s['rewarm'])


def step_hook(cfg: Any) -> relora.Restart | None:
  """Work the loop does on the train state between steps (ReLoRA's
  restarts), or None."""
  if cfg.optimizer != 'relora':
    return None
  s = relora.settings(cfg.steps)
  return relora.Restart(s['interval'], cfg.steps, s['prune_ratio'],
                        cfg.seed)


def hyperparameters(name: str, cfg: Any) -> dict[str, Any]:
  """Row ``name``'s own hyperparameters as a run of ``cfg`` uses them.

  For sgg_optax's bases: the values the run passes, then the library
  function's defaults for the rest (its authors' defaults); {} while the
  library lacks it.
  """
  row = ROWS[name]
  kwargs = _kwargs(name, cfg)
  if not row.library:
    return kwargs
  if unavailable(name):
    return {}
  params = inspect.signature(getattr(sgg_optax, row.library[0])).parameters
  skip = {'learning_rate', 'cluster_momentum', 'mask', 'sgg_mask',
          'weight_decay_mask', 'stacked_layers'}
  out = {}
  for key, p in params.items():
    if key in skip or key in _SGG_NAMES:
      continue
    if key in kwargs:
      out[key] = kwargs[key]
    elif p.default is not inspect.Parameter.empty:
      out[key] = p.default
  return out


_SGG_NAMES = frozenset({
  'num_clusters', 'recluster_interval', 'beta3', 'cluster_stat',
  'global_stat', 'scale_rule', 'clamp', 'clamp_order', 'sgg_eps',
  'kmeans_iters', 'sample_size', 'assignment', 'cluster_decay',
  'reference_init'})
