"""Every analytic derivative against central finite differences."""
import numpy as np
import pytest

import structpred as sp

MODELS = [
    ("foe", dict(num_filters=3, filter_size=3, basis="dct")),
    ("foe", dict(num_filters=5, filter_size=5, basis="free")),
    ("foe", dict(num_filters=3, filter_size=7, basis="dct", penalty_scale=1.0)),  # tile + rest
    ("foe", dict(num_filters=10, filter_size=3, basis="dct")),  # K > m*m - 1: random extras
    ("gmrf", dict(num_filters=3, filter_size=3, basis="dct")),
    ("gmrf", dict(num_filters=2, filter_size=5, basis="free")),
]
SHAPES = [(9, 11), (24, 19)]


@pytest.mark.parametrize("name,kwargs", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_model_derivatives(name, kwargs, shape, case, perturb):
    model = sp.make_model(name, **kwargs)
    x, _ = case(shape, seed=1)
    theta = perturb(model, seed=2)
    y = x + 5 * np.random.default_rng(3).normal(size=shape)
    check = sp.check_model_derivatives(model, y, x, theta, eps=1e-5)
    assert set(check.errors) == {"grad_y", "hvp", "mixed/filters", "mixed/log_alpha",
                                 "mixed/log_lambda"}
    assert check.max_error < 1e-6, str(check)


@pytest.mark.parametrize("name,kwargs", [
    ("foe", dict(num_filters=3, filter_size=3)),
    ("foe", dict(num_filters=2, filter_size=5, basis="free")),
    ("gmrf", dict(num_filters=2, filter_size=3)),
])
def test_implicit_gradient_matches_finite_differences(name, kwargs, case, perturb):
    model = sp.make_model(name, **kwargs)
    noisy, clean = case((14, 13), seed=4)
    theta = perturb(model, seed=5, scale=0.2)
    check = sp.check_loss_gradient(model, theta, noisy, clean,
                                   solver=sp.LBFGS(gtol=1e-10),
                                   gradient=sp.ImplicitGradient(rtol=1e-12), eps=1e-4)
    assert set(check.errors) == {"filters", "log_alpha", "log_lambda"}
    assert check.max_error < 1e-4, str(check)


def test_check_grad_detects_a_wrong_gradient():
    f = lambda th: float(np.sum(th ** 3))
    good = sp.check_grad(f, lambda th: 3 * th ** 2, np.array([1.0, -2.0, 0.5]))
    bad = sp.check_grad(f, lambda th: 3.03 * th ** 2, np.array([1.0, -2.0, 0.5]))
    assert good.max_error < 1e-8
    assert bad.max_error > 5e-3


def test_a_one_percent_wrong_mixed_product_is_caught(case, perturb):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    x, _ = case((10, 10))
    theta = perturb(model)
    u = np.random.default_rng(0).normal(size=x.shape)
    wrong = 1.01 * model.mixed(x, x, theta, u)
    check = sp.check_grad(lambda th: float(np.vdot(u, model.grad(x, x, th))), wrong, theta)
    assert check.max_error > 1e-3
