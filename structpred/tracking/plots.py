"""Pictures logged with each run: learned filters, noisy/denoised/clean, training curves."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    return plt


def plot_filters(model, theta, path) -> Path:
    """The K filters (each scaled to its own range) with their weights alpha_k."""
    plt = _plt()
    F = model.filter_bank(theta)
    alpha, lam = model.weights(theta)
    K = len(F)
    cols = min(K, 8)
    rows = math.ceil(K / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < K:
            ax.imshow(F[k], cmap="gray", interpolation="nearest")
            ax.set_title(f"α={alpha[k]:.3g}", fontsize=7)
    fig.suptitle(f"{K} filters {F.shape[1]}x{F.shape[2]}, λ={lam:.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_comparison(noisy, denoised, clean, path, psnrs=None) -> Path:
    """Noisy | denoised | clean side by side (0..255 gray)."""
    plt = _plt()
    imgs = [("noisy", noisy), ("denoised", denoised), ("clean", clean)]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for i, (ax, (title, img)) in enumerate(zip(axes, imgs)):
        ax.imshow(np.clip(img, 0, 255), cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
        if psnrs is not None and i < len(psnrs):
            title = f"{title} {psnrs[i]:.2f} dB"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_curves(history: list[dict], path) -> Path:
    """Train loss, train/val PSNR and inner/adjoint iterations against the outer iteration."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    steps = [h["step"] for h in history]

    def series(key):
        pts = [(h["step"], h[key]) for h in history if key in h]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])
    axes[0].semilogy(steps, [h["train_loss"] for h in history])
    axes[0].set_title("train loss")
    for key in ("train_psnr", "val_psnr"):
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, ys, marker=".", label=key)
    axes[1].set_title("PSNR (dB)")
    axes[1].legend(fontsize=8)
    for key in ("inner_iters_mean", "inner_iters_max", "adjoint_iters_mean"):
        xs, ys = series(key)
        if xs:
            axes[2].plot(xs, ys, label=key)
    axes[2].set_title("iterations")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("outer iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
