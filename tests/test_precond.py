"""Fourier preconditioning of the adjoint CG and of the inner L-BFGS (issue 17b): the symbol,
the same answers as without it, and the "auto" rule."""
import numpy as np
import pytest
import scipy.fft as sfft

import structpred as sp
from structpred.gradients import conjugate_gradient
from structpred.solvers.precond import fourier_preconditioner, symbol_condition


def hard_params(model, filter_scale=1.0, lam_scale=25.0):
    return model.init_params(sigma=25.0, filter_scale=filter_scale, lam_scale=lam_scale)


@pytest.mark.parametrize("name,kw", [("gmrf", dict(num_filters=3, filter_size=3)),
                                     ("gmrf", dict(num_filters=5, filter_size=5, basis="free"))])
def test_symbol_is_the_quadratic_hessian_away_from_the_boundary(case, name, kw, perturb):
    """Quadratic penalty: E_yy = lam I + sum_k alpha_k c C_k^T C_k exactly; on a v supported
    2m pixels inside the image, valid and periodic correlations agree everywhere."""
    model = sp.make_model(name, **kw)
    x, _ = case((24, 26))
    theta = perturb(model)
    m = model.filter_size
    v = np.zeros(x.shape)
    v[2 * m:-2 * m, 2 * m:-2 * m] = np.random.default_rng(3).normal(
        size=(x.shape[0] - 4 * m, x.shape[1] - 4 * m))
    S = model.hessian_symbol(x, theta)
    assert S.shape == (24, 14) and np.all(S > 0)
    Av = sfft.irfft2(S * sfft.rfft2(v), s=x.shape)
    np.testing.assert_allclose(Av, model.hvp(x, x, theta, v), atol=1e-12 * np.abs(Av).max())
    # the preconditioner is its inverse
    M = fourier_preconditioner(S, x.shape)
    np.testing.assert_allclose(M(Av), v, atol=1e-10 * np.abs(v).max())


def test_pcg_solves_an_spd_system_in_fewer_iterations():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    A = (Q * np.logspace(0, 4, 60)) @ Q.T
    d = np.diag(A)
    b = rng.normal(size=60)
    u0, info0, its0, _ = conjugate_gradient(lambda v: A @ v, b, rtol=1e-10, maxiter=500)
    P = np.linalg.inv(A + np.diag(d))            # an SPD approximate inverse (2A)^-1 ... (A+D)^-1
    u1, info1, its1, res1 = conjugate_gradient(lambda v: A @ v, b, rtol=1e-10, maxiter=500,
                                               precond=lambda r: P @ r)
    assert info0 == info1 == 0 and res1 <= 1e-10 and its1 < its0
    np.testing.assert_allclose(u1, np.linalg.solve(A, b), rtol=1e-7)
    u2, info2, its2, _ = conjugate_gradient(lambda v: A @ v, b, rtol=1e-10, maxiter=500,
                                            precond=lambda r: r / d)
    assert info2 == 0
    np.testing.assert_allclose(u2, np.linalg.solve(A, b), rtol=1e-7)


@pytest.mark.parametrize("task", [None, "deblur", "inpaint"])
def test_preconditioned_adjoint_gives_the_same_gradient(case, task):
    model = sp.make_model("foe", num_filters=6, filter_size=5, task=task)
    noisy, clean = case((30, 28))
    theta = hard_params(model)
    energy = model.bind(noisy, theta)
    res = sp.LBFGS(gtol=1e-9).minimize(energy)
    b = sp.MSELoss().grad(res.y, clean)
    g0, i0 = sp.ImplicitGradient(rtol=1e-10, preconditioner=None).grad(energy, res, b)
    g1, i1 = sp.ImplicitGradient(rtol=1e-10, preconditioner="fft").grad(energy, res, b)
    assert i0.converged and i1.converged and i1.residual <= 1e-10
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-7 * np.abs(g0).max())
    if task is None:
        assert i1.iterations < i0.iterations
    # warm start from the answer: nothing left to do
    _, i2 = sp.ImplicitGradient(rtol=1e-8, preconditioner="fft").grad(energy, res, b, u0=i1.u)
    assert i2.iterations == 0


def test_auto_rule_follows_the_symbols_condition_number(case):
    model = sp.make_model("foe", num_filters=6, filter_size=5)
    noisy, _ = case((30, 28))
    default, hard = model.init_params(), hard_params(model)
    assert symbol_condition(model.hessian_symbol(noisy, default)) < 100
    assert symbol_condition(model.hessian_symbol(noisy, hard)) > 100
    auto = sp.ImplicitGradient()
    assert auto.preconditioner == "auto"
    assert auto.precond_for(model.bind(noisy, default)) is None
    assert auto.precond_for(model.bind(noisy, hard)) is not None
    assert sp.ImplicitGradient(preconditioner=None).precond_for(model.bind(noisy, hard)) is None
    with pytest.raises(ValueError, match="preconditioner"):
        sp.ImplicitGradient(preconditioner="jacobi")


def test_preconditioned_scaling_law(case):
    model = sp.make_model("foe", num_filters=6, filter_size=5)
    noisy, clean = case((30, 28))
    theta = hard_params(model)
    energy = model.bind(noisy, theta)
    res = sp.LBFGS(gtol=1e-9).minimize(energy)
    b = sp.MSELoss().grad(res.y, clean)
    method = sp.ImplicitGradient(rtol=1e-8, preconditioner="fft")
    g1, i1 = method.grad(energy, res, b)
    for s in [2.0 ** -996, 2.0 ** -515, 2.0 ** 498]:     # powers of two: the same solve
        g, i = method.grad(energy, res, s * b)
        assert i.converged and i.iterations == i1.iterations
        np.testing.assert_array_equal(g / s, g1)
    for s in [1e-300, 1e-155, 1e150]:
        g, i = method.grad(energy, res, s * b)
        # s b / s differs from b by rounding, which can move a stop by one iteration here
        # (residual 9.46e-9 vs 9.49e-9 against 1e-8); the answers agree to within rtol
        assert i.converged and abs(i.iterations - i1.iterations) <= 1
        assert np.abs(g / s - g1).max() <= 1e-8 * np.abs(g1).max()


def test_preconditioned_lbfgs_same_minimum_well_conditioned(case):
    """Forced on a well-conditioned FoE: the same minimiser (loss to 1e-6 relative)."""
    model = sp.make_model("foe", num_filters=6, filter_size=5)
    noisy, clean = case((40, 36))
    theta = model.init_params()
    r0 = sp.LBFGS(gtol=1e-7, preconditioner=None).minimize(model, noisy, theta)
    r1 = sp.LBFGS(gtol=1e-7, preconditioner="fft").minimize(model, noisy, theta)
    assert r0.converged and r1.converged
    loss = sp.MSELoss()
    assert loss.value(r1.y, clean) == pytest.approx(loss.value(r0.y, clean), rel=1e-6)
    assert r1.energy == pytest.approx(r0.energy, rel=1e-12)


def test_preconditioned_lbfgs_hard_case_fewer_evaluations(case):
    model = sp.make_model("foe", num_filters=6, filter_size=5)
    noisy, _ = case((48, 48))
    theta = hard_params(model)
    r0 = sp.LBFGS(gtol=1e-6, preconditioner=None).minimize(model, noisy, theta)
    r1 = sp.LBFGS(gtol=1e-6).minimize(model, noisy, theta)         # "auto": preconditioned
    assert r0.converged and r1.converged
    assert r1.n_evals < r0.n_evals
    with pytest.raises(ValueError, match="preconditioner"):
        sp.LBFGS(preconditioner="jacobi")
