"""The Numba correlation kernels against plain scipy/numpy computations."""
import numpy as np
import pytest
from scipy.signal import convolve2d, correlate2d

from structpred.kernels import correlate_adjoint, correlate_new, filter_gradient


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
