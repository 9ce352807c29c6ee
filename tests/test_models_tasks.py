"""New penalties, the learned penalty shape, the pairwise MRF and the observation models
(inpainting, deblurring): every derivative against central finite differences."""
import numpy as np
import pytest

import structpred as sp
from structpred.data.datasets import skimage_photo
from structpred.data.tasks import Task, make_task
from structpred.kernels.penalties import penalty_shape_terms, penalty_terms
from structpred.models.penalties import PENALTIES


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_penalty_scalar_derivatives(name):
    code = PENALTIES[name].code
    fd = sp.gradients.check.central_difference
    for z in (-3.1, -0.4, 0.0, 0.7, 2.5):
        for c in (0.3, 1.7):
            r, d1, d2 = penalty_terms(code, z, c)
            assert d1 == pytest.approx(fd(lambda s: penalty_terms(code, z + s, c)[0], 1e-4),
                                       rel=1e-8, abs=1e-10)
            assert d2 == pytest.approx(fd(lambda s: penalty_terms(code, z + s, c)[1], 1e-4),
                                       rel=1e-8, abs=1e-10)
            rc, d1c = penalty_shape_terms(code, z, c)
            assert rc == pytest.approx(fd(lambda s: penalty_terms(code, z, c + s)[0], 1e-4),
                                       rel=1e-8, abs=1e-10)
            assert d1c == pytest.approx(fd(lambda s: penalty_terms(code, z, c + s)[1], 1e-4),
                                        rel=1e-8, abs=1e-10)


def test_charbonnier_is_convex_and_gen_charbonnier_interpolates():
    z = np.linspace(-50, 50, 1001)
    assert all(penalty_terms(PENALTIES["charbonnier"].code, v, 0.7)[2] > 0 for v in z)
    assert PENALTIES["charbonnier"].convex and not PENALTIES["gen_charbonnier"].convex
    assert not PENALTIES["quadratic"].learnable_shape
    with pytest.raises(ValueError, match="learn_scale"):
        sp.make_model("filter_mrf", penalty="quadratic", learn_scale=True)


MODELS = [
    ("filter_mrf", dict(num_filters=3, filter_size=3, penalty="charbonnier")),
    ("filter_mrf", dict(num_filters=3, filter_size=5, penalty="gen_charbonnier", basis="free")),
    ("foe", dict(num_filters=3, filter_size=3, learn_scale=True)),
    ("filter_mrf", dict(num_filters=2, filter_size=3, penalty="charbonnier", learn_scale=True)),
    ("filter_mrf", dict(num_filters=2, filter_size=3, penalty="gen_charbonnier",
                        learn_scale=True)),
    ("pairwise", dict()),
    ("pairwise", dict(diagonals=True, penalty="charbonnier", learn_scale=True)),
    ("foe", dict(num_filters=3, filter_size=3, task="inpaint")),
    ("foe", dict(num_filters=3, filter_size=5, task={"name": "deblur", "blur_size": 5})),
    ("gmrf", dict(num_filters=2, filter_size=3, task="deblur")),
    ("pairwise", dict(penalty="gen_charbonnier", diagonals=True,
                      task={"name": "inpaint", "missing": 0.3})),
    ("pairwise", dict(diagonals=True, learn_scale=True, task="deblur")),
    ("foe", dict(num_filters=3, filter_size=3, boundary="symmetric", task="inpaint")),
]


@pytest.mark.parametrize("name,kwargs", MODELS)
def test_model_derivatives(name, kwargs, case, perturb):
    model = sp.make_model(name, **kwargs)
    x, _ = case((13, 12), seed=1)
    theta = perturb(model, seed=2)
    y = x + 5 * np.random.default_rng(3).normal(size=x.shape)
    check = sp.check_model_derivatives(model, y, x, theta, eps=1e-5)
    assert set(check.errors) == {"grad_y", "hvp"} | {f"mixed/{g}" for g in model.param_shapes()}
    assert check.max_error < 1e-6, str(check)
    # the single-thread kernels agree with the parallel ones
    fg, args = model.objective(x, theta)
    fgs, args_s = model.objective(x, theta, serial=True)
    g1, g2 = np.empty(x.size), np.empty(x.size)
    assert fg(y.ravel(), g1, args) == pytest.approx(fgs(y.ravel(), g2, args_s), rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-10)
    v = np.random.default_rng(4).normal(size=x.shape)
    np.testing.assert_allclose(model.hessian(y, x, theta)(v),
                               model.hessian(y, x, theta, serial=True)(v), rtol=1e-10, atol=1e-10)


