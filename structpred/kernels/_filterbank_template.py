"""Template of the generated filter-bank kernels (one module per filter size m).

Not used as it is: :func:`structpred.kernels.filterbank.kernels_for` renders it through
:func:`structpred.kernels.codegen.render`, which replaces the three placeholder lines (the
filter size ``M`` and the bodies of ``corr_rows`` and ``adj_row``: the m taps unrolled and
register-tiled, written by :mod:`structpred.kernels.filterbank`), and
:func:`structpred.kernels.codegen.load` writes the result to the kernel cache folder, where
Numba caches it. Everything else here is the generated module verbatim. The file is valid
Python (it can be linted and imported: its two stubs raise); the kernels are documented in
:mod:`structpred.kernels.filterbank` and their named arguments in
:mod:`structpred.kernels.kernel_args`.
"""
import numpy as np
from numba import njit, prange

from structpred.kernels.dataterm import data_grad, data_hess
from structpred.kernels.penalties import (
    penalty_curv_row, penalty_grad_row, penalty_shape_terms, penalty_terms,
)

M = 3  # codegen: M
_FM = {"contract", "reassoc", "nsz", "arcp"}
_FMT = {"contract", "nsz", "arcp"}     # no reassoc: keep the balanced sums balanced


@njit(nogil=True, fastmath=_FMT, error_model="numpy", cache=True)
def corr_rows(y, F, i, out, oi, ooff, Wv):
    """out[k, oi, ooff:ooff+Wv] <- (F_k (*) y)[i, :] for every k."""
    raise NotImplementedError("template stub")  # codegen: corr_body


@njit(nogil=True, fastmath=_FMT, error_model="numpy", cache=True)
def adj_row(Rp, Ff, p, dst):
    """dst[q] += sum_k sum_ab Ff[k, a, b] Rp[k, p + a, q + b]."""
    raise NotImplementedError("template stub")  # codegen: adj_body


@njit(nogil=True, fastmath=_FM, error_model="numpy", cache=True)
def _prior_rows(y, F, w, kind, c, Rp, erow, tmp, r0, r1):
    K = F.shape[0]
    Wv = y.shape[1] - M + 1
    for i in range(r0, r1):
        corr_rows(y, F, i, Rp, i + M - 1, M - 1, Wv)
        acc = 0.0
        for k in range(K):
            acc += penalty_grad_row(kind, c, w[k], Rp[k, i + M - 1, M - 1:M - 1 + Wv], tmp)
        erow[i] = acc


@njit(nogil=True, fastmath=_FM, error_model="numpy", cache=True)
def _adjoint_rows(Rp, Ff, y, x, lam, out, drow, r0, r1):
    W = out.shape[1]
    for p in range(r0, r1):
        dst = out[p]
        yp = y[p]
        xp = x[p]
        s = 0.0
        for j in range(W):
            d = yp[j] - xp[j]
            s += d * d
            dst[j] = lam * d
        drow[p] = 0.5 * lam * s
        adj_row(Rp, Ff, p, dst)


@njit(nogil=True, fastmath=_FM, error_model="numpy", cache=True)
def _curv_rows(y, F, w, kind, c, D, r0, r1):
    K = F.shape[0]
    Wv = D.shape[2]
    for i in range(r0, r1):
        corr_rows(y, F, i, D, i, 0, Wv)
        for k in range(K):
            penalty_curv_row(kind, c, w[k], D[k, i])


@njit(nogil=True, fastmath=_FM, error_model="numpy", cache=True)
def _scaled_rows(v, F, D, Sp, r0, r1):
    K = F.shape[0]
    Wv = D.shape[2]
    for i in range(r0, r1):
        corr_rows(v, F, i, Sp, i + M - 1, M - 1, Wv)
        for k in range(K):
            s = Sp[k, i + M - 1, M - 1:M - 1 + Wv]
            d = D[k, i]
            for j in range(Wv):
                s[j] *= d[j]


@njit(nogil=True, fastmath=_FM, error_model="numpy", cache=True)
def _mixed_rows(y, u, F, kind, c, want_scale, Z, S, dF, ga, gs, r0, r1):
    """For response rows r0..r1, with z = F (*) y and s = F (*) u, accumulate
    dF[k, a, b] += sum_ij rho'(z_kij) u[i+a, j+b] + rho''(z_kij) s_kij y[i+a, j+b],
    ga[k] += sum_ij s_kij rho'(z_kij) and (if want_scale) gs[k] += sum_ij s_kij d rho'/dc.
    Z, S: (K, 1, Wv) scratch."""
    K = F.shape[0]
    Wv = Z.shape[2]
    for i in range(r0, r1):
        corr_rows(y, F, i, Z, 0, 0, Wv)
        corr_rows(u, F, i, S, 0, 0, Wv)
        for k in range(K):
            z = Z[k, 0]
            s = S[k, 0]
            acc_a = 0.0
            acc_s = 0.0
            for j in range(Wv):
                _, d1, d2 = penalty_terms(kind, z[j], c)
                if want_scale:
                    acc_s += s[j] * penalty_shape_terms(kind, z[j], c)[1]
                acc_a += s[j] * d1
                z[j] = d1
                s[j] = d2 * s[j]
            ga[k] += acc_a
            gs[k] += acc_s
            for a in range(M):
                ua = u[i + a]
                ya = y[i + a]
                for b in range(M):
                    acc = 0.0
                    for j in range(Wv):
                        acc += z[j] * ua[j + b] + s[j] * ya[j + b]
                    dF[k, a, b] += acc


