"""A one-minute tour: denoise a photograph with a Fields-of-Experts model, then compute the
loss through the argmin, its implicit gradient, and check it against finite differences.

    python -m structpred.demo
"""
from __future__ import annotations

import time

import numpy as np

import structpred as sp


def main():
    from skimage import data  # a photograph shipped with scikit-image: no download
    clean = data.camera().astype(np.float64)[200:264, 200:264]
    noisy = clean + 25.0 * np.random.default_rng(0).normal(size=clean.shape)

    model = sp.make_model("foe", num_filters=8, filter_size=3)
    theta = model.init_params(sigma=25.0)
    print(f"model: {model}, {model.num_params} parameters (first call compiles the "
          "Numba kernels, cached afterwards)")

    t0 = time.perf_counter()
    res = sp.LBFGS(gtol=1e-6).minimize(model, noisy, theta)
    print(f"denoise: {res.message} in {time.perf_counter() - t0:.2f} s (incl. compile); "
          f"PSNR {sp.psnr(noisy, clean):.2f} dB -> {sp.psnr(res.y, clean):.2f} dB")

    pair = sp.loss_and_grad(model, theta, noisy, clean)
    print(f"loss {pair.loss:.6f}, ||dL/dtheta|| = {np.linalg.norm(pair.grad):.4e}, "
          f"adjoint {pair.adjoint.method} in {pair.adjoint.iterations} iterations "
          f"(residual {pair.adjoint.residual:.1e})")

    check = sp.check_loss_gradient(model, theta, noisy[:24, :24], clean[:24, :24])
    print(f"implicit gradient vs central finite differences, relative error per group: {check}")


if __name__ == "__main__":
    main()
