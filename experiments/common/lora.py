"""LoRA and Q-LoRA adapters for NNX models; optimizers that train only them.

Why not flax's own ``nnx.LoRA`` / ``nnx.LoRALinear`` (flax 0.12): they would
change what the committed runs compute, so only flax's variable type is
reused (`LoRAParam` subclasses ``nnx.LoRAParam``, so flax filters on it
select our adapters too). The differences:

* scaling: the update is ``(alpha / rank) * x @ A @ B``, PEFT's convention
  (LoRA pre-training uses alpha = 2 x rank); ``nnx.LoRA`` has no scale, and
  folding one into the initialisation is not the same model under Adam;
* initialisation: ``A`` is uniform in ``±1/sqrt(in)`` (PEFT's
  Kaiming-uniform), drawn with one ``rngs.params()`` key per adapted layer;
  ``nnx.LoRA`` draws ``he_uniform`` (``±sqrt(6/in)``) and also spends a key
  on the zero ``B``, which moves the key of every later layer's ``A``: a
  different initialisation even given our initializer;
* the base: `LoRALinear` wraps an existing layer, a pretrained
  ``nnx.Linear`` or Q-LoRA's int8 `experiments.common.gguf.Int8Linear`,
  calls it on the input in the input's own dtype and adds the float32
  adapter path cast to the base output's dtype. ``nnx.LoRALinear`` is a new
  ``nnx.Linear`` (no int8 base, no pretrained kernel), and
  ``nnx.LoRA(base_module=...)`` promotes the input to the adapters' dtype
  before calling the base (a bf16 or int8 base would see float32);
* dropout on the adapter input, and merging (`merge_lora`, re-quantising an
  int8 base), have no nnx counterpart;
* names: the frozen layer is ``.base`` (pre-training's trainable filter
  leaves out paths through ``base``; checkpoints are keyed by path), where
  nnx says ``base_module``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.common.gguf import Int8Linear

Array = jax.Array
DType = Any

ATTENTION_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
MLP_TARGETS = ('gate_proj', 'up_proj', 'down_proj')
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
  'all': ATTENTION_TARGETS + MLP_TARGETS,
  'attention': ATTENTION_TARGETS,
  'mlp': MLP_TARGETS,
  'qv': ('q_proj', 'v_proj'),
}
LORA_NAMES = ('lora_a', 'lora_b')
FROZEN, TRAINABLE = 'frozen', 'lora'


class LoRAParam(nnx.LoRAParam):
  """A trainable low-rank factor; every other `nnx.Param` stays frozen.

  A subclass of `nnx.Param` (through flax's ``nnx.LoRAParam``), so
  `wrt=nnx.Param` still selects it (full fine-tuning of an adapted model),
  while `wrt=LoRAParam` selects the adapters alone.
  """


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which kernels get adapters, and their shape.

  Attributes:
    rank: Inner dimension `r` of every adapter.
    alpha: The update `A @ B` is scaled by `alpha / rank` (as in PEFT).
    dropout: Dropout rate on the adapter's input (0: none, no RNG state).
    targets: Attribute names of the linear layers to adapt, or one of
      `TARGET_PRESETS` ('all', 'attention', 'mlp', 'qv').
    param_dtype: Storage and compute dtype of the adapters (float32 even
      when the frozen base is bf16 or int8: that is Q-LoRA).
  """

  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str | Sequence[str] = 'all'
  param_dtype: DType = jnp.float32

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f'rank must be >= 1, got {self.rank}.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {self.dropout}.')
    if isinstance(self.targets, str) and self.targets not in TARGET_PRESETS:
      raise ValueError(f'Unknown targets preset {self.targets!r}; choose '
                       f'from {sorted(TARGET_PRESETS)} or pass names.')

  @property
  def scale(self) -> float:
    """Multiplier of the low-rank update, `alpha / rank`."""
    return self.alpha / self.rank

  @property
  def target_names(self) -> tuple[str, ...]:
    """The attribute names that are adapted."""
    if isinstance(self.targets, str):
      return TARGET_PRESETS[self.targets]
    return tuple(self.targets)