@njit(nogil=True, cache=True)
def _nchunks(n):
    return max(1, min(n, 64))


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def prior_pass(y, F, w, kind, c, Rp, erow):
    Hv = y.shape[0] - M + 1
    Wv = y.shape[1] - M + 1
    T = _nchunks(Hv)
    for t in prange(T):
        tmp = np.empty(2 * Wv)
        _prior_rows(y, F, w, kind, c, Rp, erow, tmp, t * Hv // T, (t + 1) * Hv // T)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def adjoint_pass(Rp, Ff, y, x, lam, out, drow):
    H = out.shape[0]
    T = _nchunks(H)
    for t in prange(T):
        _adjoint_rows(Rp, Ff, y, x, lam, out, drow, t * H // T, (t + 1) * H // T)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def curvature_pass(y, F, w, kind, c, D):
    Hv = D.shape[1]
    T = _nchunks(Hv)
    for t in prange(T):
        _curv_rows(y, F, w, kind, c, D, t * Hv // T, (t + 1) * Hv // T)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def scaled_pass(v, F, D, Sp):
    Hv = D.shape[1]
    T = _nchunks(Hv)
    for t in prange(T):
        _scaled_rows(v, F, D, Sp, t * Hv // T, (t + 1) * Hv // T)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _mixed_blocks(y, u, F, kind, c, want_scale, dFt, gat, gst):
    K = F.shape[0]
    Hv = y.shape[0] - M + 1
    Wv = y.shape[1] - M + 1
    T = dFt.shape[0]
    for t in prange(T):
        _mixed_rows(y, u, F, kind, c, want_scale, np.empty((K, 1, Wv)), np.empty((K, 1, Wv)),
                    dFt[t], gat[t], gst[t], t * Hv // T, (t + 1) * Hv // T)


@njit(nogil=True, cache=True)
def mixed_pass(y, u, F, kind, c, want_scale, dF, ga, gs):
    """The sums of ``_mixed_rows`` over the whole image (all threads), added to dF, ga, gs.
    Each row block has its own accumulators, added in block order (deterministic). The
    accumulators are allocated here, outside the parallel function: there Numba fuses their
    zero-fill with the block loop (measured 3x slower)."""
    K = F.shape[0]
    T = _nchunks(y.shape[0] - M + 1)
    dFt = np.zeros((T, K, M, M))
    gat = np.zeros((T, K))
    gst = np.zeros((T, K))
    _mixed_blocks(y, u, F, kind, c, want_scale, dFt, gat, gst)
    _add_blocks(dFt.reshape((T, -1)), dF.reshape(-1))
    _add_blocks(gat, ga)
    _add_blocks(gst, gs)


@njit(nogil=True, cache=True)
def _add_blocks(parts, out):
    """out += sum_t parts[t], in order."""
    for t in range(parts.shape[0]):
        for i in range(out.size):
            out[i] += parts[t, i]


@njit(nogil=True, cache=True)
def mixed_serial(y, u, F, kind, c, want_scale, dF, ga, gs):
    """``mixed_pass`` on the calling thread only."""
    K = F.shape[0]
    Wv = y.shape[1] - M + 1
    _mixed_rows(y, u, F, kind, c, want_scale, np.empty((K, 1, Wv)), np.empty((K, 1, Wv)),
                dF, ga, gs, 0, y.shape[0] - M + 1)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def correlate_pass(y, F, Z):
    """Z[k] <- F_k (*) y (valid), all threads."""
    Hv = Z.shape[1]
    T = _nchunks(Hv)
    for t in prange(T):
        for i in range(t * Hv // T, (t + 1) * Hv // T):
            corr_rows(y, F, i, Z, i, 0, Z.shape[2])


# The energy-gradient kernels: fg(y_flat, g_flat, args) -> E, the solvers' interface;
# ``args`` is an EnergyArgs (denoising) or a TaskEnergyArgs (structpred.kernels.kernel_args).
@njit(nogil=True, cache=True)
def energy_grad(y_flat, g_flat, args):
    """Energy-gradient kernel on flat views (all threads)."""
    H, W = args.x.shape
    y = y_flat.reshape((H, W))
    g = g_flat.reshape((H, W))
    prior_pass(y, args.F, args.alpha, args.penalty, args.scale, args.Rp, args.erow)
    adjoint_pass(args.Rp, args.Ff, y, args.x, args.lam, g, args.drow)
    return np.sum(args.drow) + np.sum(args.erow)


@njit(nogil=True, cache=True)
def energy_grad_serial(y_flat, g_flat, args):
    """Energy-gradient kernel on flat views (the calling thread only)."""
    H, W = args.x.shape
    y = y_flat.reshape((H, W))
    g = g_flat.reshape((H, W))
    tmp = np.empty(2 * W)
    _prior_rows(y, args.F, args.alpha, args.penalty, args.scale, args.Rp, args.erow, tmp,
                0, H - M + 1)
    _adjoint_rows(args.Rp, args.Ff, y, args.x, args.lam, g, args.drow, 0, H)
    return np.sum(args.drow) + np.sum(args.erow)


# A data term lam/2 ||A y - x||^2 with A not the identity (inpainting, deblurring): its
# gradient G = lam A^T (A y - x) goes into the adjoint pass as its "y", with x = 0, lam = 1.
@njit(nogil=True, cache=True)
def energy_grad_task(y_flat, g_flat, args):
    """Energy-gradient kernel with a task data term (all threads)."""
    H, W = args.x.shape
    y = y_flat.reshape((H, W))
    g = g_flat.reshape((H, W))
    prior_pass(y, args.F, args.alpha, args.penalty, args.scale, args.Rp, args.erow)
    ed = data_grad(args.op, y, args.x, args.lam, args.mask, args.blur, args.blur_flipped,
                   args.T, args.G)
    adjoint_pass(args.Rp, args.Ff, args.G, args.zeros, 1.0, g, args.drow)
    return ed + np.sum(args.erow)


@njit(nogil=True, cache=True)
def energy_grad_task_serial(y_flat, g_flat, args):
    """Energy-gradient kernel with a task data term (the calling thread only)."""
    H, W = args.x.shape
    y = y_flat.reshape((H, W))
    g = g_flat.reshape((H, W))
    tmp = np.empty(2 * W)
    _prior_rows(y, args.F, args.alpha, args.penalty, args.scale, args.Rp, args.erow, tmp,
                0, H - M + 1)
    ed = data_grad(args.op, y, args.x, args.lam, args.mask, args.blur, args.blur_flipped,
                   args.T, args.G)
    _adjoint_rows(args.Rp, args.Ff, args.G, args.zeros, 1.0, g, args.drow, 0, H)
    return ed + np.sum(args.erow)


# Hessian-vector products at a linearisation point whose curvature D = alpha_k rho''(z_k) is
# precomputed (curvature_pass); ``args`` is an HvpArgs or a TaskHvpArgs.
@njit(nogil=True, cache=True)
def hvp(v, out, args):
    """out <- lam v + C^T (D * (C v)) (all threads)."""
    scaled_pass(v, args.F, args.D, args.Sp)
    adjoint_pass(args.Sp, args.Ff, v, args.zeros, args.lam, out, args.drow)


@njit(nogil=True, cache=True)
def hvp_serial(v, out, args):
    """out <- lam v + C^T (D * (C v)) (the calling thread only)."""
    _scaled_rows(v, args.F, args.D, args.Sp, 0, args.D.shape[1])
    _adjoint_rows(args.Sp, args.Ff, v, args.zeros, args.lam, out, args.drow, 0, out.shape[0])


@njit(nogil=True, cache=True)
def hvp_task(v, out, args):
    """out <- lam A^T A v + C^T (D * (C v)) (all threads)."""
    data_hess(args.op, v, args.lam, args.mask, args.blur, args.blur_flipped, args.T, args.Hd)
    scaled_pass(v, args.F, args.D, args.Sp)
    adjoint_pass(args.Sp, args.Ff, args.Hd, args.zeros, 1.0, out, args.drow)


@njit(nogil=True, cache=True)
def hvp_task_serial(v, out, args):
    """out <- lam A^T A v + C^T (D * (C v)) (the calling thread only)."""
    data_hess(args.op, v, args.lam, args.mask, args.blur, args.blur_flipped, args.T, args.Hd)
    _scaled_rows(v, args.F, args.D, args.Sp, 0, args.D.shape[1])
    _adjoint_rows(args.Sp, args.Ff, args.Hd, args.zeros, 1.0, out, args.drow, 0, out.shape[0])


@njit(nogil=True, cache=True)
def curvature_serial(y, F, w, kind, c, D):
    _curv_rows(y, F, w, kind, c, D, 0, D.shape[1])
