"""Scalar penalty functions rho(z) with their first two derivatives, for Numba kernels.

A penalty is selected in a kernel by an integer code (a compile-time-friendly switch that
LLVM hoists out of the inner loops) and one shape parameter ``c``. The Python-side
description of each penalty (name, code, default shape, convexity) is in
:mod:`structpred.models.penalties`; adding a penalty means adding a branch here and an
entry there.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

QUADRATIC = 0     # rho = c z^2 / 2                     (Gaussian MRF)
STUDENT_T = 1     # rho = log(1 + c z^2)                (Fields of Experts)
CHARBONNIER = 2   # rho = sqrt(1 + c z^2) - 1           (convex; = (sqrt(eps^2 + z^2) - eps)/eps,
                  #                                       c = 1/eps^2)
GEN_CHARBONNIER = 3  # rho = ((1 + c z^2)^a - 1) / a, a = GEN_CHARBONNIER_EXPONENT (non-convex
                     # for a < 1/2; a -> 0 is Student-t, a = 1/2 twice Charbonnier)
GEN_CHARBONNIER_EXPONENT = 0.25


@njit(inline="always", nogil=True, cache=True)
def penalty_terms(kind, z, c):
    """Return ``(rho(z), rho'(z), rho''(z))`` for penalty ``kind`` with shape ``c``."""
    if kind == STUDENT_T:
        q = 1.0 / (1.0 + c * z * z)
        return math.log1p(c * z * z), 2.0 * c * z * q, 2.0 * c * (1.0 - c * z * z) * q * q
    if kind == CHARBONNIER:
        s = math.sqrt(1.0 + c * z * z)
        return s - 1.0, c * z / s, c / (s * s * s)
    if kind == GEN_CHARBONNIER:
        a = GEN_CHARBONNIER_EXPONENT
        u = c * z * z
        q = 1.0 + u
        qa2 = q ** (a - 2.0)
        return math.expm1(a * math.log1p(u)) / a, 2.0 * c * z * qa2 * q, \
            2.0 * c * qa2 * (1.0 + (2.0 * a - 1.0) * u)
    return 0.5 * c * z * z, c * z, c


@njit(inline="always", nogil=True, cache=True)
def penalty_shape_terms(kind, z, c):
    """Return ``(d rho/dc, d rho'/dc)`` at ``z`` for penalty ``kind`` with shape ``c`` (for a
    learned shape: the energy's and the mixed product's derivatives in c)."""
    if kind == STUDENT_T:
        q = 1.0 / (1.0 + c * z * z)
        return z * z * q, 2.0 * z * q * q
    if kind == CHARBONNIER:
        s = math.sqrt(1.0 + c * z * z)
        return 0.5 * z * z / s, z * (2.0 + c * z * z) / (2.0 * s * s * s)
    if kind == GEN_CHARBONNIER:
        a = GEN_CHARBONNIER_EXPONENT
        u = c * z * z
        q = 1.0 + u
        qa2 = q ** (a - 2.0)
        return z * z * qa2 * q, 2.0 * z * qa2 * (1.0 + a * u)
    return 0.5 * z * z, z


# Row kernels: a whole response row at a time, vectorisable (no math.log per element: glibc's
# log is not vectorised by Numba without SVML). The Student-t branch is specialised: the
# energy is sum_j log(q_j), q_j = 1 + c z_j^2 >= 1, computed as the logs of products of 8
# terms (exact up to rounding; rows whose products leave the safe range fall back on one log
# per term) by :func:`log_sum`, a vectorised log accurate to a few ulp. Any other ``kind``
# goes through :func:`penalty_terms` element by element.
_ROW_FM = {"contract", "reassoc", "nsz", "arcp"}
_MANT = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_SQRT2 = 1.4142135623730951
_LN2 = 0.6931471805599453


@njit(nogil=True, fastmath=_ROW_FM, error_model="numpy", cache=True)
def log_sum(x, n):
    """``sum_{j < n} log(x_j)`` for finite positive normal ``x``; overwrites ``x[:n]``."""
    xi = x.view(np.int64)
    esum = 0
    for j in range(n):
        b = xi[j]
        esum += (b >> 52) - 1023
        xi[j] = (b & _MANT) | _ONE_BITS            # x_j <- mantissa in [1, 2)
    lsum = 0.0
    big = 0
    for j in range(n):
        mm = x[j]
        if mm > _SQRT2:                            # fold to [sqrt(1/2), sqrt(2))
            mm = 0.5 * mm
            big += 1
        s = (mm - 1.0) / (mm + 1.0)                # log mm = 2 atanh(s), |s| <= 0.1716
        s2 = s * s
        p = 1.0 / 21.0
        p = p * s2 + 1.0 / 19.0
        p = p * s2 + 1.0 / 17.0
        p = p * s2 + 1.0 / 15.0
        p = p * s2 + 1.0 / 13.0
        p = p * s2 + 1.0 / 11.0
        p = p * s2 + 1.0 / 9.0
        p = p * s2 + 1.0 / 7.0
        p = p * s2 + 1.0 / 5.0
        p = p * s2 + 1.0 / 3.0
        lsum += 2.0 * s + 2.0 * s * s2 * p
    return (esum + big) * _LN2 + lsum


@njit(nogil=True, fastmath=_ROW_FM, error_model="numpy", cache=True)
def penalty_grad_row(kind, c, w, z, tmp):
    """``z <- w rho'(z)`` in place; returns ``w sum_j rho(z_j)``. ``tmp``: scratch of
    size >= 2 z.size."""
    n = z.size
    s = 0.0
    if kind == STUDENT_T:
        c2 = 2.0 * c * w
        for j in range(n):
            zj = z[j]
            q = 1.0 + c * zj * zj
            tmp[j] = q
            z[j] = c2 * zj / q
        n8 = n // 8
        P = tmp[n:n + max(n8, 1)]
        if n8 == 0:
            for j in range(n):
                s += math.log(tmp[j])
            return w * s
        for j in range(n8):
            P[j] = ((tmp[j] * tmp[j + n8]) * (tmp[j + 2 * n8] * tmp[j + 3 * n8])) * (
                (tmp[j + 4 * n8] * tmp[j + 5 * n8]) * (tmp[j + 6 * n8] * tmp[j + 7 * n8]))
        for j in range(n - 8 * n8):               # the < 8 remaining terms
            P[j % n8] *= tmp[8 * n8 + j]
        ok = 0
        for j in range(n8):
            ok += P[j] < 1e300                     # false for inf and NaN too
        if ok == n8:
            return w * log_sum(P, n8)
        for j in range(n):                         # huge responses (or NaN): one log per term
            s += math.log(tmp[j])
        return w * s
    for j in range(n):
        r, d1, _ = penalty_terms(kind, z[j], c)
        s += r
        z[j] = w * d1
    return w * s


@njit(nogil=True, fastmath=_ROW_FM, error_model="numpy", cache=True)
def penalty_curv_row(kind, c, w, z):
    """``z <- w rho''(z)`` in place."""
    n = z.size
    if kind == STUDENT_T:
        c2 = 2.0 * c * w
        for j in range(n):
            zj = z[j]
            u = c * zj * zj
            q = 1.0 / (1.0 + u)
            z[j] = c2 * (1.0 - u) * q * q
        return
    for j in range(n):
        _, _, d2 = penalty_terms(kind, z[j], c)
        z[j] = w * d2
