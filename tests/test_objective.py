"""Losses, PSNR, the per-pair and batch objectives, and input validation."""
import numpy as np
import pytest

import structpred as sp


def test_mse_loss_and_psnr():
    t = np.full((4, 5), 100.0)
    y = t + 5.0
    assert sp.MSELoss().value(y, t) == pytest.approx(12.5)
    np.testing.assert_allclose(sp.MSELoss().grad(y, t), 5.0 / 20)
    assert sp.psnr(y, t) == pytest.approx(10 * np.log10(255 ** 2 / 25.0))
    assert sp.psnr(t, t) == float("inf")


def test_denoising_improves_psnr(case):
    model = sp.make_model("foe", num_filters=8, filter_size=3)
    noisy, clean = case((48, 48), seed=3)
    pair = sp.loss_and_grad(model, model.init_params(sigma=25), noisy, clean)
    assert pair.solve.converged and pair.adjoint.converged
    assert pair.psnr > sp.psnr(noisy, clean) + 1.0


def test_batch_is_the_mean_of_the_pairs_and_warm_starts_agree(case):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    theta = model.init_params()
    pairs = [case((16, 18), seed=s) for s in range(3)]
    batch = sp.batch_loss_and_grad(model, theta, pairs)
    singles = [sp.loss_and_grad(model, theta, x, t) for x, t in pairs]
    assert batch.loss == pytest.approx(np.mean([s.loss for s in singles]), rel=1e-12)
    np.testing.assert_allclose(batch.grad, np.mean([s.grad for s in singles], axis=0), rtol=1e-10)
    assert batch.unconverged == 0
    warm = sp.batch_loss_and_grad(model, theta, pairs, warm=batch.items)
    assert all(r.solve.iterations == 0 for r in warm.items)
    np.testing.assert_allclose(warm.grad, batch.grad, rtol=1e-5)


@pytest.mark.parametrize("mutate,match", [
    (lambda x, t: (x.copy().__setitem__((0, 0), np.nan) or x, t), None),
    (lambda x, t: (x, np.full_like(t, np.inf)), "clean"),
    (lambda x, t: (x[..., None].repeat(3, axis=2), t), "RGB"),
    (lambda x, t: (x.ravel(), t), "2-D"),
    (lambda x, t: (x[:, :-1], t), "shape"),
    (lambda x, t: (x[:2, :2], t[:2, :2]), "smaller"),
])
def test_bad_inputs_raise_clear_errors(mutate, match, case):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    x, t = case((12, 12))
    if match is None:
        x = x.copy()
        x[0, 0] = np.nan
        match = "non-finite"
    else:
        x, t = mutate(x, t)
    with pytest.raises(ValueError, match=match):
        sp.loss_and_grad(model, model.init_params(), x, t)


def test_bad_parameters_raise(case):
    model = sp.make_model("foe", num_filters=3, filter_size=3)
    x, t = case((12, 12))
    with pytest.raises(ValueError, match="theta"):
        sp.loss_and_grad(model, np.zeros(5), x, t)
    theta = model.init_params()
    theta[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        model.energy(x, x, theta)
    with pytest.raises(ValueError, match="odd"):
        sp.make_model("foe", filter_size=4)
    with pytest.raises(ValueError, match="unknown model"):
        sp.make_model("nope")
    with pytest.raises(ValueError, match="parameter groups"):
        model.pack({"filters": np.zeros((3, 8))})


def test_pack_unpack_roundtrip():
    model = sp.make_model("foe", num_filters=5, filter_size=5, basis="free")
    theta = np.random.default_rng(0).normal(size=model.num_params)
    np.testing.assert_array_equal(model.pack(model.unpack(theta)), theta)
    assert model.num_params == 5 * 25 + 5 + 1


@pytest.mark.parametrize("name", ["foe", "gmrf"])
def test_threads_over_images_give_the_same_batch(name, case):
    model = sp.make_model(name, num_filters=4, filter_size=3)
    theta = model.init_params()
    pairs = [case((20, 17 + s), seed=s) for s in range(4)]
    one = sp.batch_loss_and_grad(model, theta, pairs, threads=1)
    two = sp.batch_loss_and_grad(model, theta, pairs, threads=2)
    assert two.loss == pytest.approx(one.loss, rel=1e-12)
    np.testing.assert_allclose(two.grad, one.grad, rtol=1e-9, atol=1e-12)
    assert [r.solve.iterations for r in two.items] == [r.solve.iterations for r in one.items]
    with pytest.raises(ValueError, match="threads"):
        sp.batch_loss_and_grad(model, theta, pairs, threads=0)
