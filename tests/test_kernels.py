"""The Numba correlation kernels against plain scipy/numpy computations: the generic ones
(structpred/kernels/correlation.py) and the generated, register-tiled filter-bank kernels
(structpred/kernels/filterbank.py), the latter also against the former."""
import numpy as np
import pytest
from scipy.signal import convolve2d, correlate2d

from structpred.kernels import correlate_adjoint, correlate_new, filter_gradient, penalties
from structpred.kernels.dataterm import OP_BLUR, OP_MASK
from structpred.kernels.filterbank import kernels_for
from structpred.kernels.kernel_args import EnergyArgs, HvpArgs, TaskEnergyArgs, TaskHvpArgs


@pytest.mark.parametrize("shape,K,m", [((12, 15), 3, 3), ((20, 17), 2, 5), ((9, 9), 4, 7)])
def test_correlate_matches_scipy(shape, K, m):
    rng = np.random.default_rng(1)
    y, F = rng.normal(size=shape), rng.normal(size=(K, m, m))
    Z = correlate_new(y, F)
    ref = np.stack([correlate2d(y, f, mode="valid") for f in F])
    np.testing.assert_allclose(Z, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,K,m", [((12, 15), 3, 3), ((20, 17), 2, 5)])
def test_adjoint_matches_scipy_and_is_the_adjoint(shape, K, m):
    rng = np.random.default_rng(2)
    y, F = rng.normal(size=shape), rng.normal(size=(K, m, m))
    R = rng.normal(size=correlate_new(y, F).shape)
    out = np.empty(shape)
    correlate_adjoint(R, F, out)
    # adjoint of 'valid' correlation = 'full' convolution
    ref = sum(convolve2d(R[k], F[k], mode="full") for k in range(K))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert np.vdot(correlate_new(y, F), R) == pytest.approx(np.vdot(y, out), rel=1e-12)


def test_filter_gradient_matches_numpy():
    rng = np.random.default_rng(3)
    y, F = rng.normal(size=(14, 11)), rng.normal(size=(3, 5, 5))
    R = rng.normal(size=correlate_new(y, F).shape)
    out = np.empty_like(F)
    filter_gradient(y, R, out)
    Hv, Wv = R.shape[1:]
    ref = np.array([[[np.sum(y[a:a + Hv, b:b + Wv] * R[k]) for b in range(5)] for a in range(5)]
                    for k in range(3)])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------- the generated (register-tiled) kernels
# Every m of the default models and K not a multiple of either tile (KB = 4 filters for the
# forward correlation; 4, 3, 2 for the adjoint at m = 3, 5, 7): the tail loops run too.
GENERATED = [(m, K) for m in (3, 5, 7) for K in (5, 7)]
PENALTY_REFS = {
    # code: (rho, rho', rho'', d rho'/dc) in numpy
    penalties.STUDENT_T: (lambda z, c: np.log1p(c * z * z),
                          lambda z, c: 2 * c * z / (1 + c * z * z),
                          lambda z, c: 2 * c * (1 - c * z * z) / (1 + c * z * z) ** 2,
                          lambda z, c: 2 * z / (1 + c * z * z) ** 2),
    penalties.QUADRATIC: (lambda z, c: 0.5 * c * z * z, lambda z, c: c * z,
                          lambda z, c: c + 0 * z, lambda z, c: z),
}


def _rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def _generated_case(m, K, seed=0):
    rng = np.random.default_rng(seed)
    H, W = 14 + m, 20 + m             # W - m + 1 = 21: odd, a vector remainder at any width
    y, x, v, u = rng.normal(size=(4, H, W))
    F = rng.normal(size=(K, m, m)) / m
    alpha = rng.uniform(0.5, 2.0, size=K)
    return y, x, v, u, F, alpha


def _ref_correlations(y, F):
    return np.stack([correlate2d(y, f, mode="valid") for f in F])


def _ref_adjoint(R, F):
    return sum(convolve2d(R[k], F[k], mode="full") for k in range(len(F)))


@pytest.mark.parametrize("m,K", GENERATED)
def test_generated_correlation_and_adjoint_equal_scipy(m, K):
    mod = kernels_for(m)
    y, x, _, _, F, _ = _generated_case(m, K)
    H, W = y.shape
    Hv, Wv = H - m + 1, W - m + 1
    Z = np.empty((K, Hv, Wv))
    mod.correlate_pass(y, F, Z)
    assert _rel(Z, _ref_correlations(y, F)) < 1e-12
    R = np.random.default_rng(1).normal(size=(K, Hv, Wv))
    Rp = np.zeros((K, H + m - 1, W + m - 1))       # zero-padded: the adjoint is 'valid'
    Rp[:, m - 1:m - 1 + Hv, m - 1:m - 1 + Wv] = R
    lam = 0.7
    out, drow = np.empty((H, W)), np.empty(H)
    mod.adjoint_pass(Rp, np.ascontiguousarray(F[:, ::-1, ::-1]), y, x, lam, out, drow)
    assert _rel(out, lam * (y - x) + _ref_adjoint(R, F)) < 1e-12
    assert drow.sum() == pytest.approx(0.5 * lam * np.sum((y - x) ** 2), rel=1e-12)


@pytest.mark.parametrize("m,K", GENERATED)
@pytest.mark.parametrize("kind", sorted(PENALTY_REFS))
def test_generated_energy_hvp_mixed_equal_the_generic_path(m, K, kind):
    """energy_grad (and _serial) against the generic correlations of
    structpred/kernels/correlation.py with the penalty in numpy; E_yy v (hvp, hvp_serial)
    and the mixed product's sums (mixed_pass, mixed_serial) against the same."""
    mod = kernels_for(m)
    rho, d1, d2, d1c = PENALTY_REFS[kind]
    y, x, v, u, F, alpha = _generated_case(m, K, seed=2)
    H, W = y.shape
    Hv, Wv = H - m + 1, W - m + 1
    lam, c = 0.7, 0.5
    Ff = np.ascontiguousarray(F[:, ::-1, ::-1])
    # reference: generic correlation kernels, numpy penalty
    z = correlate_new(y, F)
    a = alpha[:, None, None]
    E_ref = 0.5 * lam * np.sum((y - x) ** 2) + np.sum(a * rho(z, c))
    g_ref = np.empty((H, W))
    correlate_adjoint(a * d1(z, c), F, g_ref)
    g_ref += lam * (y - x)
    for kernel in (mod.energy_grad, mod.energy_grad_serial):
        args = EnergyArgs(x=x, F=F, Ff=Ff, alpha=alpha, lam=lam, penalty=kind, scale=c,
                          Rp=np.zeros((K, H + m - 1, W + m - 1)), erow=np.empty(Hv),
                          drow=np.empty(H))
        g = np.empty(H * W)
        E = kernel(y.ravel(), g, args)
        assert E == pytest.approx(E_ref, rel=1e-12)
        assert _rel(g, g_ref) < 1e-12
    # E_yy v = lam v + C^T (alpha rho''(z) * C v)
    D_ref = a * d2(z, c)
    hv_ref = np.empty((H, W))
    correlate_adjoint(D_ref * correlate_new(v, F), F, hv_ref)
    hv_ref += lam * v
    for curvature, kernel in ((mod.curvature_pass, mod.hvp),
                              (mod.curvature_serial, mod.hvp_serial)):
        D = np.empty((K, Hv, Wv))
        curvature(y, F, alpha, kind, c, D)
        assert _rel(D, D_ref) < 1e-12
        out = np.empty((H, W))
        kernel(v, out, HvpArgs(F=F, Ff=Ff, D=D, lam=lam, Sp=np.zeros((K, H + m - 1, W + m - 1)),
                               zeros=np.zeros((H, W)), drow=np.empty(H)))
        assert _rel(out, hv_ref) < 1e-12
    # mixed product sums: dF = sum rho'(z) u[shifted] + rho''(z) (F (*) u) y[shifted],
    # ga = sum (F (*) u) rho'(z), gs = sum (F (*) u) d rho'/dc
    s = correlate_new(u, F)
    dF_ref, tmp = np.empty_like(F), np.empty_like(F)
    filter_gradient(u, d1(z, c), dF_ref)
    filter_gradient(y, d2(z, c) * s, tmp)
    dF_ref += tmp
    ga_ref = np.sum(s * d1(z, c), axis=(1, 2))
    gs_ref = np.sum(s * d1c(z, c), axis=(1, 2))
    for kernel in (mod.mixed_pass, mod.mixed_serial):
        dF, ga, gs = np.zeros_like(F), np.zeros(K), np.zeros(K)
        kernel(y, u, F, kind, c, True, dF, ga, gs)
        assert _rel(dF, dF_ref) < 1e-12
        assert _rel(ga, ga_ref) < 1e-12 and _rel(gs, gs_ref) < 1e-12


def _ref_data_term(op, y, x, lam, mask, k):
    """(lam/2 ||A y - x||^2, lam A^T (A y - x), v -> lam A^T A v) in numpy/scipy."""
    if op == OP_MASK:
        A = AT = (lambda w: mask * w)
    else:                              # zero-padded 'same' correlation and its adjoint
        A = (lambda w: correlate2d(w, k, mode="same"))
        AT = (lambda w: convolve2d(w, k, mode="same"))
    r = A(y) - x
    return 0.5 * lam * np.sum(r ** 2), lam * AT(r), (lambda w: lam * AT(A(w)))


@pytest.mark.parametrize("m,K", [(3, 5), (5, 7), (7, 5)])
@pytest.mark.parametrize("op", [OP_MASK, OP_BLUR])
def test_generated_task_kernels_equal_the_reference(m, K, op):
    """energy_grad_task and hvp_task (with their serial twins): the data term lam/2
    ||A y - x||^2 of a mask or a blur, in scipy, plus the filter prior as above."""
    mod = kernels_for(m)
    y, x, v, _, F, alpha = _generated_case(m, K, seed=3)
    H, W = y.shape
    Hv, Wv = H - m + 1, W - m + 1
    lam, c, kind = 0.7, 0.5, penalties.STUDENT_T
    rho, d1, d2, _ = PENALTY_REFS[kind]
    rng = np.random.default_rng(4)
    mask = (rng.uniform(size=(H, W)) < 0.6).astype(float)
    k = rng.uniform(size=(5, 5))
    k /= k.sum()
    kf = np.ascontiguousarray(k[::-1, ::-1])
    if op == OP_MASK:
        x = mask * x                   # an observation has nothing where the mask is 0
    Ff = np.ascontiguousarray(F[:, ::-1, ::-1])
    ed_ref, gd_ref, hd_ref = _ref_data_term(op, y, x, lam, mask, k)
    z = correlate_new(y, F)
    a = alpha[:, None, None]
    g_ref = np.empty((H, W))
    correlate_adjoint(a * d1(z, c), F, g_ref)
    g_ref += gd_ref
    D_ref = a * d2(z, c)
    hv_ref = np.empty((H, W))
    correlate_adjoint(D_ref * correlate_new(v, F), F, hv_ref)
    hv_ref += hd_ref(v)
    data = dict(op=op, mask=mask, blur=k, blur_flipped=kf, T=np.empty((H, W)))
    for kernel in (mod.energy_grad_task, mod.energy_grad_task_serial):
        args = TaskEnergyArgs(x=x, F=F, Ff=Ff, alpha=alpha, lam=lam, penalty=kind, scale=c,
                              Rp=np.zeros((K, H + m - 1, W + m - 1)), erow=np.empty(Hv),
                              drow=np.empty(H), G=np.empty((H, W)), zeros=np.zeros((H, W)),
                              **data)
        g = np.empty(H * W)
        E = kernel(y.ravel(), g, args)
        assert E == pytest.approx(ed_ref + np.sum(a * rho(z, c)), rel=1e-12)
        assert _rel(g, g_ref) < 1e-12
    D = np.empty((K, Hv, Wv))
    mod.curvature_pass(y, F, alpha, kind, c, D)
    for kernel in (mod.hvp_task, mod.hvp_task_serial):
        out = np.empty((H, W))
        kernel(v, out, TaskHvpArgs(F=F, Ff=Ff, D=D, lam=lam,
                                   Sp=np.zeros((K, H + m - 1, W + m - 1)),
                                   zeros=np.zeros((H, W)), drow=np.empty(H),
                                   Hd=np.empty((H, W)), **data))
        assert _rel(out, hv_ref) < 1e-12
