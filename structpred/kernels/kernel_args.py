"""Named arguments of the generated filter-bank kernels (:mod:`structpred.kernels.filterbank`).

The kernels read these by attribute (``args.lam``), never by position. Numba compiles a
namedtuple as a plain tuple of its field types (the same LLVM structure, so the same code and
speed as the positional tuples these replaced: 180x180, one Numba thread, least-disturbed of
6 alternated runs, 8x3x3 / 48x7x7 energy-gradient 0.66 / 14.3 ms before and after). Only a
call from Python costs 2-3 us more to type (Numba 0.68, 2-core AMD EPYC: a 4-field
namedtuple 3.5 us against 1.7 us for the plain tuple; ``hvp(v, out, HvpArgs)`` 3.5 us
against 0.9 us with nine positional arguments), next to the 0.2-40 ms of the call itself.

This file is in the digest of every generated filter-bank module: a cached kernel compiled
against an older field order is never loaded (Numba's cache keys a namedtuple type on its
class and field types, not on its field names).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EnergyArgs(NamedTuple):
    """``args`` of ``energy_grad`` / ``energy_grad_serial``: the denoising energy
    ``lam/2 ||y - x||^2 + sum_k alpha_k sum_p rho(F_k (*) y)``."""

    x: np.ndarray        #: (H, W) observation
    F: np.ndarray        #: (K, m, m) filters
    Ff: np.ndarray       #: (K, m, m) flipped filters F[:, ::-1, ::-1], contiguous (adjoint)
    alpha: np.ndarray    #: (K,) expert weights
    lam: float           #: data-term weight
    penalty: int         #: penalty code (:mod:`structpred.kernels.penalties`)
    scale: float         #: penalty shape c
    Rp: np.ndarray       #: (K, H + m - 1, W + m - 1) zero-padded responses (work)
    erow: np.ndarray     #: (H - m + 1,) prior energy per response row (work)
    drow: np.ndarray     #: (H,) data energy per image row (work)


class TaskEnergyArgs(NamedTuple):
    """``args`` of ``energy_grad_task`` / ``energy_grad_task_serial``: the data term is
    ``lam/2 ||A y - x||^2`` with A a mask or a blur (:mod:`structpred.kernels.dataterm`);
    the first ten fields are those of :class:`EnergyArgs`."""

    x: np.ndarray
    F: np.ndarray
    Ff: np.ndarray
    alpha: np.ndarray
    lam: float
    penalty: int
    scale: float
    Rp: np.ndarray
    erow: np.ndarray
    drow: np.ndarray
    op: int                   #: OP_MASK or OP_BLUR (:mod:`structpred.kernels.dataterm`)
    mask: np.ndarray          #: (H, W) mask (inpainting), else (1, 1) unused
    blur: np.ndarray          #: (s, s) blur kernel (deblurring), else (1, 1) unused
    blur_flipped: np.ndarray  #: the blur kernel flipped in both axes
    T: np.ndarray             #: (H, W) work
    G: np.ndarray             #: (H, W) work: the data gradient lam A^T (A y - x)
    zeros: np.ndarray         #: (H, W) zeros


class HvpArgs(NamedTuple):
    """``args`` of ``hvp`` / ``hvp_serial``: ``v -> lam v + C^T (D * (C v))``."""

    F: np.ndarray       #: (K, m, m) filters
    Ff: np.ndarray      #: (K, m, m) flipped filters
    D: np.ndarray       #: (K, H - m + 1, W - m + 1) alpha_k rho''(z_k) at the linearisation
    lam: float          #: data-term weight
    Sp: np.ndarray      #: (K, H + m - 1, W + m - 1) zero-padded scaled responses (work)
    zeros: np.ndarray   #: (H, W) zeros
    drow: np.ndarray    #: (H,) work


class TaskHvpArgs(NamedTuple):
    """``args`` of ``hvp_task`` / ``hvp_task_serial``: ``v -> lam A^T A v + C^T (D * (C v))``;
    the first seven fields are those of :class:`HvpArgs`."""

    F: np.ndarray
    Ff: np.ndarray
    D: np.ndarray
    lam: float
    Sp: np.ndarray
    zeros: np.ndarray
    drow: np.ndarray
    op: int                   #: OP_MASK or OP_BLUR
    mask: np.ndarray          #: as in :class:`TaskEnergyArgs`
    blur: np.ndarray
    blur_flipped: np.ndarray
    T: np.ndarray             #: (H, W) work
    Hd: np.ndarray            #: (H, W) work: lam A^T A v
