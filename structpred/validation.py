"""Input checks shared by the public API: each raises a ValueError that names the argument."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np


class PixelRangeWarning(UserWarning):
    """An image looks like 0..1 pixels where structpred works in 0..255 (noise levels,
    initial parameters, PSNR): likely a silently wrong result, so it is said once."""


#: float pixels whose 99.5th percentile is at most this are 0..1 (scikit-image's
#: convention): the rule that reads images (:mod:`structpred.data.images`) and the engine's
#: :func:`warn_if_unit_range` share it
UNIT_RANGE_P995 = 2.0

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for the function that calls this one, of the first
    frame outside structpred: the warning then names the user's line, and "once per call
    site" means once per line of theirs, however deep in the package the check runs
    (``model.bind``, ``solver.minimize``, ...)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_unit_range(name: str, arr: np.ndarray) -> None:
    """Warn (:class:`PixelRangeWarning`, once per calling line outside structpred) if the
    image ``arr`` looks like 0..1 pixels, noisy or not, by the rule that reads image files
    (:mod:`structpred.data.images`: a 99.5th percentile <= :data:`UNIT_RANGE_P995`), a
    constant image excepted.
    The models, ``init_params(sigma=...)``, the noise levels and PSNR use 0..255; a model
    trained on 0..1 data is legitimate, hence a warning and not an error
    (``warnings.filterwarnings("ignore", category=PixelRangeWarning)``)."""
    if not arr.size:
        return
    lo, hi = float(arr.min()), float(arr.max())
    if hi > 10.0 or hi == lo:     # the usual 0..255 image: no percentile (a few ms) needed
        return
    if hi <= UNIT_RANGE_P995 or float(np.percentile(arr, 99.5)) <= UNIT_RANGE_P995:
        warnings.warn(f"{name}: pixel values in {lo:.3g}..{hi:.3g} look like a 0..1 image; "
                      "structpred's models, noise levels (sigma) and PSNR use 0..255 "
                      "(multiply by 255)", PixelRangeWarning, stacklevel=_caller_stacklevel())


def as_image(name: str, a, *, min_shape: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Return ``a`` as a C-contiguous float64 (H, W) array, or raise a ValueError naming it.

    Rejects arrays that are not 2-D (an RGB image must be converted to gray first), that
    hold NaN or Inf, or that are smaller than ``min_shape`` (e.g. smaller than a filter).
    """
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (an RGB image? convert it to grayscale first)" if arr.ndim == 3 else ""
        raise ValueError(f"{name}: expected a 2-D grayscale image, got shape {arr.shape}{hint}")
    if arr.shape[0] < min_shape[0] or arr.shape[1] < min_shape[1]:
        raise ValueError(f"{name}: image of shape {arr.shape} is smaller than the "
                         f"minimum {min_shape} (the filter size)")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or Inf)")
    return arr


def same_shape(names: tuple[str, str], a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; "
                         "they must match")


def as_vector(name: str, a, size: int) -> np.ndarray:
    """Return ``a`` as a finite float64 vector of length ``size``, or raise a ValueError."""
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    if arr.ndim != 1 or arr.size != size:
        raise ValueError(f"{name}: expected a flat vector of {size} values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values (NaN or Inf)")
    return arr
