"""Outer optimisers on a toy objective with the training objective's interface."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from structpred.training.optimizers import Adam, OuterLBFGS

A = np.diag([1.0, 10.0, 100.0])
B = np.array([1.0, -2.0, 3.0])


def fun(theta, indices, warm):
    r = theta - B
    return SimpleNamespace(loss=0.5 * float(r @ A @ r), grad=A @ r, items=[]), warm


def run(opt, theta):
    st = opt.init(fun, theta, 3)
    while opt.terminate(st) is None:
        st = opt.step(fun, st)
    return st


def test_lbfgs_solves_a_quadratic():
    st = run(OuterLBFGS(max_iter=50, gtol=1e-8), np.zeros(3))
    np.testing.assert_allclose(st.theta, B, atol=1e-6)
    assert st.iteration < 20


def test_adam_decreases_and_is_immutable():
    opt = Adam(max_iter=300, lr=0.05, batch_size=2, seed=0)
    st0 = opt.init(fun, np.zeros(3), 3)
    st1 = opt.step(fun, st0)
    assert st0.iteration == 0 and st1.iteration == 1 and st0.theta is not st1.theta
    st = run(opt, np.zeros(3))
    assert fun(st.theta, None, ())[0].loss < 0.01 * fun(np.zeros(3), None, ())[0].loss
