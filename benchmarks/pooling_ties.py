"""Why the pooling computes its nearest-neighbour index in float64 (issue 13).

Count (grid, window) pairs, grid 1..512, window 1..16, where torch float32 nearest-exact picks a different
source cell than the published float64 half-pixel rule floor((i + 0.5) * n_in / n_out) (skimage resize order=0).

Usage: ``python benchmarks/pooling_ties.py`` (about a minute).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

bad_torch = bad_ours = bad_exact = total = 0
for n in range(1, 513):
    for w in range(1, 17):
        if w > n:
            continue
        m = math.ceil(n / w)  # pooled cells (end padded)
        src = torch.arange(m, dtype=torch.float32).reshape(1, 1, m)
        t = F.interpolate(src, size=n, mode="nearest-exact")[0, 0].long().numpy()
        sk = resize(np.arange(m, dtype=np.float64), (n,), order=0, mode="edge", anti_aliasing=False,
                    preserve_range=True).astype(int)
        exact = ((2 * np.arange(n) + 1) * m) // (2 * n)  # exact rational arithmetic
        ours = np.floor((np.arange(n) + 0.5) * (np.float64(m) / np.float64(n))).astype(int)  # pooling.py's rule
        total += 1
        bad_torch += int((t != sk).any())
        bad_ours += int((ours != sk).any())
        bad_exact += int((exact != sk).any())
print(f"{total} (grid, window) pairs; torch float32 nearest-exact differs from skimage on {bad_torch}; "
      f"exact rational arithmetic on {bad_exact}; the float64 rule (s = n_in / n_out, floor((i + 0.5) * s)) "
      f"on {bad_ours}")
