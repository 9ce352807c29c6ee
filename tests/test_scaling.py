"""Scale safety: the adjoint solve, the implicit gradient and the inner solver's norm tests
must not underflow or overflow for extreme (but representable) right-hand sides or energies.

The implicit gradient is linear in dl/dy, so g(s b) = s g(b) must hold, with the same
iteration count, for every s that does not overflow the result.
"""
import numpy as np
import pytest

import structpred as sp
from structpred.gradients import conjugate_gradient
from structpred.solvers import estimate_lipschitz
from structpred.numerics import safe_norm

SCALES = [1e-300, 1e-250, 1e-200, 1e-155, 1e-100, 1e-50, 1e-10, 1.0, 1e10, 1e50, 1e100,
          1e150]


def close_scaled(a, b, s, rtol=1e-10):
    """a == s b up to rtol of the largest entry (a may hold a few subnormal entries)."""
    a, b = np.asarray(a) / s, np.asarray(b)
    assert np.all(np.isfinite(a))
    return float(np.abs(a - b).max()) <= rtol * float(np.abs(b).max())


@pytest.mark.parametrize("s", [1e-320, 1e-300, 1e-160, 1.0, 1e160, 1e300])
def test_safe_norm(s):
    v = np.array([3.0, 4.0, 0.0, -12.0])
    if s < 1e-310:                                 # subnormal entries: few significant bits
        assert safe_norm(s * v) == pytest.approx(13.0 * s, rel=1e-2, abs=0)
    else:
        assert safe_norm(s * v) == pytest.approx(13.0 * s, rel=1e-15, abs=0)
    assert safe_norm(np.zeros(3)) == 0.0
    assert np.isnan(safe_norm(np.array([1.0, np.nan])))
    assert safe_norm(np.array([1.0, np.inf])) == np.inf


def test_cg_scaling_law():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(30, 30))
    A = Q @ Q.T + 30 * np.eye(30)
    b = rng.normal(size=30)
    u1, info1, its1, res1 = conjugate_gradient(lambda v: A @ v, b, rtol=1e-10)
    assert info1 == 0
    for s in SCALES:
        u, info, its, res = conjugate_gradient(lambda v: A @ v, s * b, rtol=1e-10)
        assert info == 0 and its == its1 and res <= 1e-10, s
        assert close_scaled(u, u1, s), s


def test_minres_fallback_scaling_law():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    eig = np.linspace(1.0, 10.0, 40)
    eig[:3] = [-0.5, -1.0, -2.0]                     # symmetric indefinite: CG -> MINRES
    A = (Q * eig) @ Q.T
    b = rng.normal(size=(5, 8))
    hvp = lambda v: (A @ v.ravel()).reshape(v.shape)  # noqa: E731
    ref = sp.ImplicitGradient(rtol=1e-10).solve_adjoint(hvp, b)
    for s in SCALES + [2.0 ** -990, 2.0 ** 490]:
        info = sp.ImplicitGradient(rtol=1e-10).solve_adjoint(hvp, s * b)
        assert info.method == "cg+minres" and info.converged, s
        if np.frexp(s)[0] == 0.5:        # a power of two: the very same solve, bit for bit
            assert info.iterations == ref.iterations, s
            np.testing.assert_array_equal(info.u / s, ref.u)
        else:
            # b's rounding (s b is not exact) moves MINRES's warm re-run, a fresh Krylov space
            # on a residual just above rtol: 3 iterations at s = 1 and 5 at s = 1e-155 on an
            # Intel Xeon host (session 17; the first run takes 29 at every s). The fault this
            # guards against (squared norms underflowing) ran all 2000 iterations.
            assert abs(info.iterations - ref.iterations) <= 3, s
        assert close_scaled(info.u, ref.u, s, rtol=1e-8), s


@pytest.mark.parametrize("name,kw", [("foe", dict(num_filters=4, filter_size=3)),
                                     ("gmrf", dict(num_filters=3, filter_size=3))])
def test_implicit_gradient_scaling_law(case, name, kw):
    model = sp.make_model(name, **kw)
    noisy, clean = case((16, 16))
    theta = model.init_params()
    energy = model.bind(noisy, theta)
    res = sp.LBFGS(gtol=1e-10).minimize(energy)
    b = sp.MSELoss().grad(res.y, clean)
    method = sp.ImplicitGradient(rtol=1e-8)
    g1, info1 = method.grad(energy, res, b)
    assert info1.converged
    for s in SCALES:
        g, info = method.grad(energy, res, s * b)
        assert info.converged and info.iterations == info1.iterations, s
        assert info.residual <= 1e-8, s
        assert close_scaled(g, g1, s), s
        # warm start from the previous adjoint at another scale: still the same answer
        g2, info2 = method.grad(energy, res, s * b, u0=info1.u)
        assert info2.converged and close_scaled(g2, g1, s, rtol=1e-6), s


def energy_times(model, theta, s):
    """Parameters whose energy is s times that of ``theta`` (lam and every alpha times s)."""
    p = model.unpack(theta.copy())
    p["log_alpha"] = p["log_alpha"] + np.log(s)
    p["log_lambda"] = p["log_lambda"] + np.log(s)
    return model.pack(p)


@pytest.mark.parametrize("s", [1e-200, 1e-100, 1.0, 1e100, 1e150])
def test_lbfgs_relative_test_is_scale_free(case, s):
    """E -> s E (lam and alpha times s): the same iterates and iteration count with a purely
    relative stopping rule; the reported energy and gradient norm scale with s."""
    model = sp.make_model("foe", num_filters=4, filter_size=3)
    noisy, _ = case((16, 16))
    theta = model.init_params()
    theta_s = energy_times(model, theta, s)
    solver = sp.LBFGS(gtol=0.0, rtol=1e-8)
    r1 = solver.minimize(model, noisy, theta)
    rs = solver.minimize(model, noisy, theta_s)
    assert r1.converged and rs.converged
    assert abs(rs.iterations - r1.iterations) <= 1
    np.testing.assert_allclose(rs.y, r1.y, rtol=0, atol=1e-6)
    assert rs.energy / s == pytest.approx(r1.energy, rel=1e-9)
    assert rs.grad_norm <= 1e-8 * safe_norm(model.grad(noisy, noisy, theta_s))


@pytest.mark.parametrize("s", [1e-200, 1.0, 1e200])
def test_lipschitz_estimate_is_scale_free(case, s):
    model = sp.make_model("gmrf", num_filters=3, filter_size=3)
    noisy, _ = case((16, 16))
    theta = model.init_params()
    lip1 = estimate_lipschitz(model.bind(noisy, theta), noisy)
    lips = estimate_lipschitz(model.bind(noisy, energy_times(model, theta, s)), noisy)
    assert lips / s == pytest.approx(lip1, rel=1e-9)
