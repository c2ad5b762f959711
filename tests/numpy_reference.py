"""A plain NumPy reference of one SGG refresh and of the scaled update.

Written from the paper's description (Li et al., 2025, Eqs. 5-7 and
Algorithm 1), for layers small enough to be clustered whole: optimal 1-D
K-means, exact medians. It shares no code with the library.
"""

import numpy as np


def nearest(x, centres):
  """Index of the nearest centre (ties to the lower index)."""
  return np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)


def kmeans(x, k):
  """Optimal 1-D K-means of ``x`` in float64, by dynamic programming over
  the sorted values (the clusters are contiguous runs), O(k n^2).

  Returns the ``k`` sorted centres (an empty cluster takes the next centre
  up, or above the last filled one, that one) and the least within-cluster
  sum of squares.
  """
  xs = np.sort(np.asarray(x, np.float64))
  n = len(xs)
  s1 = np.concatenate([[0.0], np.cumsum(xs)])
  s2 = np.concatenate([[0.0], np.cumsum(xs * xs)])
  j, i = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing='ij')
  size = np.maximum(i - j, 1)
  cost = np.where(i >= j, s2[i] - s2[j] - (s1[i] - s1[j]) ** 2 / size,
                  np.inf)  # cost[j, i]: the run j .. i - 1
  cost = np.maximum(cost, 0.0)
  best, args = cost[0], []
  for _ in range(k - 1):
    total = best[:, None] + cost
    args.append(np.argmin(total, 0))  # the first minimiser
    best = total.min(0)
  inner = [n]  # the boundaries, found back to front
  for arg in reversed(args):
    inner.append(int(arg[inner[-1]]))
  bounds = [0] + inner[::-1][:-1] + [n]
  centres = np.array([xs[a:b].mean() if b > a else np.nan
                      for a, b in zip(bounds[:-1], bounds[1:])])
  for c in range(k - 2, -1, -1):  # empty: the next centre up
    if np.isnan(centres[c]):
      centres[c] = centres[c + 1]
  for c in range(1, k):  # above the last filled one: that one
    if np.isnan(centres[c]):
      centres[c] = centres[c - 1]
  return centres, best[n]


def sum_of_squares(x, centres):
  """Within-cluster sum of squares of ``x`` assigned to its nearest centre
  (ties to the lower one), in float64."""
  x = np.asarray(x, np.float64)
  ids = nearest(x, np.asarray(centres, np.float64))
  return sum(((x[ids == c] - x[ids == c].mean()) ** 2).sum()
             for c in np.unique(ids))


def refresh(stats, scales, mdas, *, beta3, k, cluster_stat='signed',
            global_stat='layer_mean', eps=1e-8, clamp=(0.1, 10.0),
            clamp_before=True):
  """One refresh over a list of per-layer statistics (optimal K-means of
  each layer, whole).

  Returns (ids per layer, centres, scales, mdas, global deviation).
  """
  all_ids, new_c, devs, xs = [], [], [], []
  d = np.full((len(stats), k), np.nan)
  for g, stat in enumerate(stats):
    x = np.asarray(stat, np.float64).ravel()
    feat = np.abs(x) if cluster_stat == 'abs' else x
    c, _ = kmeans(feat, k)
    ids = nearest(feat, c)
    dev = np.abs(x - x.mean())
    for j in range(k):
      if np.any(ids == j):
        d[g, j] = np.median(dev[ids == j])
    all_ids.append(ids.reshape(np.shape(stat)))
    new_c.append(c)
    devs.append(dev)
    xs.append(x)
  informative = np.isfinite(d) & (d > 0)
  if global_stat == 'layer_mean':
    glob = np.median(np.concatenate(devs))
  elif global_stat == 'global_mean':
    allx = np.concatenate(xs)
    glob = np.median(np.abs(allx - allx.mean()))
  else:
    glob = np.median(d[informative])
  raw = glob / (d + eps)
  if clamp_before:
    raw = np.clip(raw, *clamp)
  new = beta3 * scales + (1 - beta3) * raw
  if not clamp_before:
    new = np.clip(new, *clamp)
  new_scales = np.where(informative, new, scales)
  new_mdas = np.where(informative, d, mdas)
  return all_ids, np.stack(new_c), new_scales, new_mdas, glob


def scaled(update, ids, layer_scales):
  return np.asarray(update) * layer_scales[ids]
