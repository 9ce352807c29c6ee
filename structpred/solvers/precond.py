"""Fourier preconditioners: ``v -> irfft2(rfft2(v) / S)`` for a positive symbol ``S``.

A filter model's quadratic part ``lam A^T A + sum_k alpha_k rho''(0) C_k^T C_k`` is a sum of
convolutions, diagonal in the Fourier domain if the boundaries are taken as periodic: its
symbol ``S`` (:meth:`structpred.models.base.EnergyModel.hessian_symbol`, rfft2 layout) gives
an approximate inverse of E_yy for two FFTs. The solvers and gradients only see ``S``.

Measured (experiments/iteration_counts.py; 180x180, adjoint CG to 1e-8, at the same y*): CG
iterations 457 -> 228 on the hard 24x5x5 case, 547 -> 314 on the hard 48x7x7, 15 -> 15 /
24 -> 22 / 35 -> 30 on the default 8x3x3 / 24x5x5 / 48x7x7 (where "auto" leaves it off: two
FFTs cost more than an 8x3x3 HVP). Curvature-weighted symbols at y* (mean, mean of the
positive part, median of alpha_k rho''(z_k)) did worse (245 / 245 / 246 and 346 / 345 / 347
on the hard cases): the constant rho''(0) is kept. As L-BFGS's initial inverse Hessian
(s.y / y.M y) M: hard 24x5x5 730 it / 753 evals -> 390 / 413, hard 48x7x7 1041 / 1072 ->
541 / 571.
"""
from __future__ import annotations

import numpy as np
import rocket_fft  # noqa: F401  (scipy.fft inside Numba's nopython mode)
import scipy.fft as sfft
from numba import njit

#: the values of the solvers' and gradients' ``preconditioner`` option
PRECONDITIONERS = ("auto", "fft", None, "none")


def check_options(preconditioner, min_cond) -> None:
    """ValueError naming the field if ``preconditioner``/``precond_min_cond`` (the same two
    fields of ``LBFGS`` and ``ImplicitGradient``) are not allowed values."""
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got "
                         f"{preconditioner!r}")
    if not min_cond >= 1:
        raise ValueError(f"precond_min_cond must be >= 1, got {min_cond!r}")


def select_symbol(energy, preconditioner, min_cond):
    """The bound energy's symbol (``energy.symbol``) if the option ``preconditioner``
    ("auto", "fft", None) calls for it, else None: none for None, for a model without a
    symbol, for a symbol that is not finite and positive (parameters that overflow), and
    for "auto" below ``min_cond``."""
    if preconditioner in (None, "none"):
        return None
    with np.errstate(all="ignore"):
        S = energy.symbol
        if S is None or not (np.all(np.isfinite(S)) and S.min() > 0):
            return None
        if preconditioner == "auto" and symbol_condition(S) < min_cond:
            return None
    return S


def symbol_condition(symbol) -> float:
    """max S / min S: the condition number of the periodic approximation."""
    s = np.asarray(symbol)
    return float(s.max() / s.min())


@njit(nogil=True, cache=True)
def fourier_apply(v, pinv):
    """``v <- irfft2(rfft2(v) * pinv)`` in place, ``v`` flat (H * W,), ``pinv`` (H, W // 2 + 1)
    the inverse symbol. Jitted: scipy.fft compiled into Numba's nopython mode by rocket-fft
    (the same DUCC/pocketfft code as scipy.fft, bit for bit equal here), so the L-BFGS loop
    calls it without an object-mode block and without the GIL (threads over images then
    precondition in parallel). Measured on the hard cases (180x180, quiet 2-core machine,
    ``experiments/loop_overhead.py``): the loop's cost per iteration beyond its energy
    evaluations fell from 1.8-2.1 ms (object mode) to 0.1-0.8 ms (hard 24x5x5) and from
    4.9 to 2.1 ms (hard 48x7x7); MAP solve 1.87-2.15 s -> 1.56 s and 8.0 -> 6.8 s."""
    H = pinv.shape[0]
    W = v.size // H
    V = sfft.rfft2(v.reshape((H, W)))
    V *= pinv
    v[:] = sfft.irfft2(V, s=(H, W)).ravel()


def fourier_preconditioner(symbol, shape):
    """``M(v) = irfft2(rfft2(v) / symbol)`` on (H, W) arrays (flat input accepted; the
    output has the input's shape). ``symbol`` is positive, of shape (H, W // 2 + 1)."""
    shape = (int(shape[0]), int(shape[1]))
    inv = 1.0 / np.asarray(symbol, dtype=np.float64)
    if inv.shape != (shape[0], shape[1] // 2 + 1) or not np.all(np.isfinite(inv) & (inv > 0)):
        raise ValueError(f"the symbol must be positive and finite, of shape "
                         f"{(shape[0], shape[1] // 2 + 1)}; got shape {inv.shape}")

    def apply(v):
        v = np.asarray(v, dtype=np.float64)
        out = np.array(v, dtype=np.float64, order="C").ravel()
        fourier_apply(out, inv)
        return out.reshape(v.shape)
    return apply
