"""Scale-safe norms and exact (power-of-two) rescaling.

A 2-norm computed as ``sqrt(v . v)`` underflows to 0 for ``|v| < ~1e-154`` and overflows to
inf above ``~1e154``, although ``|v|`` itself is representable; every relative stopping
test built on it then fails (a CG that never stops, a solver that "converges" at once).
:func:`safe_norm` is exact to rounding over the whole float64 range, and
:func:`pow2_exponent` gives the power of two that brings an array to unit scale: multiplying
by ``2**k`` is exact (no rounding) in the normal range, so a scaled solve reproduces the
unscaled one bit for bit when the scale is itself a power of two.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

#: sqrt(v . v) is used as is when v . v lies in this range (no underflow, no overflow)
_SAFE_LO, _SAFE_HI = 1e-280, 1e280


@njit(nogil=True, fastmath={"reassoc", "contract", "nsz"}, cache=True)
def _sumsq(a):
    s = 0.0
    for i in range(a.size):
        s += a[i] * a[i]
    return s


@njit(nogil=True, cache=True)
def _amax(a):
    m = 0.0
    for i in range(a.size):
        v = abs(a[i])
        if not v <= m:               # also takes a NaN, which then stays
            m = v
            if math.isnan(v):
                return v
    return m


@njit(nogil=True, fastmath={"contract"}, cache=True)
def norm2(a):
    """Scale-safe ``||a||_2`` of a flat float64 array (one pass when ``a . a`` is in range,
    two more otherwise); NaN or inf propagate."""
    s = _sumsq(a)
    if _SAFE_LO < s < _SAFE_HI:
        return math.sqrt(s)
    m = _amax(a)
    if m == 0.0 or not math.isfinite(m):
        return m
    t = 0.0
    for i in range(a.size):
        v = a[i] / m                 # not times 1/m: that overflows for a subnormal m
        t += v * v
    return m * math.sqrt(t)


def safe_norm(a) -> float:
    """Scale-safe 2-norm of any float array (flattened)."""
    a = np.ascontiguousarray(a, dtype=np.float64).ravel()
    return float(norm2(a))


def pow2_exponent(a) -> int:
    """k with ``max|a| * 2**-k`` in [0.5, 1) (0 for an all-zero or non-finite array)."""
    m = float(_amax(np.ascontiguousarray(a, dtype=np.float64).ravel()))
    if m == 0.0 or not math.isfinite(m):
        return 0
    return math.frexp(m)[1]
