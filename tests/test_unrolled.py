"""Unrolled and truncated gradients: exact for their unrolled loss, bounded memory, and
approaching the implicit gradient as the number of steps grows."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import structpred as sp

LOSS = sp.MSELoss()
CONFIGS = Path(__file__).resolve().parents[1] / "structpred" / "configs" / "gradient"


def resolve(strategy, model, x, theta, y0=None):
    """The strategy with its automatic step size fixed at (x, theta): the unrolled map is
    then a fixed function of theta, which is what finite differences must perturb."""
    return replace(strategy, step_size=strategy.solver.resolved(model.bind(x, theta),
                                                                y0).step_size)


def unroll(strategy, model, x, theta, y0=None, y_prev=None):
    """The strategy's T-th iterate from (y0, y_prev) (default: x, no velocity), cropped."""
    energy = model.bind(x, theta)
    y = energy.start(y0)
    return energy.crop(strategy.solver.iterate(energy, y, None if y_prev is None
                                               else energy.start(y_prev)))


def unrolled_loss(strategy, model, x, t, y0=None, y_prev=None):
    """theta -> loss of the strategy's last iterate (its step size already fixed)."""
    return lambda th: LOSS.value(unroll(strategy, model, x, th, y0=y0, y_prev=y_prev), t)


def foe_case(case, perturb, shape=(12, 12), seed=0):
    model = sp.make_model("foe", num_filters=4, filter_size=3)
    x, t = case(shape, seed=seed)
    return model, perturb(model, seed=seed), x, t


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_unrolled_gradient_matches_finite_differences(case, perturb, momentum):
    model, theta, x, t = foe_case(case, perturb)
    strategy = resolve(sp.UnrolledGradient(steps=15, momentum=momentum), model, x, theta)
    pair = sp.loss_and_grad(model, theta, x, t, gradient=strategy)
    check = sp.check_grad(unrolled_loss(strategy, model, x, t), pair.grad, theta, eps=1e-4,
                          groups=model.param_slices())
    assert check.max_error < 1e-6, str(check)
    np.testing.assert_allclose(pair.y, unroll(strategy, model, x, theta), rtol=0, atol=1e-12)
    assert pair.loss == pytest.approx(LOSS.value(pair.y, t))
    assert pair.solve.iterations == 15 and pair.adjoint.backprop_steps == 15


@pytest.mark.parametrize("cls", [sp.UnrolledGradient, sp.TruncatedGradient])
def test_unrolled_gradient_with_a_padding_model(case, perturb, cls):
    """Pad, unroll on the extended image, crop: the forward pass is the plain unroll for both
    strategies, and the unrolled gradient is exact for the cropped unrolled loss (the truncated
    one is checked against its own pair in test_engine_api)."""
    model = sp.make_model("foe", num_filters=3, filter_size=3, boundary="symmetric")
    x, t = case((11, 12), seed=1)
    theta = perturb(model, seed=1)
    kw = dict(steps=12, truncate=5) if cls is sp.TruncatedGradient else dict(steps=12)
    strategy = resolve(cls(**kw), model, x, theta)
    pair = sp.loss_and_grad(model, theta, x, t, gradient=strategy)
    assert pair.y.shape == x.shape and pair.solve.y_ext.shape == (19, 20)
    np.testing.assert_allclose(pair.y, unroll(strategy, model, x, theta), rtol=0, atol=1e-12)
    if cls is sp.UnrolledGradient:
        check = sp.check_grad(unrolled_loss(strategy, model, x, t), pair.grad, theta,
                              eps=1e-4, groups=model.param_slices())
        assert check.max_error < 1e-6, str(check)


def test_checkpointing_changes_memory_not_the_gradient(case, perturb):
    model, theta, x, t = foe_case(case, perturb)
    base = resolve(sp.UnrolledGradient(steps=40), model, x, theta)
    runs = {c: sp.loss_and_grad(model, theta, x, t, gradient=replace(base, checkpoint_every=c))
            for c in (1, 3, 7, None, 100)}
    for c, pair in runs.items():
        np.testing.assert_allclose(pair.grad, runs[1].grad, rtol=1e-12, atol=1e-15)
    # store everything: ~T images, no recomputation; sqrt rule: ~sqrt(8T) images, <= 2T evals
    assert runs[1].adjoint.stored_images >= 40 and runs[1].adjoint.grad_evals == 41
    assert runs[None].adjoint.checkpoint_every == 9
    assert runs[None].adjoint.stored_images < 30 < runs[1].adjoint.stored_images
    assert runs[None].adjoint.grad_evals <= 2 * 41
    assert runs[1].adjoint.hvps == 39


