"""The implicit gradient of a loss through the argmin (implicit function theorem).

At a minimiser ``y*`` of ``E(.; x, theta)``, ``grad_y E(y*; theta) = 0`` defines
``y*(theta)``, and for a loss ``l(y*)``::

    dl/dtheta = - E_wy (E_yy)^-1 dl/dy       (Do et al. 2007; Samuel & Tappen 2009)

computed matrix-free: solve ``E_yy u = dl/dy`` by conjugate gradients on Hessian-vector
products, then return ``-(E_wy^T u)``. Nothing here depends on how ``y*`` was found (any
solver whose prediction is a minimiser will do, as in jaxopt's ``implicit_diff``); a
solve that is not one (the heavy-ball iterate of the unrolled methods) is refused.

The Field-of-Experts energy is not convex: ``E_yy`` can have non-positive curvature
directions (at an inexact minimiser, or at a saddle). CG then meets ``p^T E_yy p <= 0`` and
its answer is meaningless; we detect that and switch to MINRES, which solves symmetric
indefinite systems, and record the switch in the diagnostics.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse.linalg as spla
from numba import njit

from structpred.kernels.threads import owns_cores
from structpred.numerics import norm2, pow2_exponent, safe_norm
from structpred.solvers.precond import (
    check_options, fourier_preconditioner, select_symbol,
)
from structpred.solvers.result import Status

#: "auto" preconditions when the symbol's condition number is at least this
PRECOND_MIN_COND = 100.0


class AdjointWarning(RuntimeWarning):
    """The adjoint system was not solved to tolerance: the gradient is approximate."""


@dataclass(frozen=True)
class AdjointInfo:
    """Diagnostics of one adjoint solve."""

    u: np.ndarray = field(repr=False)  #: solution of E_yy u = dl/dy (reusable as a warm start)
    iterations: int               #: CG (+ MINRES) iterations
    residual: float               #: final ||E_yy u - b|| / ||b||
    #: CONVERGED (CG met the tolerance), NEGATIVE_CURVATURE (CG met p^T E_yy p <= 0 and
    #: MINRES met it), or MAXITER (not solved to tolerance: the gradient is approximate)
    status: Status
    method: str                   #: "cg" or "cg+minres"

    @property
    def converged(self) -> bool:
        """The adjoint system was solved to tolerance."""
        return self.status != Status.MAXITER

    @property
    def negative_curvature(self) -> bool:
        """CG met ``p^T E_yy p <= 0`` (and MINRES took over)."""
        return self.method == "cg+minres"


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


def _to_unit_scale(b, x0):
    """(k, b 2**-k, x0 2**-k) with max|b 2**-k| in [0.5, 1): exact, and every squared norm
    of the solve is then in range whatever the scale of b. A warm start that does not
    survive the rescaling (overflow) is dropped."""
    k = pow2_exponent(b)
    bt = np.ldexp(b, -k)
    if x0 is not None:
        x0 = np.ldexp(np.asarray(x0, dtype=np.float64).reshape(b.shape), -k)
        if not np.all(np.isfinite(x0)):
            x0 = None
    return k, bt, x0


def conjugate_gradient(hvp, b, *, x0=None, rtol=1e-8, maxiter=1000, precond=None):
    """Solve ``A u = b`` for symmetric positive definite ``A`` given as ``hvp(v) = A v``;
    ``precond(r)``, if given, applies a symmetric positive definite approximation of
    ``A^-1`` (preconditioned CG; the stopping test is on the true residual all the same).

    Stops when ``||b - A u|| <= rtol * ||b||`` (info 0), after ``maxiter`` iterations
    (info 1), or when a search direction has ``p^T A p <= 0`` (info 2: A is not positive
    definite along p; ``u`` is the last good iterate).

    Scale-safe: the system is solved for ``b 2**-k`` with ``max|b 2**-k|`` in [0.5, 1) and
    the answer scaled back (exact), so the squared norms of the stopping test neither
    underflow nor overflow (before: at ||b|| ~ 1e-155 the test never held, and the
    iteration ran to maxiter and diverged; at 1e160 it returned NaN), and
    ``u(s b) = s u(b)`` with the same iteration count for every s that does not overflow u.

    The vector updates are small Numba kernels (serial, no BLAS): numpy's BLAS threads
    and the kernels' Numba threads would otherwise fight over the cores (measured: 10-30x
    slower CG iterations on 2 cores).

    Returns
    -------
    u, info, iterations, relative residual
    """
    b = np.ascontiguousarray(b, dtype=np.float64)
    k, bt, x0 = _to_unit_scale(b, x0)
    u, info, its, res = _cg_unit(hvp, bt, x0, rtol, maxiter, precond)
    return np.ldexp(u, k), info, its, res


def _cg_unit(hvp, b, x0, rtol, maxiter, precond=None):
    """CG on a right-hand side of unit scale (see :func:`conjugate_gradient`)."""
    flat = b.ravel()
    bnorm = float(norm2(flat))
    if bnorm == 0.0:
        return np.zeros_like(b), 0, 0, 0.0
    u = r = None
    if x0 is not None:
        # a warm start is kept only if it beats u = 0 (one at another scale, say from an
        # earlier right-hand side 1e300 times larger, would give a residual of 1e300 ||b||)
        u = np.array(x0, dtype=np.float64).reshape(b.shape)
        r = np.ascontiguousarray(b - hvp(u), dtype=np.float64)
        if not norm2(r.ravel()) < bnorm:
            u = r = None
    if u is None:
        u, r = np.zeros_like(b), b.copy()
    uf, rf = u.ravel(), r.ravel()
    rr = _dot(rf, rf)
    stop = (rtol * bnorm) ** 2
    if precond is None:
        z = None
        p = r.copy()
        rz = rr
    else:
        z = np.ascontiguousarray(precond(r), dtype=np.float64).ravel()
        p = z.copy().reshape(b.shape)
        rz = _dot(rf, z)
    pf = p.ravel()
    it = 0
    while rr > stop:
        if it >= maxiter:
            return u, 1, it, math.sqrt(rr) / bnorm
        Ap = np.ascontiguousarray(hvp(p), dtype=np.float64).ravel()
        pAp = _dot(pf, Ap)
        if not pAp > 0.0:
            return u, 2, it, math.sqrt(rr) / bnorm
        a = rz / pAp
        rr = _cg_step(uf, rf, pf, Ap, a)
        if precond is None:
            rz_new = rr
            _cg_direction(pf, rf, rz_new / rz)
        else:
            z = np.ascontiguousarray(precond(r), dtype=np.float64).ravel()
            rz_new = _dot(rf, z)
            _cg_direction(pf, z, rz_new / rz)
        rz = rz_new
        it += 1
    return u, 0, it, math.sqrt(rr) / bnorm


@dataclass(frozen=True)
class ImplicitGradient:
    """Gradient through the argmin by the implicit function theorem.

    Parameters
    ----------
    rtol : float
        Relative residual tolerance of the adjoint solve ``||E_yy u - b|| <= rtol ||b||``.
    maxiter : int
        Maximum CG iterations (and MINRES iterations if it falls back).
    preconditioner : {"auto", "fft", None}
        ``"fft"``: preconditioned CG (and MINRES) with the model's Fourier symbol of E_yy's
        quadratic part (:meth:`EnergyModel.hessian_symbol`; two FFTs per iteration);
        ``None``: plain CG; ``"auto"`` (default): ``"fft"`` when the symbol's condition
        number is at least ``precond_min_cond``, else plain CG (the FFTs cost more than the
        iterations they save on well-conditioned systems). Models without a symbol run
        unpreconditioned.
    precond_min_cond : float
        The threshold of ``"auto"``.

    The default ``rtol=1e-8`` is for an accurate gradient (the API, the finite-difference
    checks). The training config ``structpred/configs/gradient/implicit.yaml`` uses ``rtol=1e-6`` on
    purpose: the adjoint is solved for every image at every outer evaluation, and the
    outer optimiser needs only a few digits of the gradient (README, "Tolerances").
    """

    rtol: float = 1e-8
    maxiter: int = 2000
    preconditioner: str | None = "auto"
    precond_min_cond: float = PRECOND_MIN_COND


    def __post_init__(self):
        if not self.rtol > 0:
            raise ValueError(f"rtol must be positive, got {self.rtol!r}")
        if not (isinstance(self.maxiter, (int, np.integer)) and self.maxiter >= 1):
            raise ValueError(f"maxiter must be a positive integer, got {self.maxiter!r}")
        check_options(self.preconditioner, self.precond_min_cond)

    def precond_for(self, energy):
        """The preconditioner this method uses for the bound energy, or None."""
        S = select_symbol(energy, self.preconditioner, self.precond_min_cond)
        return None if S is None else fourier_preconditioner(S, energy.shape)

    def solve_adjoint(self, hvp, b, u0=None, precond=None) -> AdjointInfo:
        """Solve ``E_yy u = b`` (CG; MINRES if CG meets non-positive curvature), scale-safe:
        solved for ``b 2**-k`` at unit scale and scaled back (see
        :func:`conjugate_gradient`)."""
        b = np.ascontiguousarray(b, dtype=np.float64)
        k, bt, u0 = _to_unit_scale(b, u0)
        info = self._solve_unit(hvp, bt, u0, precond)
        return replace(info, u=np.ldexp(info.u, k))

    def _solve_unit(self, hvp, b, u0, precond=None) -> AdjointInfo:
        u, info, its, res = _cg_unit(hvp, b, u0, self.rtol, self.maxiter, precond)
        method, negative = "cg", info == 2
        if negative:
            u, its2, res = _minres(hvp, b, u, self.rtol, self.maxiter, precond)
            its += its2
            method = "cg+minres"
        converged = bool(res <= self.rtol * (1 + 1e-9))
        status = (Status.MAXITER if not converged else
                  Status.NEGATIVE_CURVATURE if negative else Status.CONVERGED)
        if not converged:
            warnings.warn(f"adjoint {method} stopped at relative residual {res:.2e} > "
                          f"{self.rtol:.1e} after {its} iterations: the gradient is approximate",
                          AdjointWarning, stacklevel=4)
        return AdjointInfo(u=u, iterations=its, residual=float(res), status=status,
                           method=method)

    def check_solver(self, solver) -> None:
        """Refuse a solver whose prediction is not a minimiser (TypeError naming both)."""
        if not getattr(solver, "is_argmin", False):
            raise TypeError(f"ImplicitGradient differentiates an argmin, but {solver!r} "
                            f"predicts something else (its iterate after a fixed budget): "
                            f"use UnrolledGradient/TruncatedGradient for it, or an argmin "
                            f"solver such as LBFGS")

    def default_solver(self):
        """The solver used when none is given: ``LBFGS()``."""
        from structpred.solvers import LBFGS
        return LBFGS()

    def prediction_map(self, solve):
        """``(f, description)``: ``f(energy)`` is the argmin as a function of the
        parameters, found by ``solve``'s solver warm-started from ``solve``'s minimiser (the
        same basin of a non-convex energy) and refined by Newton steps
        (:func:`structpred.gradients.check.newton_polish`: finite differences are only as
        accurate as the argmins). What ``check_loss_gradient`` takes finite differences of."""
        from structpred.gradients.check import newton_polish
        self.check_solver(solve.solver)
        fixed, y0 = solve.solver, solve.y_domain
        return (lambda energy: newton_polish(energy, fixed.minimize(energy, y0=y0)),
                f"{type(self).__name__} of the argmin of {fixed!r}")

    @owns_cores
    def grad(self, energy, solve, dl_dy, *, u0=None):
        """``(dl/dtheta, AdjointInfo)`` at the minimiser of ``solve``.

        Parameters
        ----------
        energy : BoundEnergy, the energy ``solve`` minimised (``model.bind(x, theta)``)
        solve : SolveResult of a solver whose prediction is the argmin (``is_argmin``)
        dl_dy : (H, W) array, the loss gradient at ``solve.y`` (the image-shaped prediction)
        u0 : optional warm start of the adjoint (on the domain, e.g. an earlier ``info.u``)

        The adjoint lives on the energy's domain: for a padding model ``dl_dy`` enters
        through the crop's adjoint (zero padding). Raises TypeError for a solve whose solver
        is not an argmin solver.
        """
        if solve.solver is not None:
            self.check_solver(solve.solver)
        y_star = solve.y_domain
        hvp = energy.hessian(y_star)
        # the adjoint and E_wy^T u at unit scale, the gradient scaled back by 2**k (exact;
        # g(s b) = s g(b) with the same iterations for any s that does not overflow g)
        b = np.ascontiguousarray(energy.extend_adjoint(dl_dy), dtype=np.float64)
        k, bt, u0 = _to_unit_scale(b, u0)
        info = self._solve_unit(hvp, bt, u0, self.precond_for(energy))
        g = np.ldexp(-energy.mixed(y_star, info.u), k)
        return g, replace(info, u=np.ldexp(info.u, k))


def _minres(hvp, b, x0, rtol, maxiter, precond=None):
    """MINRES to a true relative residual ``||b - A u|| <= rtol ||b||``: SciPy's stopping test
    is relative to ``||A|| ||u|| + ||b||``, so it is re-run (warm) with a tighter internal
    tolerance until the true residual meets ``rtol`` or the iteration budget is spent."""
    shape = b.shape
    op = spla.LinearOperator((b.size, b.size), dtype=np.float64,
                             matvec=lambda v: hvp(v.reshape(shape)).ravel())
    M = None if precond is None else spla.LinearOperator(
        (b.size, b.size), dtype=np.float64, matvec=lambda v: precond(v.reshape(shape)).ravel())
    count = [0]

    def callback(_):
        count[0] += 1
    bnorm = safe_norm(b)
    u, inner_tol, res = x0.ravel(), rtol, np.inf
    for _ in range(6):
        u, _ = spla.minres(op, b.ravel(), x0=u, rtol=inner_tol, M=M,
                           maxiter=max(1, maxiter - count[0]), callback=callback)
        res = safe_norm(b.ravel() - op.matvec(u)) / bnorm
        if res <= rtol or count[0] >= maxiter:
            break
        inner_tol *= max(1e-3, 0.5 * rtol / res)
    return u.reshape(shape), count[0], res
