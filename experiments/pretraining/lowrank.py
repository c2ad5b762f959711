"""The low-rank model: every attention/MLP kernel factorised as ``W = U V``.

The "Low-Rank" row of the paper's C4 table (Kamalakara et al., 2022,
*Exploring Low Rank Training of Deep Neural Networks*, arXiv 2209.13569):
the model itself has rank-``r`` linear maps, trained from scratch, both
factors trainable, with no full-rank kernel anywhere (unlike LoRA, whose
frozen random kernel keeps full rank). Embeddings, norms and the head stay
dense.

The factors start at the spectral initialisation the paper recommends: the
dense layer is first initialised as usual (normal, std 0.02), then ``U``
and ``V`` are its top-``r`` singular vectors, each scaled by the square
root of the singular values, so ``U V`` is the best rank-``r``
approximation of the dense initialisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.common.lora import TARGET_PRESETS

Array = jax.Array


class LowRankLinear(nnx.Module):
  """``x @ U @ V``: a bias-free linear layer of rank ``r``.

  Args:
    layer: the dense ``nnx.Linear`` whose initial kernel ``(in, out)`` is
      factorised (spectral initialisation); it is not kept.
    rank: the inner dimension ``r`` (at most ``min(in, out)``).
  """

  def __init__(self, layer: nnx.Linear, rank: int):
    kernel = layer.kernel[...].astype(jnp.float32)
    d_in, d_out = kernel.shape
    if not 1 <= rank <= min(d_in, d_out):
      raise ValueError(f'rank must be in [1, {min(d_in, d_out)}] for a '
                       f'({d_in}, {d_out}) kernel, got {rank}.')
    u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
    root = jnp.sqrt(s[:rank])
    dtype = layer.kernel.dtype
    self.u = nnx.Param((u[:, :rank] * root).astype(dtype))
    self.v = nnx.Param((root[:, None] * vt[:rank]).astype(dtype))
    self.dtype = layer.dtype
    self.rank = rank

  def __call__(self, x: Array) -> Array:
    dtype = self.dtype or x.dtype
    h = x.astype(dtype) @ self.u[...].astype(dtype)
    return h @ self.v[...].astype(dtype)


def factorize(model: nnx.Module, rank: int,
              targets: str = 'all') -> nnx.Module:
  """Replaces, in place, every target ``nnx.Linear`` by a `LowRankLinear`.

  Args:
    model: the model (e.g. a freshly initialised `Llama`).
    rank: the factors' inner dimension.
    targets: a `lora.TARGET_PRESETS` name ('all': attention and MLP).

  Returns:
    The same model object.

  Raises:
    ValueError: no layer matched, or ``rank`` exceeds a layer's dimensions.
  """
  names = set(TARGET_PRESETS[targets])
  count = 0
  for _, module in list(nnx.iter_modules(model)):
    for name, child in list(vars(module).items()):
      if name in names and isinstance(child, nnx.Linear):
        setattr(module, name, LowRankLinear(child, rank))
        count += 1
  if not count:
    raise ValueError(f'No linear layer named {sorted(names)} in the model.')
  return model
