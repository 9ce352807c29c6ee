"""The L-BFGS loop: a template module, compiled once per energy-gradient kernel ``fg``.

Not used as it is: :func:`structpred.solvers.lbfgs.loop_for` renders it through
:func:`structpred.kernels.codegen.render`, which replaces the placeholder line of the global
``fg`` below by ``from <generated module> import <kernel> as fg`` (one model kernel), and
loads the result as a generated module (:func:`structpred.kernels.codegen.load`). Why: Numba
can cache a function that calls a *global* jitted function, but not one that receives it as
an argument (its address is then a "dynamic global"), and compiling this loop costs seconds
in every process otherwise. The algorithm is documented in :mod:`structpred.solvers.lbfgs`.
Statuses are members of :class:`structpred.solvers.result.Status` (Numba compiles an IntEnum
member as a constant and returns it as the member).
"""
import math

import numpy as np
from numba import njit

from structpred.solvers.precond import fourier_apply as _precondition
from structpred.solvers.result import Status

fg = None  # codegen: fg


@njit(nogil=True, fastmath={"reassoc", "contract", "nsz"}, cache=True)
def _dot(a, b):
    # reassoc: a vectorised reduction (a sequential sum runs at one add per 4 cycles)
    s = 0.0
    for i in range(a.size):
        s += a[i] * b[i]
    return s


@njit(nogil=True, fastmath={"reassoc", "contract", "nsz"}, cache=True)
def _norm(g):
    """Scale-safe ||g||_2: sqrt(g . g) when g . g is in range (the usual case, one pass),
    else rescaled by max|g_i| (sqrt(g . g) is 0 below ~1e-154 and inf above ~1e154)."""
    s = _dot(g, g)
    if 1e-280 < s < 1e280:
        return math.sqrt(s)
    m = 0.0
    for i in range(g.size):
        v = abs(g[i])
        if not v <= m:
            m = v
    if m == 0.0 or not math.isfinite(m):
        return m
    t = 0.0
    for i in range(g.size):
        v = g[i] / m
        t += v * v
    return m * math.sqrt(t)


@njit(nogil=True, cache=True)
def _fg(y, g, args, sc):
    """The energy and its gradient times ``sc`` (a power of two: exact; 1 almost always)."""
    f = fg(y, g, args)
    if sc != 1.0:
        f *= sc
        for i in range(g.size):
            g[i] *= sc
    return f


@njit(nogil=True, cache=True)
def _step_to(y, d, a, out):
    for i in range(y.size):
        out[i] = y[i] + a * d[i]


@njit(nogil=True, cache=True)
def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic interpolating (a, fa, da), (b, fb, db); NaN if it has none."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0.0:
        return np.nan
    d2 = math.copysign(math.sqrt(disc), b - a)
    den = db - da + 2.0 * d2
    if den == 0.0:
        return np.nan
    return b - (b - a) * (db + d2 - d1) / den


@njit(nogil=True, cache=True)
def _extrapolate(a0, d0, a1, d1):
    """Next trial step while still descending (d0, d1 < 0 at steps a0 < a1): where the
    secant of phi' through both points vanishes (the minimiser if phi is quadratic along
    the direction), kept within [2 a1, 64 a1]; 4 a1 if phi' is not increasing. The first
    iteration's unit-length trial step is far too short on images: plain x4 growth spent
    6 evaluations there, the secant 2-3."""
    if d1 > d0:
        a = a1 - d1 * (a1 - a0) / (d1 - d0)
        if math.isfinite(a):
            return min(max(a, 2.0 * a1), 64.0 * a1)
    return 4.0 * a1


