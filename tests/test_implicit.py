"""The adjoint solve: CG, negative-curvature fallback, recorded non-convergence."""
import numpy as np
import pytest

import structpred as sp
from structpred.gradients import conjugate_gradient
from structpred.gradients.check import central_difference


def test_cg_solves_an_spd_system():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(30, 30))
    A = Q @ Q.T + 30 * np.eye(30)
    b = rng.normal(size=30)
    u, info, its, res = conjugate_gradient(lambda v: A @ v, b, rtol=1e-12)
    assert info == 0 and res <= 1e-12
    np.testing.assert_allclose(u, np.linalg.solve(A, b), rtol=1e-9)
    # warm start from the answer: no iteration needed
    _, info2, its2, _ = conjugate_gradient(lambda v: A @ v, b, x0=u, rtol=1e-9)
    assert info2 == 0 and its2 == 0


def test_negative_curvature_falls_back_to_minres_and_is_recorded():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    eig = np.linspace(1.0, 10.0, 40)
    eig[:3] = [-0.5, -1.0, -2.0]                     # symmetric indefinite
    A = (Q * eig) @ Q.T
    b = rng.normal(size=(5, 8))
    info = sp.ImplicitGradient(rtol=1e-10).solve_adjoint(
        lambda v: (A @ v.ravel()).reshape(v.shape), b)
    assert info.negative_curvature and info.method == "cg+minres"
    assert info.converged and info.residual <= 1e-10
    np.testing.assert_allclose(info.u.ravel(), np.linalg.solve(A, b.ravel()), rtol=1e-7)


def test_unconverged_adjoint_warns_and_is_recorded(case):
    model = sp.make_model("foe", num_filters=4, filter_size=3)
    noisy, clean = case((20, 20))
    with pytest.warns(sp.AdjointWarning, match="approximate"):
        pair = sp.loss_and_grad(model, model.init_params(), noisy, clean,
                                gradient=sp.ImplicitGradient(rtol=1e-14, maxiter=2))
    assert not pair.adjoint.converged and pair.adjoint.iterations == 2
    assert pair.adjoint.residual > 1e-14


def test_gradient_is_minus_mixed_product_of_the_adjoint(case):
    """u = E_yy^-1 dl/dy and dL/dw = -E_wy^T u, each against a computation of its own: E_yy
    from central differences of grad_y E (not the Hessian-vector product), and E_wy^T u from
    central differences in theta of <u, grad_y E(y*, theta)> (not the mixed product)."""
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    noisy, clean = case((12, 12))
    theta = model.init_params()
    pair = sp.loss_and_grad(model, theta, noisy, clean,
                            gradient=sp.ImplicitGradient(rtol=1e-12))
    y, n = pair.y, pair.y.size
    H = np.empty((n, n))
    for i in range(n):
        e = np.eye(n)[i].reshape(y.shape)
        H[:, i] = central_difference(lambda s: model.grad(y + s * e, noisy, theta), 1e-4).ravel()
    b = sp.MSELoss().grad(y, clean)
    u = np.linalg.solve(H, b.ravel())
    np.testing.assert_allclose(pair.adjoint.u.ravel(), u, rtol=1e-5,
                               atol=1e-7 * np.abs(u).max())
    check = sp.check_grad(lambda th: -np.vdot(pair.adjoint.u, model.grad(y, noisy, th)),
                          pair.grad, theta, eps=1e-6, groups=model.param_slices())
    assert check.max_error < 1e-6, str(check)
