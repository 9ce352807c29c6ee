"""2-D DCT-II filter bases (Chen et al. 2013 learn FoE filters in the DCT basis without DC)."""
from __future__ import annotations

import numpy as np


def dct_1d(m: int) -> np.ndarray:
    """Orthonormal 1-D DCT-II matrix; row u is the u-th basis function."""
    n = np.arange(m)
    c = np.sqrt(2.0 / m) * np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / m)
    c[0] /= np.sqrt(2.0)
    return c


def dct_filters(m: int) -> np.ndarray:
    """The m*m - 1 orthonormal 2-D DCT-II basis filters without DC, shape (m*m-1, m, m).

    Ordered by frequency (u + v, then u), the order of the peer implementation, so that
    "the first K" means the K smoothest filters.
    """
    c = dct_1d(m)
    idx = sorted(((u, v) for u in range(m) for v in range(m) if u + v > 0),
                 key=lambda uv: (uv[0] + uv[1], uv[0]))
    return np.stack([np.outer(c[u], c[v]) for u, v in idx])
