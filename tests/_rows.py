"""Reading SGG's per-layer statistics in tests."""

import numpy as np


def rows(arrays) -> np.ndarray:
  """SGG's per-layer tuple (``(K,)`` or ``(L, K)`` entries) as ``(G, K)``.

  Per-layer scalars (``refreshes``) come out as ``(G,)``.
  """
  arrays = [np.asarray(a) for a in arrays]
  if arrays and arrays[0].dtype.kind == 'i':
    return np.concatenate([a.reshape(-1) for a in arrays])
  return np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
