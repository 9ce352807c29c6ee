"""The engine's shape: a bound energy, solvers that predict, gradient methods that
differentiate a solve, and the (solver, gradient) pairs that are allowed (issue 13)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import structpred as sp

ROOT = Path(__file__).resolve().parents[1]


def foe_case(case, perturb, shape=(12, 12), seed=0, **kw):
    model = sp.make_model("foe", num_filters=4, filter_size=3, **kw)
    x, t = case(shape, seed=seed)
    return model, perturb(model, seed=seed), x, t


# ------------------------------------------------- check_loss_gradient, every pair
@pytest.mark.parametrize("gradient", [
    sp.UnrolledGradient(steps=15),
    sp.UnrolledGradient(steps=12, momentum=0.0, checkpoint_every=5),
    sp.TruncatedGradient(steps=40, truncate=10),
], ids=["unrolled", "unrolled-gd", "truncated"])
@pytest.mark.parametrize("boundary", ["valid", "symmetric"])
def test_check_loss_gradient_differentiates_the_pairs_own_prediction(case, perturb, gradient,
                                                                     boundary):
    """On the main before issue 13 the checker differentiated the argmin whatever the
    gradient: relative errors 0.5-0.8 for the unrolled gradient, which is right."""
    model, theta, x, t = foe_case(case, perturb, boundary=boundary)
    check = sp.check_loss_gradient(model, theta, x, t, gradient=gradient)
    assert check.max_error < 1e-4, str(check)
    assert type(gradient).__name__ in check.checked and "HeavyBall" in check.checked
    if isinstance(gradient, sp.TruncatedGradient):
        assert "held constant" in check.checked


def test_check_loss_gradient_says_it_checked_the_argmin(case, perturb):
    model, theta, x, t = foe_case(case, perturb)
    check = sp.check_loss_gradient(model, theta, x, t, directions=2)
    assert check.max_error < 1e-4, str(check)
    assert check.checked.startswith("ImplicitGradient of the argmin of LBFGS(gtol=1e-10")


def test_a_truncated_gradient_is_not_the_unrolled_one(case, perturb):
    """The check can fail: the truncated gradient against finite differences of the whole
    unrolled map (what the checker must not do) is far off."""
    model, theta, x, t = foe_case(case, perturb)
    trunc = sp.TruncatedGradient(steps=40, truncate=10)
    pair = sp.loss_and_grad(model, theta, x, t, gradient=trunc)
    full = sp.UnrolledGradient(steps=40, step_size=pair.adjoint.step_size)
    predict, _ = full.prediction_map(sp.loss_and_grad(model, theta, x, t, gradient=full).solve)
    wrong = sp.check_grad(lambda th: sp.MSELoss().value(predict(model.bind(x, th)), t),
                          pair.grad, theta, eps=1e-4)
    assert wrong.max_error > 1e-2


# ------------------------------------------------------------ pairs refused
def test_pairs_that_are_not_allowed_are_refused_before_solving(case):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    x, t = case((12, 12))
    theta = model.init_params()
    with pytest.raises(TypeError, match="UnrolledGradient differentiates the prediction of "
                                        "HeavyBall"):
        sp.loss_and_grad(model, theta, x, t, solver=sp.LBFGS(), gradient=sp.UnrolledGradient())
    with pytest.raises(TypeError, match="ImplicitGradient differentiates an argmin"):
        sp.loss_and_grad(model, theta, x, t, solver=sp.HeavyBall())
    with pytest.raises(TypeError, match="steps=10"):
        sp.loss_and_grad(model, theta, x, t, solver=sp.HeavyBall(steps=10),
                         gradient=sp.UnrolledGradient(steps=20))
    with pytest.raises(TypeError):
        sp.batch_loss_and_grad(model, theta, [(x, t)], solver=sp.HeavyBall())
    with pytest.raises(TypeError, match="ImplicitGradient"):
        sp.check_loss_gradient(model, theta, x, t, solver=sp.HeavyBall())
    # a gradient method refuses a solve of another solver too
    energy = model.bind(x, theta)
    solve = sp.LBFGS().minimize(energy)
    with pytest.raises(TypeError, match="got a solve of LBFGS"):
        sp.UnrolledGradient().grad(energy, solve, sp.MSELoss().grad(solve.y, t))


def test_the_same_heavy_ball_given_explicitly_is_accepted(case, perturb):
    model, theta, x, t = foe_case(case, perturb)
    a = sp.loss_and_grad(model, theta, x, t, gradient=sp.UnrolledGradient(steps=12))
    b = sp.loss_and_grad(model, theta, x, t, solver=sp.HeavyBall(steps=12),
                         gradient=sp.UnrolledGradient(steps=12))
    np.testing.assert_allclose(b.grad, a.grad, rtol=1e-12, atol=1e-15)
    assert a.solve.status == sp.Status.MAXITER and a.adjoint.status == sp.Status.CONVERGED


# ------------------------------------------------------ predict, then differentiate
def test_predict_then_differentiate_equals_loss_and_grad(case, perturb):
    model, theta, x, t = foe_case(case, perturb, shape=(14, 13), boundary="symmetric")
    energy = model.bind(x, theta)
    assert energy.shape == (14 + 8, 13 + 8) and energy.image_shape == (14, 13)
    solve = sp.LBFGS().minimize(energy)
    g, info = sp.ImplicitGradient().grad(energy, solve, sp.MSELoss().grad(solve.y, t))
    pair = sp.loss_and_grad(model, theta, x, t)
    np.testing.assert_array_equal(solve.y, pair.y)
    np.testing.assert_array_equal(g, pair.grad)
    assert info.status in (sp.Status.CONVERGED, sp.Status.NEGATIVE_CURVATURE)
    # the shorthand minimize(model, x, theta) is minimize(model.bind(x, theta))
    np.testing.assert_array_equal(sp.LBFGS().minimize(model, x, theta).y, solve.y)
    with pytest.raises(TypeError, match="bound energy"):
        sp.LBFGS().minimize(energy, x, theta)


def test_serial_and_parallel_bindings_agree(case, perturb):
    model, theta, x, t = foe_case(case, perturb, shape=(30, 26))
    par, ser = model.bind(x, theta), model.bind(x, theta, parallel=False)
    a, b = sp.LBFGS().minimize(par), sp.LBFGS().minimize(ser)
    np.testing.assert_allclose(b.y, a.y, rtol=0, atol=1e-9)
    ga, _ = sp.ImplicitGradient().grad(par, a, a.y - t)
    gb, _ = sp.ImplicitGradient().grad(ser, a, a.y - t)
    np.testing.assert_allclose(gb, ga, rtol=1e-10)


def test_bind_names_bad_arguments(case):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    x, _ = case((12, 12))
    with pytest.raises(ValueError, match="theta"):
        model.bind(x, np.zeros(3))
    with pytest.raises(ValueError, match="x"):
        model.bind(x[:2, :2], model.init_params())
    energy = model.bind(x, model.init_params())
    with pytest.raises(ValueError, match="y0"):
        sp.LBFGS().minimize(energy, y0=np.zeros((5, 5)))


# ------------------------------------------------------------- thread policy
def test_threads_over_images_with_unrolled_gradients_under_workqueue(tmp_path):
    """Numba's workqueue layer (its fallback without TBB or OpenMP) aborts the process on
    concurrent entry to parallel kernels; the unrolled gradient used to call them from
    every image's thread. Now every method runs the kernels the energy was bound with."""
    script = tmp_path / "wq.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, numba, structpred as sp
        rng = np.random.default_rng(0)
        pairs = []
        for s in range(4):
            t = rng.uniform(60, 200, (20, 18 + s))
            pairs.append((t + 25 * rng.normal(size=t.shape), t))
        model = sp.make_model("foe", num_filters=4, filter_size=3)
        theta = model.init_params()
        for g in (sp.UnrolledGradient(steps=30), sp.TruncatedGradient(steps=30, truncate=8),
                  sp.ImplicitGradient()):
            one = sp.batch_loss_and_grad(model, theta, pairs, gradient=g, threads=1)
            two = sp.batch_loss_and_grad(model, theta, pairs, gradient=g, threads=2)
            assert abs(two.loss - one.loss) <= 1e-12 * abs(one.loss), (two.loss, one.loss)
            np.testing.assert_allclose(two.grad, one.grad, rtol=1e-9, atol=1e-12)
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        print("ok")
    """))
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_the_blas_limit_is_restored_after_threads_over_images(case):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()
              if p["user_api"] == "blas"]
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    pairs = [case((12, 12), seed=s) for s in range(3)]
    sp.batch_loss_and_grad(model, model.init_params(), pairs, threads=2)
    after = [p["num_threads"] for p in threadpoolctl.threadpool_info()
             if p["user_api"] == "blas"]
    assert after == before


def test_unit_range_images_are_warned_about_once_per_call_site():
    """0..1 pixels given to the engine (which works in 0..255) are said, not silently used."""
    import warnings
    model = sp.make_model("foe", num_filters=2, filter_size=3)
    theta = model.init_params(sigma=25.0)
    rng = np.random.default_rng(0)
    with pytest.warns(sp.PixelRangeWarning, match=r"x: pixel values in .* 0\.\.1 image") as rec:
        model.bind(rng.random((12, 12)), theta)
        sp.LBFGS(maxiter=1).minimize(model, rng.random((12, 12)), theta)
    # both name this file's lines, not a line inside structpred
    assert [w.filename for w in rec] == [__file__, __file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", sp.PixelRangeWarning)
        model.bind(255 * rng.random((12, 12)), theta)          # 0..255: silent
        model.bind(np.zeros((12, 12)), theta)                  # constant: silent