def _io_features(layer: nnx.Module) -> tuple[int, int] | None:
  """`(in, out)` of a linear layer we know how to adapt, else None."""
  if isinstance(layer, nnx.Linear):
    return layer.in_features, layer.out_features
  if isinstance(layer, Int8Linear):
    return tuple(layer.qkernel.shape)
  return None


class LoRALinear(nnx.Module):
  """`base(x) + (alpha / r) * dropout(x) @ A @ B`, the base left frozen.

  `A` (in, r) is drawn uniformly from `±1/sqrt(in)` (PEFT's Kaiming-uniform
  default) and `B` (r, out) is zero, so the adapted layer starts exactly
  equal to its base. `A` and `B` are `LoRAParam`s; the base keeps its own
  variable types (`nnx.Param` for `nnx.Linear`, plain `nnx.Variable` for the
  int8 `Int8Linear`) and dtype. The adapter path runs in `param_dtype`
  (float32) and is cast to the base output's dtype before the sum.

  Args:
    base: The frozen layer, an `nnx.Linear` or a `gguf.Int8Linear`.
    config: Rank, alpha, dropout and adapter dtype.
    rngs: Random streams: `params` for `A`, `dropout` when dropout > 0.
  """

  def __init__(self, base: nnx.Module, config: LoRAConfig, *,
               rngs: nnx.Rngs):
    features = _io_features(base)
    if features is None:
      raise TypeError(f'Cannot adapt a {type(base).__name__}.')
    d_in, d_out = features
    self.base = base
    bound = 1.0 / math.sqrt(d_in)
    self.lora_a = LoRAParam(jax.random.uniform(
      rngs.params(), (d_in, config.rank), config.param_dtype, -bound, bound))
    self.lora_b = LoRAParam(jnp.zeros((config.rank, d_out),
                                      config.param_dtype))
    self.scale = config.scale
    self.dropout = nnx.data(
      nnx.Dropout(config.dropout, rngs=rngs) if config.dropout > 0 else None)

  def delta(self) -> Array:
    """The dense update `scale * A @ B`, shape (in, out), in `A`'s dtype."""
    return self.scale * (self.lora_a[...] @ self.lora_b[...])

  def __call__(self, x: Array) -> Array:
    y = self.base(x)
    h = x.astype(self.lora_a.dtype)
    if self.dropout is not None:
      h = self.dropout(h)
    h = (h @ self.lora_a[...]) @ self.lora_b[...]
    return y + (self.scale * h).astype(y.dtype)


def _replace_children(model: nnx.Module, select, build) -> int:
  """Replaces children of every submodule for which `select(name, child)`."""
  count = 0
  for _, module in list(nnx.iter_modules(model)):
    for name, child in list(vars(module).items()):
      if select(name, child):
        setattr(module, name, build(child))
        count += 1
  return count


def apply_lora(model: nnx.Module, config: LoRAConfig | None = None, *,
               rngs: nnx.Rngs | int = 0) -> nnx.Module:
  """Wraps, in place, the target linear layers of any model in `LoRALinear`.

  Works on any NNX model whose target layers are attributes named as in
  `config.targets` holding an `nnx.Linear` or an `Int8Linear`: a pretrained
  `Llama` from `gguf.load_smollm2` (float, bf16 or int8) as well as a freshly
  initialised one (LoRA pre-training). Layers already wrapped are left
  alone. Nothing else changes: train only the adapters with
  `nnx.Optimizer(model, tx, wrt=LoRAParam)` (see `trainable_filter`).

  Args:
    model: The model; modified in place.
    config: The adapters (default `LoRAConfig()`).
    rngs: Random streams for `A` and dropout, or an integer seed.

  Returns:
    The same model object.

  Raises:
    ValueError: If no layer matched `config.targets`.
  """
  config = config or LoRAConfig()
  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
  names = set(config.target_names)
  count = _replace_children(
    model, lambda name, child: name in names and _io_features(child),
    lambda child: LoRALinear(child, config, rngs=rngs))
  if not count and not list(iter_lora(model)):
    raise ValueError(f'No linear layer named {sorted(names)} in the model.')
  return model


