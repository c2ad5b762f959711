"""A plain NumPy reference of one SGG refresh and of the scaled update.

Written from the paper's description (Li et al., 2025, Eqs. 5-7 and
Algorithm 1), for layers small enough to be clustered whole: exact 1-D
Lloyd K-means, exact medians. It shares no code with the library.
"""

import numpy as np


def nearest(x, centres):
  """Index of the nearest centre (ties to the lower index)."""
  return np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)


def quantile_init(x, k):
  xs = np.sort(x)
  idx = np.clip(np.floor((np.arange(k) + 0.5) / k * len(xs)).astype(int), 0,
                len(xs) - 1)
  return xs[idx]


def kmeans(x, centres, iters):
  c = np.array(centres, np.float64)
  for _ in range(iters):
    ids = nearest(x, c)
    for j in range(len(c)):
      if np.any(ids == j):
        c[j] = x[ids == j].mean()
    c = np.sort(c)
  return c


def refresh(stats, centres, scales, mdas, *, first, beta3, k, iters=10,
            cluster_stat='signed', global_stat='layer_mean', eps=1e-8,
            clamp=(0.1, 10.0), clamp_before=True):
  """One refresh over a list of per-layer statistics.

  ``first[g]``: layer ``g`` was never refreshed. K-means starts from the
  quantiles then, and when the previous centres have collapsed (all equal);
  else from the previous centres.

  Returns (ids per layer, centres, scales, mdas, global deviation).
  """
  all_ids, new_c, devs, xs = [], [], [], []
  d = np.full((len(stats), k), np.nan)
  for g, stat in enumerate(stats):
    x = np.asarray(stat, np.float64).ravel()
    feat = np.abs(x) if cluster_stat == 'abs' else x
    collapsed = np.all(centres[g] == centres[g][0])
    start = quantile_init(feat, k) if first[g] or collapsed else centres[g]
    c = kmeans(feat, start, iters)
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