IMPLICIT = [
    ("filter_mrf", dict(num_filters=2, filter_size=3, penalty="charbonnier")),
    ("filter_mrf", dict(num_filters=2, filter_size=3, penalty="gen_charbonnier",
                        learn_scale=True)),
    ("foe", dict(num_filters=2, filter_size=3, learn_scale=True)),
    ("pairwise", dict(diagonals=True, learn_scale=True)),
    ("foe", dict(num_filters=2, filter_size=3, task="inpaint")),
    # deblurring: with a few smooth filters the checkerboard is (nearly) in the null space of
    # both the blur and the prior, an ill-conditioned argmin that finite differences cannot
    # resolve; 8 filters 3x3 see every frequency
    ("foe", dict(num_filters=8, filter_size=3, task={"name": "deblur", "blur_size": 5})),
    # inpainting with a Charbonnier penalty: the masked pixels are held only by the prior's
    # small curvature; before check_loss_gradient polished the perturbed argmins by Newton
    # steps, the argmin's error at gtol 1e-10 over eps 1e-4 showed as a 1.4e-4 error
    ("pairwise", dict(task="inpaint", penalty="charbonnier", diagonals=True)),
    ("pairwise", dict(task="deblur", diagonals=True, penalty="charbonnier")),
    ("gmrf", dict(num_filters=8, filter_size=3, task="deblur")),
    # boundary handling (pad, solve, crop): the loss sees the crop, the adjoint lives on the
    # extended image; every padding mode, a mask and a blur extended with it
    ("foe", dict(num_filters=3, filter_size=3, boundary="symmetric")),
    ("foe", dict(num_filters=2, filter_size=5, boundary="reflect", pad=3)),
    ("pairwise", dict(diagonals=True, boundary="symmetric")),
    ("foe", dict(num_filters=2, filter_size=3, task="inpaint", boundary="symmetric")),
    ("foe", dict(num_filters=8, filter_size=3, task={"name": "deblur", "blur_size": 5},
                 boundary="reflect")),
]


#: (name, kwargs, eps): finite-difference step 1e-4 unless the case says otherwise
IMPLICIT_CASES = [c if len(c) == 3 else c + (1e-4,) for c in IMPLICIT]


@pytest.mark.parametrize("name,kwargs,eps", IMPLICIT_CASES)
def test_implicit_gradient_matches_finite_differences(name, kwargs, eps, perturb):
    model = sp.make_model(name, **kwargs)
    clean = skimage_photo("camera")[200:214, 240:253]
    task = model.task
    noisy = task.degrade(clean, 10.0, np.random.default_rng(0))
    theta = perturb(model, seed=5, scale=0.2)
    check = sp.check_loss_gradient(model, theta, noisy, clean, solver=sp.LBFGS(gtol=1e-10),
                                   gradient=sp.ImplicitGradient(rtol=1e-12), eps=eps)
    assert set(check.errors) == set(model.param_shapes())
    assert check.max_error < 1e-4, str(check)


def test_model_operator_matches_the_data_convention():
    rng = np.random.default_rng(0)
    y, x = rng.normal(size=(11, 14)), rng.normal(size=(11, 14))
    for spec in ("denoise", "inpaint", {"name": "deblur", "blur_sigma": 1.6, "blur_size": 7}):
        task = make_task(spec)
        model = sp.make_model("pairwise", task=spec, diagonals=True)
        lam = 0.7
        if task.name == "inpaint":       # x is given on the observed pixels only
            x = task.forward(x)
        e, g = model.data_gradient(y, x, lam)
        r = task.forward(y) - x
        assert e == pytest.approx(0.5 * lam * np.sum(r * r), rel=1e-12)
        np.testing.assert_allclose(g, lam * task.adjoint(r), rtol=1e-11, atol=1e-12)
        u = rng.normal(size=y.shape)      # <A y, u> = <y, A^T u>
        assert np.vdot(task.forward(y), u) == pytest.approx(np.vdot(y, task.adjoint(u)))


