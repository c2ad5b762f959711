"""LLaMA shapes and presets, and how their parameters shard over a mesh.

`LlamaConfig` and the named `PRESETS` fix a decoder's shape and numerics;
the logical axis names of its parameters and the rules tables that map
them to mesh axes (`FSDP_RULES`, `FSDP_TP_RULES`) fix its sharding, and
`split_batch` / `embed_tokens` keep its activations split over the batch. The
modules themselves are in `experiments.common.model`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

DType = Any
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


# ------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a LLaMA-style decoder.

  Attributes:
    vocab_size: Number of token ids.
    dim: Width of the residual stream.
    n_layers: Number of decoder blocks.
    n_heads: Number of query heads.
    n_kv_heads: Number of key/value heads (grouped-query attention when it is
      smaller than `n_heads`; it must divide `n_heads`).
    ffn_dim: Hidden width of the SwiGLU MLP.
    rope_theta: Base of the rotary frequencies.
    norm_eps: Epsilon of RMSNorm.
    tie_embeddings: Whether the output projection reuses the token embedding.
    max_seq_len: Longest sequence the model is meant to see (a check, not a
      buffer size: RoPE is computed on the fly).
    dtype: Compute dtype of the matmuls (e.g. `jnp.bfloat16`).
    param_dtype: Storage dtype of the parameters.
  """

  vocab_size: int = 32_000
  dim: int = 512
  n_layers: int = 8
  n_heads: int = 8
  n_kv_heads: int = 8
  ffn_dim: int = 1376
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_seq_len: int = 256
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def __post_init__(self):
    if self.dim % self.n_heads:
      raise ValueError(f'dim={self.dim} not divisible by n_heads.')
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'n_heads={self.n_heads} not divisible by n_kv_heads.')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for RoPE.')

  @property
  def head_dim(self) -> int:
    """Width of one attention head."""
    return self.dim // self.n_heads

  def replace(self, **changes: Any) -> LlamaConfig:
    """Returns a copy with some fields changed."""
    return dataclasses.replace(self, **changes)