def iter_lora(model: nnx.Module):
  """Yields `(path, LoRALinear)` for every adapter in `model`."""
  for path, module in nnx.iter_modules(model):
    if isinstance(module, LoRALinear):
      yield path, module


def merged_kernel(layer: LoRALinear) -> Array:
  """`W + scale * A @ B` in float32, shape (in, out)."""
  base = layer.base
  kernel = (base.dequantized() if isinstance(base, Int8Linear)
            else base.kernel[...])
  return kernel.astype(jnp.float32) + layer.delta().astype(jnp.float32)


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Folds every adapter into its base kernel, in place, and drops it.

  An `nnx.Linear` base gets `W + scale * A @ B` (cast to its dtype); an
  `Int8Linear` base is re-quantised from the merged float kernel (lossy, as
  any int8 merge).

  Args:
    model: A model with `LoRALinear` layers; modified in place.

  Returns:
    The same model object, with plain linear layers again.
  """

  def build(layer: LoRALinear) -> nnx.Module:
    merged = merged_kernel(layer)
    base = layer.base
    if isinstance(base, Int8Linear):
      return Int8Linear(merged, base.dtype)
    base.kernel.set_value(merged.astype(base.kernel.dtype))
    return base

  _replace_children(model, lambda _, child: isinstance(child, LoRALinear),
                    build)
  return model


# ------------------------------------------------------------------------------
# Optimizer side
# ------------------------------------------------------------------------------


def trainable_filter(method: str) -> type[nnx.Variable]:
  """The `wrt` filter of a fine-tuning method: 'full' or 'lora'/'qlora'."""
  if method == 'full':
    return nnx.Param
  if method in ('lora', 'qlora'):
    return LoRAParam
  raise ValueError(f'Unknown method {method!r}.')


def _names(path: Sequence[Any]) -> list[str]:
  out = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        out.append(str(getattr(key, attr)))
        break
  return out


def is_lora_path(path: Sequence[Any]) -> bool:
  """Whether a pytree path (from `tree_flatten_with_path`) is an adapter."""
  return any(name in LORA_NAMES for name in _names(path))


def lora_labels(params: Any) -> Any:
  """`'lora'` for adapter leaves and `'frozen'` elsewhere, for `partition`.

  Works on any pytree whose adapter leaves sit under a `lora_a`/`lora_b`
  key: an `nnx.State` of all the parameters, or its pure dict.
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, _: TRAINABLE if is_lora_path(path) else FROZEN, params)


def lora_mask(params: Any) -> Any:
  """True for adapter leaves: an optax `mask` (e.g. for `optax.masked`)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: is_lora_path(path), params)


def lora_only(tx: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """`tx` on the adapters, zero updates and NO state for every other leaf.

  For a plain optax loop over the whole parameter tree (frozen base
  included); with NNX prefer `nnx.Optimizer(model, tx, wrt=LoRAParam)`,
  which never even sees the base. Inside `tx`, SGG's default mask (tensors
  of >= 2 dims) then groups only the 2-D `A` and `B` factors, since the
  base leaves reach it as `optax.MaskedNode`s.

  Args:
    tx: The optimizer of the adapters, e.g. `sgg_optax.adamw_sgg(...)`.

  Returns:
    `optax.partition({'lora': tx, 'frozen': optax.set_to_zero()}, ...)`.
  """
  return optax.partition({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                         lora_labels)


def tree_bytes(tree: Any) -> int:
  """Total bytes of the array leaves of `tree` (e.g. an optimizer state)."""
  return int(sum(np.dtype(x.dtype).itemsize * math.prod(x.shape)
                 for x in jax.tree.leaves(tree) if hasattr(x, 'dtype')))


def tree_size(tree: Any) -> int:
  """Number of array elements of `tree`."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)
                 if hasattr(x, 'shape')))


def param_summary(model: nnx.Module) -> dict[str, int]:
  """Counts and bytes of trainable adapters and of the whole model state."""
  lora = nnx.state(model, LoRAParam)
  everything = nnx.state(model)
  return {
    'lora_params': tree_size(lora),
    'lora_bytes': tree_bytes(lora),
    'model_params': tree_size(nnx.state(model, nnx.Param)),
    'model_bytes': tree_bytes(everything),
  }
