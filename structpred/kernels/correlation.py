"""Numba kernels for the 'valid' 2-D correlation of an image with a filter bank.

Conventions, used by every filter-based model:

* ``y`` is an (H, W) image, ``F`` a (K, m, n) filter bank.
* The responses are ``Z[k, i, j] = sum_{a,b} F[k, a, b] * y[i + a, j + b]`` for
  ``0 <= i < H - m + 1`` and ``0 <= j < W - n + 1``: a correlation (no flip), with a
  response only where the filter lies inside the image (no padding, no boundary model).
* The adjoint maps responses back to an image:
  ``out[p, q] = sum_{k,a,b} F[k, a, b] * R[k, p - a, q - b]`` (terms outside R are zero).

All loops are ordered so that the innermost loop runs over contiguous image columns
(SIMD-friendly), and the outer ``prange`` runs over output rows so that every thread
writes its own rows: no races, and results that do not depend on the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", nogil=True, cache=True)
def correlate_row(y, F, k, i, row):
    """``row <- (F_k (*) y)[i, :]``: one response row (the building block of every kernel)."""
    m, n = F.shape[1], F.shape[2]
    row[:] = 0.0
    for a in range(m):
        src = y[i + a]
        for b in range(n):
            f = F[k, a, b]
            for j in range(row.shape[0]):
                row[j] += f * src[j + b]


@njit(inline="always", nogil=True, cache=True)
def adjoint_row_add(R, F, p, dst):
    """``dst += (adjoint correlation of R)[p, :]``: gathers, so rows can go to threads."""
    K, m, n = F.shape
    Hv, Wv = R.shape[1], R.shape[2]
    for a in range(m):
        i = p - a
        if i < 0 or i >= Hv:
            continue
        for k in range(K):
            src = R[k, i]
            for b in range(n):
                f = F[k, a, b]
                for j in range(Wv):
                    dst[j + b] += f * src[j]


@njit(parallel=True, nogil=True, cache=True)
def correlate(y, F, out):
    """Write the valid correlation of ``y`` with every filter of ``F`` into ``out`` (K, Hv, Wv)."""
    for i in prange(out.shape[1]):
        for k in range(F.shape[0]):
            correlate_row(y, F, k, i, out[k, i])


@njit(parallel=True, nogil=True, cache=True)
def correlate_adjoint(R, F, out):
    """Write the adjoint of :func:`correlate` applied to responses ``R`` into ``out`` (H, W)."""
    for p in prange(out.shape[0]):
        out[p, :] = 0.0
        adjoint_row_add(R, F, p, out[p])


@njit(parallel=True, nogil=True, fastmath={"reassoc", "contract", "nsz"}, cache=True)
def filter_gradient(y, R, out):
    """``out[k, a, b] = sum_{i,j} y[i + a, j + b] * R[k, i, j]``: the derivative of
    ``<R, correlate(y, F)>`` with respect to ``F`` (shape of ``out``: (K, m, n))."""
    K, m, n = out.shape
    Hv, Wv = R.shape[1], R.shape[2]
    for idx in prange(K * m * n):
        k = idx // (m * n)
        a = (idx // n) % m
        b = idx % n
        acc = 0.0
        for i in range(Hv):
            src = y[i + a]
            r = R[k, i]
            for j in range(Wv):
                acc += src[j + b] * r[j]
        out[k, a, b] = acc


def valid_shape(image_shape, filter_shape):
    """Shape (Hv, Wv) of the valid responses of an image to filters of ``filter_shape``."""
    return image_shape[0] - filter_shape[0] + 1, image_shape[1] - filter_shape[1] + 1


def correlate_new(y, F):
    """Allocate and return the responses of :func:`correlate` (convenience, not for hot loops)."""
    out = np.empty((F.shape[0],) + valid_shape(y.shape, F.shape[1:]))
    correlate(y, F, out)
    return out
