"""Numba kernels of the data term ``lam/2 ||A y - x||^2`` for a non-identity observation
operator A (inpainting mask, known blur; see :mod:`structpred.data.tasks` for the
conventions). The filter MRF's energy-gradient kernels with such a data term are generated
with the filter-bank kernels (:mod:`structpred.kernels.filterbank`, ``energy_grad_task``).

The identity (denoising) keeps the fused fast path of :mod:`structpred.kernels.filterbank`
untouched; for another A the data gradient ``G = lam A^T (A y - x)`` is computed here and
handed to the generated ``adjoint_pass`` as its "y" with x = 0 and lam = 1 (so the fast
adjoint adds ``C^T R`` onto G), and the data energy is computed here too.
"""
from __future__ import annotations

from numba import njit

OP_IDENTITY, OP_MASK, OP_BLUR = 0, 1, 2


@njit(nogil=True, cache=True)
def correlate_same(y, k, out):
    """out <- zero-padded 'same' correlation of y with the odd-sized kernel k."""
    H, W = y.shape
    s = k.shape[0]
    r = s // 2
    for i in range(H):
        for j in range(W):
            acc = 0.0
            for a in range(s):
                ii = i + a - r
                if ii < 0 or ii >= H:
                    continue
                for b in range(s):
                    jj = j + b - r
                    if 0 <= jj < W:
                        acc += k[a, b] * y[ii, jj]
            out[i, j] = acc


@njit(nogil=True, cache=True)
def data_grad(op, y, x, lam, M, k, kf, T, G):
    """G <- lam A^T (A y - x); returns lam/2 ||A y - x||^2 (T: (H, W) scratch)."""
    H, W = y.shape
    e = 0.0
    if op == OP_MASK:
        for i in range(H):
            for j in range(W):
                d = M[i, j] * (y[i, j] - x[i, j])
                e += d * d
                G[i, j] = lam * M[i, j] * d
        return 0.5 * lam * e
    correlate_same(y, k, T)
    for i in range(H):
        for j in range(W):
            d = T[i, j] - x[i, j]
            T[i, j] = d
            e += d * d
    correlate_same(T, kf, G)
    for i in range(H):
        for j in range(W):
            G[i, j] *= lam
    return 0.5 * lam * e


@njit(nogil=True, cache=True)
def data_hess(op, v, lam, M, k, kf, T, out):
    """out <- lam A^T A v."""
    H, W = v.shape
    if op == OP_MASK:
        for i in range(H):
            for j in range(W):
                out[i, j] = lam * M[i, j] * v[i, j]
        return
    correlate_same(v, k, T)
    correlate_same(T, kf, out)
    for i in range(H):
        for j in range(W):
            out[i, j] *= lam

