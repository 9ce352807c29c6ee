"""Noise synthesis with the published convention.

``noisy = clean + sigma * N(0, 1)`` in the 0..255 range, **not** rounded or clipped
(Roth & Black, Chen et al. 2013, Chen & Pock 2015). ``rounded=True`` gives the stricter
8-bit regime (noisy image rounded and clipped to 0..255), as a stored noisy PNG would be.

Each image draws its noise from its own generator, seeded by (seed, split, index): the noise
of an image does not depend on how many other images are loaded, so a fast run on the first
images sees the same noise as a full run.
"""
from __future__ import annotations

import numpy as np

SPLITS = {"train": 0, "val": 1, "test": 2, "user": 3}


def noise_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` under ``seed``."""
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator, *,
              rounded: bool = False) -> np.ndarray:
    """``clean + sigma * N(0, 1)``; rounded to 8 bit (and clipped) if ``rounded``."""
    noisy = clean + float(sigma) * rng.standard_normal(clean.shape)
    if rounded:
        noisy = np.clip(np.round(noisy), 0.0, 255.0)
    return noisy
