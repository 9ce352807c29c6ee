"""Scalar penalty functions rho(z) with their first two derivatives, for Numba kernels.

A penalty is selected in a kernel by an integer code (a compile-time-friendly switch that
LLVM hoists out of the inner loops) and one shape parameter ``c``. The Python-side
description of each penalty (name, code, default shape, convexity) is in
:mod:`structpred.models.penalties`; adding a penalty means adding a branch here and an
entry there.
"""
from __future__ import annotations

import math

from numba import njit

QUADRATIC = 0   # rho = c z^2 / 2                     (Gaussian MRF)
STUDENT_T = 1   # rho = log(1 + c z^2)                (Fields of Experts)


@njit(inline="always", nogil=True, cache=True)
def penalty_terms(kind, z, c):
    """Return ``(rho(z), rho'(z), rho''(z))`` for penalty ``kind`` with shape ``c``."""
    if kind == STUDENT_T:
        q = 1.0 / (1.0 + c * z * z)
        return math.log1p(c * z * z), 2.0 * c * z * q, 2.0 * c * (1.0 - c * z * z) * q * q
    return 0.5 * c * z * z, c * z, c