def test_task_degradations_are_reproducible():
    t = Task("inpaint", missing=0.4, mask_seed=3)
    m = t.mask((50, 60))
    assert set(np.unique(m)) == {0.0, 1.0} and abs(1 - m.mean() - 0.4) < 0.05
    np.testing.assert_array_equal(m, Task("inpaint", missing=0.4, mask_seed=3).mask((50, 60)))
    k = Task("deblur").blur_kernel()
    assert k.shape == (7, 7) and k.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="task"):
        make_task("superres")
    with pytest.raises(ValueError, match="diagonals"):
        sp.make_model("pairwise", task="inpaint")
    with pytest.raises(ValueError, match="missing"):
        make_task({"name": "inpaint", "missing": 1.5})


def test_model_config_roundtrip_keeps_old_layouts():
    foe = sp.make_model("foe", num_filters=3, filter_size=3)
    assert "task" not in foe.config() and "learn_scale" not in foe.config()
    assert list(foe.param_shapes()) == ["filters", "log_alpha", "log_lambda"]
    for name, kw in MODELS:
        model = sp.make_model(name, **kw)
        again = sp.make_model(name, **model.config())
        assert again.config() == model.config()
        assert again.param_shapes() == model.param_shapes()


def test_boundary_modes_pad_solve_crop():
    """A padding model solves on the mirrored extension and returns the crop; warm starts of
    either shape; a padded mask is the image's mask extended; bad options are refused."""
    clean = skimage_photo("camera")[200:230, 240:262]
    noisy = clean + 10 * np.random.default_rng(0).normal(size=clean.shape)
    valid = sp.make_model("foe", num_filters=3, filter_size=3)
    sym = sp.make_model("foe", num_filters=3, filter_size=3, boundary="symmetric")
    assert (sym.pad, valid.pad) == (4, 0) and "boundary" not in valid.config()
    theta = valid.init_params(sigma=10)
    xe = sym.extend(noisy)
    assert xe.shape == (38, 30)
    np.testing.assert_array_equal(xe[:4, 4:-4], noisy[3::-1])      # mirrored, edge repeated
    np.testing.assert_array_equal(sym.crop(xe), noisy)
    g = np.random.default_rng(1).normal(size=noisy.shape)           # <crop v, g> = <v, crop^T g>
    v = np.random.default_rng(2).normal(size=xe.shape)
    assert np.vdot(sym.crop(v), g) == pytest.approx(np.vdot(v, sym.extend_adjoint(g)))
    solver = sp.LBFGS(gtol=1e-8)
    r = solver.minimize(sym, noisy, theta)
    assert r.y.shape == noisy.shape and r.y_ext.shape == xe.shape and r.converged
    np.testing.assert_array_equal(r.y, sym.crop(r.y_ext))
    # the same energy on the extended image, solved directly with a 'valid' model
    direct = solver.minimize(valid, xe, theta)
    np.testing.assert_allclose(r.y_ext, direct.y, rtol=0, atol=1e-6)
    # warm start from the extended solution: already converged
    assert solver.minimize(sym, noisy, theta, y0=r.y_ext).iterations == 0
    assert solver.minimize(sym, noisy, theta, y0=r.y).y.shape == noisy.shape
    with pytest.raises(ValueError, match="y0"):
        solver.minimize(sym, noisy, theta, y0=np.zeros((5, 5)))
    # padding beats 'valid' at the border on this crop (the border is under-regularised)
    rv = solver.minimize(valid, noisy, theta)
    assert sp.psnr(r.y, clean) > sp.psnr(rv.y, clean)
    inp = sp.make_model("foe", num_filters=2, filter_size=3, task="inpaint", boundary="reflect")
    op = inp._operator(inp.extend(noisy).shape)
    np.testing.assert_array_equal(inp.crop(op[1]), inp.task.mask(noisy.shape))
    for bad in (dict(boundary="zero"), dict(boundary="valid", pad=3),
                dict(boundary="symmetric", pad=0), dict(boundary="symmetric", pad=2.5)):
        with pytest.raises(ValueError, match="boundary|pad"):
            sp.make_model("foe", num_filters=2, filter_size=3, **bad)
