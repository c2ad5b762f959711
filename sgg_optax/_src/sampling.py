"""Layer layout and the fixed strided sample that SGG's refresh works on.

SGG re-clusters every layer every ``T`` steps. Sorting, medians and K-means
over a whole sharded parameter would gather it onto one device, and in the
chain form the statistic is the freshly computed update, which a
``lax.cond`` operand would force XLA to materialise on every step. So the
refresh reads a small fixed sample of each layer instead:

* each layer contributes at most ``sample_size`` values taken on a regular
  grid, read with one gather whose indices are replicated, so under SPMD
  each device reads only the positions it holds and a sample-sized
  all-reduce assembles the result, whatever the parameter's sharding;
* the grid keeps runs of 16 consecutive elements (one cache line of float32)
  when the last axis allows it, so the per-step cost of reading the sample is
  about ``sample_size / layer size`` of the update, not 16 times that;
* the samples of all layers are stacked into one ``(G, S)`` replicated array,
  the only thing the refresh's ``lax.cond`` takes; gathering it moves at most
  ``G * S`` floats, never a parameter.

Layers with at most ``sample_size`` elements are read whole, so for them
every refresh statistic is exact. For larger ones the K-means centres and
medians are sample estimates: a median taken from ``n`` sampled values lands
within about ``1 / sqrt(n)`` of rank 1/2 (``n = 4096``: within 1.6% of the
rank with 95% probability; ``tests/test_sampling.py`` measures it).
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 16  # consecutive elements kept together (a 64-byte line of f32)


class LeafLayout(NamedTuple):
  """Where one grouped parameter sits in the stacked ``(G, K)`` statistics.

  Attributes:
    offset: first row of this parameter in the stacked statistics.
    stacked: whether the leading axis indexes layers.
    rows: number of rows (layers): 1, or the stacked axis length.
    numel: elements per row.
    view: per-row shape with the last axis split into ``(n / chunk, chunk)``
      when the sample keeps runs of ``chunk`` consecutive elements.
    strides: sample strides over ``view`` (the chunk axis excluded).
    count: sampled elements per row.
  """
  offset: int
  stacked: bool
  rows: int
  numel: int
  view: tuple[int, ...]
  strides: tuple[int, ...]
  count: int


def _grid_strides(dims: Sequence[int], budget: int, unit: int = 1
                  ) -> tuple[int, ...]:
  """Strides so that ``x[::s0, ::s1, ...]`` keeps at most ``budget`` entries.

  The last axis keeps about ``sqrt(budget * unit)`` elements (an entry of
  the last axis holds ``unit`` elements; more when the leading axes are
  short), the rest of the budget goes to the leading axes, so the sample
  spreads over the whole array.
  """
  if math.prod(dims) <= budget:
    return (1,) * len(dims)
  if len(dims) == 1:
    return (-(-dims[0] // budget),)
  *lead, last = dims
  keep = min(last, max(budget // math.prod(lead),
                       math.isqrt(budget * unit) // unit, 1))
  stride = -(-last // keep)
  keep = -(-last // stride)
  return _grid_strides(lead, max(1, budget // keep)) + (stride,)


def leaf_layout(shape: Sequence[int], stacked: bool, sample_size: int,
                offset: int) -> LeafLayout:
  """The layout of one grouped parameter.

  Args:
    shape: the parameter's shape.
    stacked: whether the leading axis indexes layers (a scanned model).
    sample_size: maximum sampled elements per row.
    offset: first row in the stacked statistics.

  Returns:
    The :class:`LeafLayout`.
  """
  shape = tuple(shape)
  rows = shape[0] if stacked else 1
  dims = shape[1:] if stacked else shape
  numel = math.prod(dims)
  if numel > sample_size and dims and dims[-1] % _CHUNK == 0:
    chunk, grid = _CHUNK, dims[:-1] + (dims[-1] // _CHUNK,)
    view = grid + (_CHUNK,)
  else:
    chunk, grid = 1, dims
    view = dims
  strides = _grid_strides(grid, max(1, sample_size // chunk), chunk)
  count = chunk * math.prod(-(-d // s) for d, s in zip(grid, strides))
  return LeafLayout(offset, stacked, rows, numel, view, strides, count)


def sample_leaf(x: jax.Array, layout: LeafLayout) -> jax.Array:
  """The ``(rows, count)`` float32 sample of one parameter-shaped array.

  The sampled positions form a regular grid over ``(rows,) + layout.view``;
  they are read with one gather on the array as it is (no reshape, no
  strided slice), so under SPMD each device reads the positions it holds
  and an all-reduce of the ``(rows, count)`` result assembles the sample,
  whatever the parameter's sharding. (Strided slices of a sharded axis make
  XLA re-shard the operand when the stride does not match the shards.)
  """
  chunked = len(layout.view) > len(layout.strides)
  axes = [jnp.arange(layout.rows)]
  axes += [jnp.arange(0, n, s) for n, s in zip(layout.view, layout.strides)]
  if chunked:
    axes.append(jnp.arange(layout.view[-1]))
  grid = list(jnp.meshgrid(*axes, indexing='ij', sparse=True))
  if chunked:  # (chunk, offset) -> index on the parameter's last axis
    grid = grid[:-2] + [grid[-2] * layout.view[-1] + grid[-1]]
  if not layout.stacked:
    grid = grid[1:]
  out = x[tuple(grid)].astype(jnp.float32)
  return out.reshape(layout.rows, layout.count)


def _replicated(fn):
  """Runs ``fn`` so that its output is replicated on the current mesh.

  Under an explicit-axes mesh a gather from a sharded axis is not
  expressible in sharding types, so the sampling runs in auto mode and XLA
  moves only the sampled values. Without a mesh this is ``fn`` itself.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn
  spec = jax.sharding.PartitionSpec()
  if mesh.explicit_axes:
    return jax.sharding.auto_axes(fn, out_sharding=spec)
  return lambda *a: jax.lax.with_sharding_constraint(fn(*a), spec)


def stack_samples(stats: Sequence[jax.Array], layouts: Sequence[LeafLayout],
                  sample_size: int) -> jax.Array:
  """The ``(G, sample_size)`` replicated sample of all grouped parameters.

  Args:
    stats: the clustered statistic of each grouped parameter.
    layouts: their layouts, in row order.
    sample_size: padded row length ``S``.

  Returns:
    float32 ``(G, S)``; entries past a row's ``count`` are zero padding
    (see :func:`sample_weights`).
  """
  def build(*xs):
    rows = [jnp.pad(sample_leaf(x, lay), ((0, 0), (0, sample_size - lay.count)))
            for x, lay in zip(xs, layouts)]
    return jnp.concatenate(rows, axis=0)
  return _replicated(build)(*stats)


def sample_weights(layouts: Sequence[LeafLayout], sample_size: int
                   ) -> jax.Array:
  """How many elements each sampled value stands for; 0 on padding.

  A row with ``numel`` elements of which ``count`` are sampled gives each
  sample the weight ``numel / count``, so model-wide statistics weigh every
  layer by its size. Built from per-row numbers (no large constant).

  Returns:
    float32 ``(G, sample_size)``.
  """
  count = np.concatenate([[lay.count] * lay.rows for lay in layouts])
  weight = np.concatenate([[lay.numel / lay.count] * lay.rows
                           for lay in layouts]).astype(np.float32)
  cols = jnp.arange(sample_size)[None, :]
  return jnp.where(cols < jnp.asarray(count)[:, None],
                   jnp.asarray(weight)[:, None], jnp.float32(0.0))
