"""Losses on the prediction y* against the clean image t, and PSNR for reporting."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PEAK = 255.0


@dataclass(frozen=True)
class MSELoss:
    """``l(y) = 0.5 * mean((y - t)^2)`` over the pixels of one image (the peer's convention;
    the factor 1/2 makes ``dl/dy = (y - t) / N``)."""

    name = "mse"

    def value(self, y: np.ndarray, t: np.ndarray) -> float:
        r = y - t
        return 0.5 * float(np.vdot(r, r)) / r.size

    def grad(self, y: np.ndarray, t: np.ndarray) -> np.ndarray:
        return (y - t) / y.size


def mse(y, t) -> float:
    """Mean squared error mean((y - t)^2) (no factor 1/2)."""
    r = np.asarray(y, dtype=np.float64) - np.asarray(t, dtype=np.float64)
    return float(np.mean(r * r))


def psnr(y, t, peak: float = PEAK) -> float:
    """PSNR in dB, ``10 log10(peak^2 / mean((y - t)^2))`` (peak 255 for 8-bit images)."""
    e = mse(y, t)
    return float("inf") if e == 0 else 10.0 * np.log10(peak ** 2 / e)
