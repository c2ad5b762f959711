"""`experiments.train`'s own programs, lowered from abstract state on a mesh.

`setup` builds the run's model and optimizer as `experiments.train` does
(`step._create`, `optim.build_optimizer`, `distributed.sharding_rules`),
but abstractly: ``jax.eval_shape`` traces the creation and every array of
the split ``(model, optimizer)`` state becomes a ``jax.ShapeDtypeStruct``
carrying the ``NamedSharding`` the real run gives it, so nothing the size
of the model is ever allocated. `lower` lowers one `VARIANTS` program:
the train step (`step._train_step`, with SGG's refresh decided on device,
or by the loop as a plain or a refresh step) or the momentum form's refresh
as a program of its own (`SGGTransformation.refresh`, the
docs/howto/refresh.rst pattern).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgg_optax
from experiments.common.model_config import LlamaConfig, get_config
from experiments.pretraining import config as config_lib
from experiments.pretraining import optim
from experiments.pretraining import step as step_lib
from experiments.pretraining.distributed import (
  batch_axes,
  make_mesh,
  sharding_rules,
)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One program: the optimizer's SGG form and how the refresh is decided.

  Attributes:
    name: the results file's name.
    form: None (Adam), 'update' (SGG clusters Adam's update: the chain
      form) or 'momentum' (it clusters Adam's first moment).
    refresh: the train step's ``sgg_refresh``: None (SGG's own on-device
      schedule, a conditional in every step), False (the loop-decided
      plain step) or True (the loop-decided refresh step).
    program: 'step' (the train step) or 'refresh' (the momentum form's
      ``tx.refresh(opt_state)``, no forward or backward pass).
    label: how tables name it.
  """

  name: str
  form: str | None
  refresh: bool | None
  program: str = 'step'
  label: str = ''


VARIANTS = {v.name: v for v in (
  Variant('adam', None, None, label='Adam'),
  Variant('update_own', 'update', None, label='update form, own schedule'),
  Variant('update_plain', 'update', False,
          label='update form, loop: plain step'),
  Variant('update_refresh', 'update', True,
          label='update form, loop: refresh step'),
  Variant('momentum_own', 'momentum', None,
          label='momentum form, own schedule'),
  Variant('momentum_plain', 'momentum', False,
          label='momentum form, loop: plain step'),
  Variant('momentum_refresh', 'momentum', True,
          label='momentum form, loop: refresh step'),
  Variant('momentum_refresh_program', 'momentum', None, program='refresh',
          label='momentum form, tx.refresh program'),
)}


def optimizer_name(form: str | None) -> str:
  """The `experiments.train` optimizer of an SGG form (Adam for None)."""
  if form is None:
    return 'adam'
  if form == 'momentum':
    return 'adam_sgg_momentum'
  # The form that clusters Adam's update (the chain link `sgg_optax.sgg`).
  for name in ('adam_sgg_update', 'adam_sgg'):
    if name in config_lib.OPTIMIZERS:
      return name
  raise ValueError(f'no update-form optimizer in {config_lib.OPTIMIZERS}')


@dataclasses.dataclass
class Setup:
  """A run's abstract train state on its mesh.

  Attributes:
    cfg: the run's `TrainConfig`.
    mesh: the mesh.
    model: the LLaMA's shape.
    rules: the logical sharding rules used.
    replicated: logical axes the rules replicate because the mesh does not
      divide them (`model_config.fit_rules`).
    graphdef: the ``(model, optimizer)`` graph definition.
    state: its split state, arrays as sharded ``ShapeDtypeStruct``s.
    batch: the global batch, ``(batch_size, seq_len + 1)`` int32, split
      over the batch axes.
    tx: the optimizer `experiments.train` builds.
  """

  cfg: config_lib.TrainConfig
  mesh: jax.sharding.Mesh
  model: LlamaConfig
  rules: tuple[Any, ...]
  replicated: tuple[str, ...]
  graphdef: Any
  state: Any
  batch: jax.ShapeDtypeStruct
  tx: optax.GradientTransformation


def train_config(preset: str, mesh: str, form: str | None, *,
                 batch_size: int, seq_len: int,
                 **overrides: Any) -> config_lib.TrainConfig:
  """The `TrainConfig` of a pod run of ``preset`` (bf16 matmuls)."""
  return config_lib.TrainConfig(
    preset=preset, mesh=mesh, optimizer=optimizer_name(form),
    batch_size=batch_size, seq_len=seq_len, bf16=True, **overrides)


def _abstract(state: Any, specs: Any, mesh: jax.sharding.Mesh) -> Any:
  """``state`` with every array a ``ShapeDtypeStruct`` sharded by ``specs``."""
  spec_of = dict(nnx.to_flat_state(specs))
  flat = []
  for path, var in nnx.to_flat_state(state):
    value = var.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):
      spec = spec_of[path].get_value()
      var = var.replace(jax.ShapeDtypeStruct(
        value.shape, value.dtype,
        sharding=NamedSharding(mesh, spec if isinstance(spec, P) else P())))
    flat.append((path, var))
  return nnx.from_flat_state(flat)