@njit(nogil=True, cache=True)
def _line_search(args, y, f0, d, dphi0, a1, c1, c2, max_evals, y_t, g_t, sc):
    """Strong-Wolfe line search along ``d`` from ``y``.

    On success the accepted point is in ``y_t``/``g_t``; returns ``(a, f, n_evals, ok)``.

    The flat band: energies within ``eps_f`` of ``f0`` (either side) cannot be told
    apart (rounding: on the hard 24x5x5 case E ~ 1e6 is computed to a few ulp, ~1e-9,
    while a step near ||grad|| ~ 1e-6 lowers it by ~1e-13). Two points in the band are
    never ordered by their energies (that was the line search's failure on Train400
    test_011, issue 17a: the zoom rejected a point with f - f0 = +7e-10 of noise and
    |phi'| = 0.36 |phi'(0)|, then bisected towards 0 until its budget ran out); the sign
    of phi' decides, and the zoom steps to the zero of the secant of phi' instead of a
    cubic through noisy energies.
    """
    eps_f = 1e3 * 2.220446049250313e-16 * abs(f0)
    band_lo, band = f0 - eps_f, f0 + eps_f
    a_prev, f_prev, dphi_prev = 0.0, f0, dphi0
    a = a1
    nev = 0
    # bracketing phase
    a_lo = a_hi = 0.0
    f_lo = f_hi = f0
    d_lo = d_hi = dphi0
    bracketed = False
    while nev < max_evals:
        _step_to(y, d, a, y_t)
        f = _fg(y_t, g_t, args, sc)
        nev += 1
        dphi = _dot(g_t, d)
        if not (math.isfinite(f) and math.isfinite(dphi)):
            a_lo, f_lo, d_lo = a_prev, f_prev, dphi_prev
            a_hi, f_hi, d_hi = a, np.inf, np.nan
            bracketed = True
            break
        armijo = f <= f0 + c1 * a * dphi0
        approx = f <= f0 + eps_f and dphi <= (2.0 * c1 - 1.0) * dphi0
        flat = band_lo <= f <= band and band_lo <= f_prev <= band
        if (not (armijo or approx)) or (nev > 1 and f >= f_prev and not flat):
            a_lo, f_lo, d_lo = a_prev, f_prev, dphi_prev
            a_hi, f_hi, d_hi = a, f, dphi
            bracketed = True
            break
        if abs(dphi) <= -c2 * dphi0:
            return a, f, nev, True
        if dphi >= 0.0:
            a_lo, f_lo, d_lo = a, f, dphi
            a_hi, f_hi, d_hi = a_prev, f_prev, dphi_prev
            bracketed = True
            break
        a_next = _extrapolate(a_prev, dphi_prev, a, dphi)
        a_prev, f_prev, dphi_prev = a, f, dphi
        a = a_next
    if not bracketed:             # still descending after max_evals extrapolations: take the last
        if a_prev > 0.0:
            _step_to(y, d, a_prev, y_t)
            f = _fg(y_t, g_t, args, sc)
            return a_prev, f, nev + 1, True
        return 0.0, f0, nev, False
    # zoom phase: invariant: a_lo satisfies sufficient decrease, has the lowest energy so
    # far, and phi'(a_lo) (a_hi - a_lo) < 0
    while nev < max_evals:
        lo, hi = min(a_lo, a_hi), max(a_lo, a_hi)
        width = hi - lo
        a = np.nan
        if math.isfinite(f_hi) and math.isfinite(d_hi):
            if band_lo <= f_lo <= band and band_lo <= f_hi <= band and d_hi != d_lo:
                a = a_lo - d_lo * (a_hi - a_lo) / (d_hi - d_lo)    # flat band: secant of phi'
            else:
                a = _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi)
        if not (math.isfinite(a) and lo + 0.1 * width <= a <= hi - 0.1 * width):
            a = 0.5 * (a_lo + a_hi)
        if width <= 1e-14 * max(1.0, hi):
            break
        _step_to(y, d, a, y_t)
        f = _fg(y_t, g_t, args, sc)
        nev += 1
        dphi = _dot(g_t, d)
        if not (math.isfinite(f) and math.isfinite(dphi)):
            a_hi, f_hi, d_hi = a, np.inf, np.nan
            continue
        armijo = f <= f0 + c1 * a * dphi0
        approx = f <= f0 + eps_f and dphi <= (2.0 * c1 - 1.0) * dphi0
        flat = band_lo <= f <= band and band_lo <= f_lo <= band
        if (not (armijo or approx)) or (f >= f_lo and not flat):
            a_hi, f_hi, d_hi = a, f, dphi
        else:
            if abs(dphi) <= -c2 * dphi0:
                return a, f, nev, True
            if dphi * (a_hi - a_lo) >= 0.0:
                a_hi, f_hi, d_hi = a_lo, f_lo, d_lo
            a_lo, f_lo, d_lo = a, f, dphi
    # no Wolfe point found: fall back on the best point with sufficient decrease, if any
    if a_lo > 0.0 and (f_lo < f0 or f_lo <= band):
        _step_to(y, d, a_lo, y_t)
        f = _fg(y_t, g_t, args, sc)
        nev += 1
        return a_lo, f, nev, True
    return 0.0, f0, nev, False