def test_truncated_gradient_differentiates_the_last_steps_only(case, perturb):
    model, theta, x, t = foe_case(case, perturb)
    T, K = 25, 6
    strategy = resolve(sp.TruncatedGradient(steps=T, truncate=K), model, x, theta)
    pair = sp.loss_and_grad(model, theta, x, t, gradient=strategy)
    assert pair.adjoint.method == "truncated" and pair.adjoint.backprop_steps == K
    # the truncated loss: K steps from the state (y_{T-K}, y_{T-K-1}) frozen at theta
    y_prev = unroll(replace(strategy, steps=T - K - 1), model, x, theta)
    y_start = unroll(replace(strategy, steps=T - K), model, x, theta)
    last_k = sp.UnrolledGradient(steps=K, step_size=strategy.step_size)
    check = sp.check_grad(unrolled_loss(last_k, model, x, t, y_start, y_prev), pair.grad,
                          theta, eps=1e-4, groups=model.param_slices())
    assert check.max_error < 1e-6, str(check)
    # truncating at K >= T is the full unrolled gradient
    full = sp.loss_and_grad(model, theta, x, t, gradient=replace(strategy, truncate=T))
    untruncated = sp.loss_and_grad(model, theta, x, t,
                                   gradient=sp.UnrolledGradient(steps=T,
                                                                step_size=strategy.step_size))
    np.testing.assert_allclose(full.grad, untruncated.grad, rtol=1e-12)


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name,log_lambda_shift", [("gmrf", 0.0), ("foe", 3.0)])
def test_unrolled_approaches_implicit_on_strongly_convex_models(case, perturb, name,
                                                                log_lambda_shift):
    # the GMRF energy is quadratic; the FoE with a large lambda is strongly convex
    model = sp.make_model(name, num_filters=4, filter_size=3)
    theta = model.init_params()
    theta[model.param_slices()["log_lambda"]] += log_lambda_shift
    x, t = case((12, 12), seed=1)
    implicit = sp.loss_and_grad(model, theta, x, t, solver=sp.LBFGS(gtol=1e-11),
                                gradient=sp.ImplicitGradient(rtol=1e-12)).grad
    errors = [relative_error(sp.loss_and_grad(model, theta, x, t,
                                              gradient=sp.UnrolledGradient(steps=T)).grad,
                             implicit) for T in (5, 20, 80, 320)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-6, errors


def test_truncated_approaches_implicit_as_more_steps_are_differentiated(case):
    model = sp.make_model("gmrf", num_filters=4, filter_size=3)
    theta = model.init_params()
    x, t = case((12, 12), seed=2)
    implicit = sp.loss_and_grad(model, theta, x, t, solver=sp.LBFGS(gtol=1e-11),
                                gradient=sp.ImplicitGradient(rtol=1e-12)).grad
    errors = [relative_error(sp.loss_and_grad(
        model, theta, x, t, gradient=sp.TruncatedGradient(steps=400, truncate=K)).grad,
        implicit) for K in (5, 20, 80, 320)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6, errors


def test_registry_and_config_files_build_the_strategies():
    assert sp.make_gradient("unrolled", steps=50) == sp.UnrolledGradient(steps=50)
    assert isinstance(sp.make_gradient("truncated"), sp.TruncatedGradient)
    yaml = pytest.importorskip("yaml")
    for name, cls in (("unrolled", sp.UnrolledGradient), ("truncated", sp.TruncatedGradient)):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert isinstance(sp.make_gradient(cfg.pop("name"), **cfg), cls)


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"truncate": 0}, "truncate"),
    ({"momentum": 1.0}, "momentum"), ({"step_size": -1.0}, "step_size"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sp.UnrolledGradient(**kwargs)
    with pytest.raises(ValueError, match="truncate"):
        sp.TruncatedGradient(truncate=None)


def test_divergence_raises_a_clear_error(case):
    model = sp.make_model("gmrf", num_filters=2, filter_size=3)
    x, t = case((12, 12))
    with pytest.raises(FloatingPointError, match="step_size"):
        sp.loss_and_grad(model, model.init_params(), x, t,
                         gradient=sp.UnrolledGradient(steps=200, step_size=1e4))


def test_warm_start_is_used_only_when_asked(case, perturb):
    model, theta, x, t = foe_case(case, perturb)
    y0 = t.copy()
    cold = sp.UnrolledGradient(steps=5)
    warm = replace(cold, warm_start=True)
    a = sp.loss_and_grad(model, theta, x, t, gradient=cold, y0=y0)
    b = sp.loss_and_grad(model, theta, x, t, gradient=cold)
    c = sp.loss_and_grad(model, theta, x, t, gradient=warm, y0=y0)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(c.y, a.y)
    np.testing.assert_allclose(c.y, unroll(resolve(warm, model, x, theta, y0), model, x, theta,
                                           y0=y0))


def test_batch_objective_accepts_unrolled_strategies(case, perturb):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    theta = model.init_params()
    pairs = [case((12, 14), seed=s) for s in range(2)]
    strategy = sp.UnrolledGradient(steps=10)
    batch = sp.batch_loss_and_grad(model, theta, pairs, gradient=strategy)
    again = sp.batch_loss_and_grad(model, theta, pairs, gradient=strategy, warm=batch.items)
    np.testing.assert_allclose(again.grad, batch.grad, rtol=1e-12)
    assert all(r.adjoint.u is None and r.adjoint.converged for r in batch.items)
