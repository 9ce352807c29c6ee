"""Pairwise continuous MRF on first differences (the model family of Samuel & Tappen 2009).

Energy::

    E(y; x, theta) = lam/2 ||A y - x||^2 + sum_d alpha_d sum_p rho((y_{p + e_d} - y_p) / s)

over the directions d: horizontal and vertical neighbours, and optionally the two
diagonals. It is a :class:`~structpred.models.filter_mrf.FilterMRF` whose filter bank is
fixed (not learned): 2 x 2 filters embedding [-1, 1] (horizontal ``[[-1, 1], [0, 0]]``,
vertical ``[[-1, 0], [1, 0]]``, diagonals ``[[-1, 0], [0, 1]]`` and ``[[0, -1], [1, 0]]``)
divided by ``diff_scale`` s (default 25: differences in units of a typical noise level, so the
default penalty shapes sit where they do for the FoE). Boundary convention: the filter
library's 'valid' one, a response only where the whole 2 x 2 filter lies inside the image
(so the horizontal differences of the last row and the vertical ones of the last column are
not penalised; the bottom-right pixel is then in no difference at all, so inpainting needs
``diagonals=True``, where the diagonal difference covers it); no padding.

Parameters: ``log_alpha`` (D,) per direction, ``log_lambda`` (1,) and, with
``learn_scale=True``, the penalty shape ``log_scale`` (1,). Any penalty and any task
(denoise, inpaint, deblur) of the filter MRF work here too.
"""
from __future__ import annotations

import numpy as np

from structpred.models.filter_mrf import FilterMRF
from structpred.models.penalties import get_penalty

_DIRECTIONS = {
    "horizontal": [[-1.0, 1.0], [0.0, 0.0]],
    "vertical": [[-1.0, 0.0], [1.0, 0.0]],
    "diagonal": [[-1.0, 0.0], [0.0, 1.0]],
    "antidiagonal": [[0.0, -1.0], [1.0, 0.0]],
}


class PairwiseMRF(FilterMRF):
    """Pairwise MRF on first differences with learned per-direction weights.

    Parameters
    ----------
    diagonals : bool
        Also the two diagonal neighbours (4 directions instead of 2).
    penalty, penalty_scale, learn_scale, task, boundary, pad
        As for :class:`FilterMRF` (default pad 3 for the 2x2 differences).
    diff_scale : float
        s: the differences are divided by s.
    """

    name = "pairwise"

    def __init__(self, *, diagonals: bool = False, penalty: str = "student_t",
                 penalty_scale: float | None = None, learn_scale: bool = False,
                 diff_scale: float = 25.0, task=None, boundary: str = "valid",
                 pad: int | None = None):
        self.penalty = get_penalty(penalty)
        scale = self.penalty.default_scale if penalty_scale is None else float(penalty_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"penalty_scale must be positive, got {penalty_scale!r}")
        if not (np.isfinite(diff_scale) and diff_scale > 0):
            raise ValueError(f"diff_scale must be positive, got {diff_scale!r}")
        self.penalty_scale = scale
        self.diagonals = bool(diagonals)
        self.diff_scale = float(diff_scale)
        self.directions = list(_DIRECTIONS)[:4 if self.diagonals else 2]
        self.num_filters = len(self.directions)
        self.filter_size = 2
        self.basis_name = "fixed"
        self._F = np.ascontiguousarray(
            np.array([_DIRECTIONS[d] for d in self.directions]) / self.diff_scale)
        self._init_options(learn_scale, task, boundary, pad)
        if self.task.name == "inpaint" and not self.diagonals:
            # the bottom-right pixel is in no horizontal/vertical difference of the 'valid'
            # 2x2 grid: if it were missing, the energy would not depend on it (singular E_yy)
            raise ValueError("the pairwise MRF needs diagonals=True for inpainting (without "
                             "them the bottom-right pixel is in no 'valid' 2x2 difference)")

    def param_shapes(self):
        out = {"log_alpha": (self.num_filters,), "log_lambda": (1,)}
        if self.learn_scale:
            out["log_scale"] = (1,)
        return out

    def config(self):
        return self._options_config(dict(
            diagonals=self.diagonals, penalty=self.penalty.name,
            penalty_scale=self.penalty_scale, diff_scale=self.diff_scale))

    def min_image_shape(self):
        return (2, 2)

    def init_params(self, *, sigma: float = 25.0, lam_scale: float = 4.0) -> np.ndarray:
        """alpha = 1 per direction, lam = lam_scale / sigma^2, c = penalty_scale."""
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        return self.pack(self._with_scale({
            "log_alpha": np.zeros(self.num_filters),
            "log_lambda": np.array([np.log(lam_scale / sigma ** 2)])}))

    def filter_bank(self, theta) -> np.ndarray:
        return self._F.copy()