def setup(cfg: config_lib.TrainConfig, vocab_size: int | None = None
          ) -> Setup:
  """The abstract sharded state of ``cfg``'s model and optimizer.

  Args:
    cfg: the run (its `mesh` must fit the devices of this process).
    vocab_size: the model's vocabulary (default: the preset's).

  Returns:
    The `Setup`; nothing model-sized is allocated.
  """
  mesh = make_mesh(cfg.mesh)
  model = step_lib.model_config(
    cfg, vocab_size or get_config(cfg.preset).vocab_size)
  rules = sharding_rules(mesh, model)
  plain = sharding_rules(mesh)
  replicated = tuple(n for (n, a), (_, b) in zip(plain, rules) if a != b)
  tx = optim.build_optimizer(cfg)
  box = {}

  def create() -> Any:
    objects = step_lib._create(model, tx, rules, jnp.int32(cfg.seed),
                               cfg.lora_rank)
    box['graphdef'], state = nnx.split(objects)
    return state

  with jax.set_mesh(mesh):
    state = jax.eval_shape(create)
    with nnx.logical_axis_rules(rules):
      specs = nnx.get_partition_spec(state)
  batch = jax.ShapeDtypeStruct(
    (cfg.batch_size, cfg.seq_len + 1), jnp.int32,
    sharding=NamedSharding(mesh, P(batch_axes(mesh))))
  return Setup(cfg, mesh, model, rules, replicated, box['graphdef'],
               _abstract(state, specs, mesh), batch, tx)


def _momentum_sgg(cfg: config_lib.TrainConfig
                  ) -> sgg_optax.SGGTransformation:
  """The momentum form's SGG transformation, as `build_optimizer` makes it.

  `build_optimizer`'s chain hides ``refresh``; this is its Adam+SGG part
  (`sgg_optax.adamw_sgg` with the run's settings), whose ``refresh``
  acts on the whole chain's state.
  """
  schedule = optim.normalized_schedule(cfg.steps, cfg.warmup_frac,
                                       cfg.final_lr_frac)
  return sgg_optax.adamw_sgg(
    learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
    weight_decay=cfg.weight_decay, cluster_momentum=True,
    **optim._sgg_kwargs(cfg))


def _refresh_program(s: Setup) -> Any:
  """The momentum form's refresh, on the split state (donated)."""
  sgg_tx = _momentum_sgg(s.cfg)
  graphdef = s.graphdef

  def refresh(state: Any) -> Any:
    model, opt = nnx.merge(graphdef, state)
    opt_state = sgg_tx.refresh(nnx.as_pure(opt.opt_state))
    nnx.update(opt.opt_state, nnx.state(opt_state))
    return nnx.state((model, opt))

  return jax.jit(refresh, donate_argnums=0)


def lower(s: Setup, variant: Variant) -> jax.stages.Lowered:
  """Lowers ``variant``'s program for ``s`` (its form must be ``s``'s)."""
  if optimizer_name(variant.form) != s.cfg.optimizer:
    raise ValueError(f'{variant.name} needs the optimizer '
                     f'{optimizer_name(variant.form)}, the set-up has '
                     f'{s.cfg.optimizer}')
  with jax.set_mesh(s.mesh):
    if variant.program == 'refresh':
      return _refresh_program(s).lower(s.state)
    return step_lib._train_step.lower(s.graphdef, s.state, s.batch,
                                      variant.refresh)


def grouped_parameters(s: Setup) -> list[dict[str, Any]]:
  """The parameters SGG groups (those with cluster ids in the state).

  Returns:
    One dict per parameter: ``path``, ``shape``, ``shard_shape`` (what one
    device holds), ``ids_dtype`` and ``ids_bytes`` (one byte per element
    it holds: the floor of SGG's per-device memory).
  """
  flat = {path: var.get_value() for path, var in nnx.to_flat_state(s.state)}
  out = []
  for path, value in flat.items():
    if ('ids' not in path or path[0] != 1
        or not isinstance(value, jax.ShapeDtypeStruct)):
      continue  # not an id array (or a placeholder of an ungrouped one)
    param_path = (0,) + path[path.index('ids') + 1:]
    param = flat.get(param_path)
    if param is None or tuple(param.shape) != tuple(value.shape):
      raise ValueError(f'cluster ids at {path} match no parameter')
    shard = param.sharding.shard_shape(param.shape)
    out.append({'path': '/'.join(map(str, param_path[1:])),
                'shape': list(param.shape), 'shard_shape': list(shard),
                'ids_dtype': jnp.dtype(value.dtype).name,
                'ids_bytes': math.prod(shard)})
  return out


def parameter_count(s: Setup) -> int:
  """Elements of the model's parameters."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(s.state[0]))