@njit(nogil=True, cache=True)
def _report(monitor, it, gnorm, f, nev, sc):
    """Write the loop's state into ``monitor`` (a :class:`structpred.solvers.monitor.
    SolveMonitor` buffer; empty: off). Only writes, never reads: the iterates are the same
    with or without it. The iteration is written last, so a reader that sees it sees the
    norm and energy of that iteration (or a later one)."""
    if monitor.size == 0:
        return
    monitor[1] = gnorm / sc
    monitor[2] = f / sc
    monitor[3] = nev
    monitor[0] = it


@njit(nogil=True, cache=True)
def lbfgs_minimize(args, y0, gtol, rtol, maxiter, history, c1, c2, max_evals_per_search,
                   pinv, monitor):
    """Minimise the bound energy-gradient kernel ``fg(y, g, args) -> E`` from ``y0`` (flat).

    Returns ``(y, E, ||grad||, iterations, energy evaluations, status)``, ``status`` a
    :class:`Status` member. ``monitor``: an empty array, or the float64 buffer of a
    :class:`structpred.solvers.monitor.SolveMonitor` that the loop writes at every
    iteration (iteration, ||grad E||, E, evaluations; the tolerance and the first norm at
    the start; the status at the end), for a Python thread to read while the loop runs
    without the GIL.
    """
    n = y0.size
    y = y0.copy()
    g = np.empty(n)
    f = fg(y, g, args)
    nev = 1
    gnorm = _norm(g)
    if not (math.isfinite(f) and math.isfinite(gnorm)):
        if monitor.size > 0:
            _report(monitor, 0, gnorm, f, nev, 1.0)
            monitor[7] = Status.NONFINITE.value
            monitor[6] = 2.0
        return y, f, gnorm, 0, nev, Status.NONFINITE
    tol = max(gtol, rtol * gnorm)
    if monitor.size > 0:
        monitor[4] = tol
        monitor[5] = gnorm
        monitor[8] = maxiter
        monitor[6] = 1.0           # running
    # Scale safety: an energy whose gradient is far from unit scale (E times 1e-200, say)
    # is minimised as 2**-k E with ||2**-k grad|| in [0.5, 1): the curvature pairs' products
    # (s.y, y.y) would otherwise underflow or overflow. The iterates do not depend on the
    # energy's scale (L-BFGS and the Wolfe tests are scale-invariant); the scaling is exact.
    sc = 1.0
    if gnorm > 0.0 and not (1e-100 < gnorm < 1e100):
        sc = math.ldexp(1.0, -math.frexp(gnorm)[1])
        f *= sc
        for i in range(n):
            g[i] *= sc
        gnorm *= sc
        tol *= sc
    S = np.zeros((history, n))
    Yd = np.zeros((history, n))
    rho = np.zeros(history)
    al = np.zeros(history)
    d = np.empty(n)
    # With the preconditioner M: M g at the current and the trial point, and M y_k for every
    # stored pair (M y_k = M g_t - M g, by linearity), so that M q = M g - sum_k al_k M y_k
    # and y.M y cost one FFT pair per iteration (M g_t) instead of two (M q and M y): the
    # FFTs cost as much as an energy evaluation on a 481x321 BSD68 image with 24x5x5 filters.
    npre = n if pinv.size > 0 else 0
    Mg = np.empty(npre)
    Mg_t = np.empty(npre)
    MYd = np.zeros((history if npre > 0 else 0, npre))
    if npre > 0:
        for i in range(n):
            Mg[i] = g[i]
        _precondition(Mg, pinv)
    y_t = np.empty(n)
    g_t = np.empty(n)
    count = 0      # stored pairs
    newest = -1    # index of the newest pair in the ring buffer
    it = 0
    status = Status.MAXITER
    while True:
        _report(monitor, it, gnorm, f, nev, sc)
        if gnorm <= tol:
            status = Status.CONVERGED
            break
        if it >= maxiter:
            status = Status.MAXITER
            break
        # two-loop recursion: d = -H g
        for i in range(n):
            d[i] = g[i]
        for j in range(count):
            idx = (newest - j) % history
            al[idx] = rho[idx] * _dot(S[idx], d)
            a_ = al[idx]
            Yi = Yd[idx]
            for i in range(n):
                d[i] -= a_ * Yi[i]
        if npre == 0:
            if count > 0:
                yy = _dot(Yd[newest], Yd[newest])
                gamma = 1.0 / (rho[newest] * yy)
            else:
                gamma = 1.0 / gnorm   # first step: move by at most 1 in the l2 norm
            for i in range(n):
                d[i] *= gamma
        else:
            # H0 = (s.y / y.M y) M, M = the inverse of the model's Fourier symbol.
            # Measured (issue 17b, from y0 = x): hard 24x5x5
            # 730 it / 753 evals -> 390 / 413, hard 48x7x7 1041 / 1072 -> 541 / 571 (one FFT
            # pair per iteration, below: 393 / 417 and 521 / 546);
            # H0 = M unscaled: 610 / 615 and 895 / 909.
            # M q = M g - sum_k al_k M y_k (the first loop's q, by linearity)
            for i in range(n):
                d[i] = Mg[i]
            for j in range(count):
                idx = (newest - j) % history
                a_ = al[idx]
                MYi = MYd[idx]
                for i in range(n):
                    d[i] -= a_ * MYi[i]
            if count > 0:
                gamma = 1.0 / (rho[newest] * _dot(Yd[newest], MYd[newest]))
                for i in range(n):
                    d[i] *= gamma
        for j in range(count - 1, -1, -1):
            idx = (newest - j) % history
            b_ = rho[idx] * _dot(Yd[idx], d)
            Si = S[idx]
            c_ = al[idx] - b_
            for i in range(n):
                d[i] += c_ * Si[i]
        for i in range(n):
            d[i] = -d[i]
        dphi0 = _dot(g, d)
        if not dphi0 < 0.0:            # not a descent direction: restart from steepest descent
            count = 0
            for i in range(n):
                d[i] = -g[i] / gnorm
            dphi0 = -gnorm
        a, f_new, k, ok = _line_search(args, y, f, d, dphi0, 1.0, c1, c2,
                                       max_evals_per_search, y_t, g_t, sc)
        nev += k
        if not ok:
            if count > 0:              # drop the curvature memory and retry once
                count = 0
                continue
            status = Status.LINESEARCH_FAILED
            break
        # s = y_t - y, yk = g_t - g, stored in the ring buffer (and M yk = M g_t - M g)
        nxt = (newest + 1) % history
        Sn = S[nxt]
        Yn = Yd[nxt]
        for i in range(n):
            Sn[i] = y_t[i] - y[i]
            Yn[i] = g_t[i] - g[i]
        if npre > 0:
            for i in range(n):
                Mg_t[i] = g_t[i]
            _precondition(Mg_t, pinv)
            MYn = MYd[nxt]
            for i in range(n):
                MYn[i] = Mg_t[i] - Mg[i]
            Mg, Mg_t = Mg_t, Mg
        sy = _dot(Sn, Yn)
        if sy > 1e-16 * _dot(Yn, Yn):    # keep the pair only if it preserves positive definiteness
            rho[nxt] = 1.0 / sy
            newest = nxt
            count = min(count + 1, history)
        elif count == history:
            # the rejected pair was written over the oldest stored one (slot nxt): drop it
            count -= 1
        y, y_t = y_t, y
        g, g_t = g_t, g
        f = f_new
        gnorm = _norm(g)
        it += 1
    if monitor.size > 0:
        _report(monitor, it, gnorm, f, nev, sc)
        monitor[7] = status.value
        monitor[6] = 2.0           # done
    return y, f / sc, gnorm / sc, it, nev, status