PRESETS: dict[str, LlamaConfig] = {
  # ~0.9M parameters: CI smoke tests.
  'tiny': LlamaConfig(
    vocab_size=4096, dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
    ffn_dim=352, tie_embeddings=True, max_seq_len=128,
  ),
  # ~9.3M parameters: the CPU default.
  'small': LlamaConfig(
    vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=8,
    ffn_dim=768, max_seq_len=256,
  ),
  # The paper's LLaMA-60M / 130M shapes (GaLore configs); vocab is free.
  '60m': LlamaConfig(
    vocab_size=32_000, dim=512, n_layers=8, n_heads=8, n_kv_heads=8,
    ffn_dim=1376, max_seq_len=256,
  ),
  '130m': LlamaConfig(
    vocab_size=32_000, dim=768, n_layers=12, n_heads=12, n_kv_heads=12,
    ffn_dim=2048, max_seq_len=256,
  ),
  # The paper's LLaMA-350M and 1B (GaLore's configs/llama_350m.json and
  # llama_1b.json; 1B's ffn_dim 5461 is odd, so its MLP cannot be split
  # over a tensor-parallel axis: see `fit_rules`).
  '350m': LlamaConfig(
    vocab_size=32_000, dim=1024, n_layers=24, n_heads=16, n_kv_heads=16,
    ffn_dim=2736, max_seq_len=256,
  ),
  '1b': LlamaConfig(
    vocab_size=32_000, dim=2048, n_layers=24, n_heads=32, n_kv_heads=32,
    ffn_dim=5461, max_seq_len=256,
  ),
  # LLaMA-7B's shape (GaLore's configs/llama_7b.json).
  '7b': LlamaConfig(
    vocab_size=32_000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
    ffn_dim=11008, max_seq_len=2048,
  ),
  # HuggingFaceTB/SmolLM2-135M(-Instruct).
  'smollm2_135m': LlamaConfig(
    vocab_size=49_152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
    ffn_dim=1536, rope_theta=100_000.0, norm_eps=1e-5, tie_embeddings=True,
    max_seq_len=8192,
  ),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
  """Returns a named preset, optionally with some fields overridden.

  Args:
    name: One of `PRESETS` ('tiny', 'small', '60m', '130m', '350m', '1b',
      '7b', 'smollm2_135m').
    **overrides: Fields to replace, e.g. `vocab_size=16384`.

  Returns:
    The configuration.
  """
  if name not in PRESETS:
    raise KeyError(f'Unknown preset {name!r}; choose from {sorted(PRESETS)}.')
  return PRESETS[name].replace(**overrides)


def param_count(config: LlamaConfig) -> int:
  """Number of parameters of `Llama(config)`, from the shapes alone."""
  d, hd = config.dim, config.head_dim
  attn = d * config.n_heads * hd * 2 + d * config.n_kv_heads * hd * 2
  mlp = 3 * d * config.ffn_dim
  block = attn + mlp + 2 * d
  embed = config.vocab_size * d
  head = 0 if config.tie_embeddings else d * config.vocab_size
  return embed + config.n_layers * block + d + head


# ------------------------------------------------------------------------------
# Sharding: logical axis names and rules tables
# ------------------------------------------------------------------------------

# Every parameter is annotated with logical axis names:
#   token embedding      ('vocab', 'embed')
#   q / o projections    ('embed', 'heads') / ('heads', 'embed')
#   k / v projections    ('embed', 'kv_heads')
#   gate, up / down      ('embed', 'mlp') / ('mlp', 'embed')
#   untied output head   ('embed', 'vocab')
#   RMSNorm scales       ('norm',)
# A rules table maps each logical name to a mesh axis (or None: replicated).

LOGICAL_AXES = ('vocab', 'embed', 'heads', 'kv_heads', 'mlp', 'norm')

# The mesh axes that split a batch, where the mesh has them: the model keeps
# its activations split over them along the batch (`split_batch`).
BATCH_AXES = ('data', 'fsdp')

# Everything replicated (single device, or pure data parallelism).
REPLICATED_RULES: LogicalRules = tuple((name, None) for name in LOGICAL_AXES)

# FSDP: shard the model dimension of every matrix over the 'data' axis.
FSDP_RULES: LogicalRules = (
  ('vocab', None), ('embed', 'data'), ('heads', None), ('kv_heads', None),
  ('mlp', None), ('norm', None),
)

# FSDP on 'data' combined with tensor parallelism on 'model'.
FSDP_TP_RULES: LogicalRules = (
  ('vocab', 'model'), ('embed', 'data'), ('heads', 'model'),
  ('kv_heads', 'model'), ('mlp', 'model'), ('norm', None),
)


def axis_sizes(config: LlamaConfig) -> dict[str, int]:
  """The array dimension each logical axis name labels, for `config`."""
  hd = config.head_dim
  return {'vocab': config.vocab_size, 'embed': config.dim,
          'heads': config.n_heads * hd, 'kv_heads': config.n_kv_heads * hd,
          'mlp': config.ffn_dim, 'norm': config.dim}


def fit_rules(rules: LogicalRules, config: LlamaConfig,
              mesh_shape: dict[str, int]
              ) -> tuple[LogicalRules, tuple[str, ...]]:
  """``rules`` with the axes that cannot split `config`'s arrays replicated.

  A sharded array dimension must be a multiple of the number of shards
  (e.g. the 1B preset's ``ffn_dim`` 5461 over a tensor axis of 8): such a
  logical axis is mapped to None instead, and named.

  Args:
    rules: logical-to-mesh rules such as `FSDP_TP_RULES`.
    config: the model.
    mesh_shape: the mesh's axis sizes, e.g. ``dict(mesh.shape)``.

  Returns:
    The rules, and the logical axes they replicate that ``rules`` split.
  """
  sizes = axis_sizes(config)
  out, dropped = [], []
  for name, axes in rules:
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    shards = 1
    for axis in names:
      shards *= mesh_shape.get(axis, 1)
    if names and name in sizes and sizes[name] % shards:
      out.append((name, None))
      dropped.append(name)
    else:
      out.append((name, axes))
  return tuple(out), tuple(dropped)


def _logical_names(state: nnx.State) -> set[str]:
  names = set()
  for leaf in jax.tree.leaves(
    state, is_leaf=lambda x: isinstance(x, nnx.Variable)
  ):
    if isinstance(leaf, nnx.Variable):
      names.update(n for n in leaf.get_metadata().get('out_sharding') or ()
                   if n is not None)
  return names


def partition_specs(
  model: nnx.Module | nnx.State, rules: LogicalRules
) -> nnx.State:
  """Turns the logical annotations of the parameters into `PartitionSpec`s.

  Uses flax's own machinery (`nnx.logical_axis_rules` and
  `nnx.get_partition_spec`); works on real or abstract (`nnx.eval_shape`)
  models.

  Args:
    model: A model, or an `nnx.State` of its parameters.
    rules: Logical-to-mesh rules such as `FSDP_RULES`; it must name every
      logical axis used by the model (map to None to replicate).

  Returns:
    A state with the structure of `nnx.state(model, nnx.Param)` whose
    variables hold `jax.sharding.PartitionSpec`s over mesh axes.
  """
  state = model
  if isinstance(model, nnx.Module):
    state = nnx.state(model, nnx.Param)
  missing = _logical_names(state) - {name for name, _ in rules}
  if missing:
    raise ValueError(f'Rules do not cover logical axes {sorted(missing)}.')
  with nnx.logical_axis_rules(tuple(rules)):
    return nnx.get_partition_spec(state)


def named_shardings(
  model: nnx.Module | nnx.State,
  mesh: jax.sharding.Mesh,
  rules: LogicalRules,
) -> nnx.State:
  """Like `partition_specs`, as `NamedSharding`s on `mesh`."""
  return jax.tree.map(
    lambda spec: jax.sharding.NamedSharding(mesh, spec),
    partition_specs(model, rules),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


# ------------------------------------------------------------------------------
# Activations on a mesh
# ------------------------------------------------------------------------------


def batch_axes_of_mesh() -> tuple[str, ...]:
  """The mesh's axes that split the batch (none if they split nothing)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return axes if math.prod(mesh.shape[a] for a in axes) > 1 else ()


def split_batch(x: jax.Array) -> jax.Array:
  """Keeps activations split over the mesh's batch axes along the batch.

  The parameters are sharded over the same axes (FSDP, on their 'embed'
  dimension), so without this XLA's propagation may split a matmul's
  contraction instead and all-reduce whole activations of the global
  batch on every device. No-op unless those axes split the batch.
  """
  axes = batch_axes_of_mesh()
  if not axes:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


def embed_tokens(embed: nnx.Embed, tokens: jax.Array) -> jax.Array:
  """``embed(tokens)``, its table's features gathered first on a mesh.

  FSDP splits the table's feature dimension over the batch axes; asked to
  look up a batch split over the same axes, XLA's partitioner falls back
  to replicating the whole lookup ("involuntary full rematerialization").
  Gathering the features first, as FSDP does for every weight, leaves the
  vocabulary's split (tensor parallelism) to XLA.
  """
  if not batch_axes_of_mesh():
    return embed(tokens)
  P = jax.sharding.PartitionSpec
  table = jax.lax.with_sharding_constraint(embed.embedding[...],
                                           P(P.UNCONSTRAINED, None))
  return jnp.take(table.astype(embed.dtype or table.dtype), tokens, axis=0)
