"""The implicit gradient of a loss through the argmin (implicit function theorem).

At a minimiser ``y*`` of ``E(.; x, theta)``, ``grad_y E(y*; theta) = 0`` defines
``y*(theta)``, and for a loss ``l(y*)``::

    dl/dtheta = - E_wy (E_yy)^-1 dl/dy       (Do et al. 2007; Samuel & Tappen 2009)

computed matrix-free: solve ``E_yy u = dl/dy`` by conjugate gradients on Hessian-vector
products, then return ``-(E_wy^T u)``. Nothing here depends on how ``y*`` was found
(any inner solver will do, as in jaxopt's ``implicit_diff``).

The Field-of-Experts energy is not convex: ``E_yy`` can have non-positive curvature
directions (at an inexact minimiser, or at a saddle). CG then meets ``p^T E_yy p <= 0`` and
its answer is meaningless; we detect that and switch to MINRES, which solves symmetric
indefinite systems, and record the switch in the diagnostics.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.sparse.linalg as spla
from numba import njit

from structpred.kernels.threads import single_threaded_blas


class AdjointWarning(RuntimeWarning):
    """The adjoint system was not solved to tolerance: the gradient is approximate."""


@dataclass(frozen=True)
class AdjointInfo:
    """Diagnostics of one adjoint solve."""

    u: np.ndarray = field(repr=False)  #: solution of E_yy u = dl/dy (reusable as a warm start)
    iterations: int               #: CG (+ MINRES) iterations
    residual: float               #: final ||E_yy u - b|| / ||b||
    converged: bool
    negative_curvature: bool      #: CG met p^T E_yy p <= 0
    method: str                   #: "cg" or "cg+minres"


_FM = {"reassoc", "contract", "nsz"}


@njit(nogil=True, fastmath=_FM, cache=True)
def _dot(a, b):
    s = 0.0
    for i in range(a.size):
        s += a[i] * b[i]
    return s


@njit(nogil=True, fastmath=_FM, cache=True)
def _cg_step(u, r, p, Ap, a):
    """u += a p; r -= a Ap; returns r.r (one pass)."""
    s = 0.0
    for i in range(u.size):
        u[i] += a * p[i]
        ri = r[i] - a * Ap[i]
        r[i] = ri
        s += ri * ri
    return s


@njit(nogil=True, fastmath=_FM, cache=True)
def _cg_direction(p, r, beta):
    for i in range(p.size):
        p[i] = r[i] + beta * p[i]


def conjugate_gradient(hvp, b, *, x0=None, rtol=1e-8, maxiter=1000):
    """Solve ``A u = b`` for symmetric positive definite ``A`` given as ``hvp(v) = A v``.

    Stops when ``||b - A u|| <= rtol * ||b||`` (info 0), after ``maxiter`` iterations
    (info 1), or when a search direction has ``p^T A p <= 0`` (info 2: A is not positive
    definite along p; ``u`` is the last good iterate).

    The vector updates are small Numba kernels (serial, no BLAS): numpy's BLAS threads
    and the kernels' Numba threads would otherwise fight over the cores (measured: 10-30x
    slower CG iterations on 2 cores).

    Returns
    -------
    u, info, iterations, relative residual
    """
    b = np.ascontiguousarray(b, dtype=np.float64)
    flat = b.ravel()
    bnorm = float(np.sqrt(_dot(flat, flat)))
    if bnorm == 0.0:
        return np.zeros_like(b), 0, 0, 0.0
    u = np.zeros_like(b) if x0 is None else np.array(x0, dtype=np.float64).reshape(b.shape)
    r = b - hvp(u) if x0 is not None else b.copy()
    r = np.ascontiguousarray(r, dtype=np.float64)
    p = r.copy()
    uf, rf, pf = u.ravel(), r.ravel(), p.ravel()
    rr = _dot(rf, rf)
    stop = (rtol * bnorm) ** 2
    it = 0
    while rr > stop:
        if it >= maxiter:
            return u, 1, it, np.sqrt(rr) / bnorm
        Ap = np.ascontiguousarray(hvp(p), dtype=np.float64).ravel()
        pAp = _dot(pf, Ap)
        if not pAp > 0.0:
            return u, 2, it, np.sqrt(rr) / bnorm
        a = rr / pAp
        rr_new = _cg_step(uf, rf, pf, Ap, a)
        _cg_direction(pf, rf, rr_new / rr)
        rr = rr_new
        it += 1
    return u, 0, it, np.sqrt(rr) / bnorm


@dataclass(frozen=True)
class ImplicitGradient:
    """Gradient through the argmin by the implicit function theorem.

    Parameters
    ----------
    rtol : float
        Relative residual tolerance of the adjoint solve ``||E_yy u - b|| <= rtol ||b||``.
    maxiter : int
        Maximum CG iterations (and MINRES iterations if it falls back).

    The default ``rtol=1e-8`` is for an accurate gradient (the API, the finite-difference
    checks). The training config ``configs/gradient/implicit.yaml`` uses ``rtol=1e-6`` on
    purpose: the adjoint is solved for every image at every outer evaluation, and the
    outer optimiser needs only a few digits of the gradient (README, "Tolerances").
    """

    rtol: float = 1e-8
    maxiter: int = 2000

    #: the prediction is the inner solver's minimiser, so the solver's convergence matters
    uses_argmin: ClassVar[bool] = True

    def __post_init__(self):
        if not self.rtol > 0:
            raise ValueError(f"rtol must be positive, got {self.rtol!r}")
        if not (isinstance(self.maxiter, (int, np.integer)) and self.maxiter >= 1):
            raise ValueError(f"maxiter must be a positive integer, got {self.maxiter!r}")

    def solve_adjoint(self, hvp, b, u0=None) -> AdjointInfo:
        """Solve ``E_yy u = b`` (CG; MINRES if CG meets non-positive curvature)."""
        u, info, its, res = conjugate_gradient(hvp, b, x0=u0, rtol=self.rtol,
                                               maxiter=self.maxiter)
        method, negative = "cg", info == 2
        if negative:
            u, its2, res = _minres(hvp, b, u, self.rtol, self.maxiter)
            its += its2
            method = "cg+minres"
        converged = bool(res <= self.rtol * (1 + 1e-9))
        if not converged:
            warnings.warn(f"adjoint {method} stopped at relative residual {res:.2e} > "
                          f"{self.rtol:.1e} after {its} iterations: the gradient is approximate",
                          AdjointWarning, stacklevel=3)
        return AdjointInfo(u=u, iterations=its, residual=float(res), converged=converged,
                           negative_curvature=negative, method=method)

    def predict_and_grad(self, model, x, theta, dl_dy, *, solver, y0=None, u0=None,
                         serial=False):
        """Minimise with ``solver`` (warm-started from ``y0``), then the implicit gradient of
        the loss there (adjoint warm-started from ``u0``); ``serial`` as in ``__call__``.

        Returns ``(SolveResult, dl/dtheta, AdjointInfo)``; ``dl_dy`` is a callable y -> dl/dy.
        """
        res = solver.minimize(model, x, theta, y0=y0, serial=serial)
        # a padding model: the adjoint lives on the extended domain, the loss sees the crop
        xe = model.extend(np.ascontiguousarray(x, dtype=np.float64))
        b = model.extend_adjoint(dl_dy(res.y))
        g, info = self(model, xe, theta, res.y_domain, b, u0=u0, serial=serial)
        return res, g, info

    def __call__(self, model, x, theta, y_star, dl_dy, u0=None, *, serial=False):
        """Return ``(dl/dtheta, AdjointInfo)`` at the minimiser ``y_star``; ``serial=True``
        applies E_yy on the calling thread only (threads over images). All arrays are on the
        model's computational domain (for a padding model: the extended ``x``, the full
        ``SolveResult.y_domain`` and ``extend_adjoint(dl/dy)``)."""
        with single_threaded_blas():     # the kernels' Numba threads own the cores
            hvp = (model.hessian(y_star, x, theta, serial=True) if serial
                   else model.hessian(y_star, x, theta))
            b = np.ascontiguousarray(dl_dy, dtype=np.float64)
            info = self.solve_adjoint(hvp, b, u0)
            return -model.mixed_product(y_star, x, theta, info.u, serial=serial), info


def _minres(hvp, b, x0, rtol, maxiter):
    """MINRES to a true relative residual ``||b - A u|| <= rtol ||b||``: SciPy's stopping test
    is relative to ``||A|| ||u|| + ||b||``, so it is re-run (warm) with a tighter internal
    tolerance until the true residual meets ``rtol`` or the iteration budget is spent."""
    shape = b.shape
    op = spla.LinearOperator((b.size, b.size), dtype=np.float64,
                             matvec=lambda v: hvp(v.reshape(shape)).ravel())
    count = [0]

    def callback(_):
        count[0] += 1
    bnorm = float(np.linalg.norm(b))
    u, inner_tol, res = x0.ravel(), rtol, np.inf
    for _ in range(6):
        u, _ = spla.minres(op, b.ravel(), x0=u, rtol=inner_tol,
                           maxiter=max(1, maxiter - count[0]), callback=callback)
        res = float(np.linalg.norm(b.ravel() - op.matvec(u)) / bnorm)
        if res <= rtol or count[0] >= maxiter:
            break
        inner_tol *= max(1e-3, 0.5 * rtol / res)
    return u.reshape(shape), count[0], res
