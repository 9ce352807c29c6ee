"""The training objective: a loss on the prediction, and its gradient, for one image or a batch.

One evaluation for a (noisy x, clean t) pair is two separate steps, a prediction and its
derivative::

    energy = model.bind(x, theta)               E(.; x, theta)
    solve  = solver.minimize(energy, y0=...)    y: the argmin (LBFGS), or the T-th
                                                heavy-ball iterate (HeavyBall)
    L      = l(solve.y, t)
    dL/dtheta, info = gradient.grad(energy, solve, dl/dy)

A (solver, gradient) pair is checked before anything runs (:func:`resolve_pair`): the
implicit gradient differentiates an argmin and refuses the heavy-ball iterate; an unrolled
gradient differentiates its own heavy-ball iteration (``gradient.solver``) and refuses any
other. Without a solver, the gradient's default is used (LBFGS for the implicit gradient,
the heavy ball for the unrolled ones).

Over a batch the objective is the mean of the per-image losses (so that its scale does not
depend on the batch size); images are processed on threads, one image per thread with
serial kernels (``threads=1``: one image at a time with row-parallel kernels). The thread
layout is decided here, once, by how each image's energy is bound.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numba
import numpy as np

from structpred.gradients.implicit import AdjointInfo, ImplicitGradient
from structpred.kernels.threads import owns_cores
from structpred.losses import MSELoss, psnr
from structpred.solvers import SolveResult
from structpred.validation import as_image, same_shape


@dataclass(frozen=True)
class PairResult:
    """Loss, gradient and diagnostics for one (noisy, clean) pair."""

    loss: float
    grad: np.ndarray
    y: np.ndarray
    solve: SolveResult   #: how y was produced (the inner solve, or the unrolled forward pass)
    adjoint: AdjointInfo  #: the gradient's diagnostics (``UnrolledInfo`` for unrolled ones)
    psnr: float          #: PSNR of y against the clean image (dB)


@dataclass(frozen=True)
class BatchResult:
    """Mean loss and gradient over a batch, with every image's result."""

    loss: float
    grad: np.ndarray
    items: list[PairResult] = field(repr=False)

    @classmethod
    def mean_of(cls, items: Sequence[PairResult]) -> "BatchResult":
        """The mean loss and gradient of per-image results, summed in the order given (the
        one definition every executor uses, so that local and distributed evaluations of
        the same images agree bit for bit)."""
        n = len(items)
        return cls(loss=sum(r.loss for r in items) / n, grad=sum(r.grad for r in items) / n,
                   items=list(items))

    @property
    def psnr(self) -> float:
        """Mean PSNR of the predictions."""
        return float(np.mean([r.psnr for r in self.items]))

    @property
    def unconverged(self) -> int:
        """How many inner solves did not converge (an unrolled prediction stops at its
        fixed step budget, status ``MAXITER``, so with an unrolled gradient every image
        counts; its ``solve.grad_norm`` says how far from stationary it is)."""
        return sum(not r.solve.converged for r in self.items)


def resolve_pair(solver=None, gradient=None):
    """``(solver, gradient)`` with the defaults filled in (``ImplicitGradient()``, and the
    gradient's default solver), checked: raises TypeError naming both if the gradient
    cannot differentiate that solver's prediction."""
    gradient = ImplicitGradient() if gradient is None else gradient
    solver = gradient.default_solver() if solver is None else solver
    gradient.check_solver(solver)
    return solver, gradient


def loss_and_grad(model, theta, noisy, clean, *, solver=None, gradient=None, loss=None,
                  y0=None, u0=None) -> PairResult:
    """Loss of the prediction for ``noisy`` against ``clean`` and its gradient in theta:
    ``loss_and_grad_at(model.bind(noisy, theta), clean, ...)``.

    Parameters
    ----------
    model : EnergyModel
    theta : (P,) array, the flat parameters
    noisy, clean : (H, W) arrays, pixels in 0..255
    solver : the prediction (default: the gradient's, ``LBFGS()`` for the implicit one)
    gradient : gradient method (default ``ImplicitGradient()``; see ``make_gradient``)
    loss : loss object with ``value``/``grad`` (default ``MSELoss()``)
    y0, u0 : optional warm starts for the prediction and the adjoint solve

    Raises ValueError naming the argument for bad images or parameters, TypeError for a
    (solver, gradient) pair that is not allowed.
    """
    solver, gradient = resolve_pair(solver, gradient)
    noisy, clean = _checked_pair(model, noisy, clean)
    return loss_and_grad_at(model.bind(noisy, theta), clean, solver=solver,
                            gradient=gradient, loss=loss, y0=y0, u0=u0)


def _checked_pair(model, noisy, clean):
    """(noisy, clean) as float64 images of one shape; ValueError naming the one that is not."""
    clean = as_image("clean", clean)
    noisy = as_image("noisy", noisy, min_shape=model.min_image_shape())
    same_shape(("noisy", "clean"), noisy, clean)
    return noisy, clean


@owns_cores
def loss_and_grad_at(energy, clean, *, solver, gradient, loss=None, y0=None,
                     u0=None) -> PairResult:
    """:func:`loss_and_grad` for an energy already bound (``model.bind(noisy, theta,
    parallel=...)``): the entry point of whoever schedules images on threads (the batch
    objective, the distributed executors). ``solver`` and ``gradient`` must be a pair
    allowed by :func:`resolve_pair` (checked)."""
    gradient.check_solver(solver)
    loss = MSELoss() if loss is None else loss
    res = solver.minimize(energy, y0=y0)
    g, info = gradient.grad(energy, res, loss.grad(res.y, clean), u0=u0)
    value = loss.value(res.y, clean)
    return PairResult(loss=value, grad=g, y=res.y, solve=res, adjoint=info,
                      psnr=psnr(res.y, clean))


@owns_cores
def batch_loss_and_grad(model, theta, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *,
                        solver=None, gradient=None, loss=None, warm: Sequence | None = None,
                        progress=None, threads: int | None = None,
                        on_item=None) -> BatchResult:
    """Mean loss and gradient over (noisy, clean) ``pairs``.

    ``warm`` is an optional sequence of earlier :class:`PairResult` (or None) per pair,
    whose ``y`` and adjoint ``u`` warm-start this evaluation. ``progress`` is an optional
    callable invoked after each image (e.g. a progress bar's ``update``); ``on_item(i,
    result)``, if given, receives each image's :class:`PairResult` as soon as it is done
    (before ``progress``; e.g. to save it, so an interrupted evaluation keeps its work).

    ``threads``: how many images are processed at once. Each image on its own thread with
    single-threaded kernels beats one image at a time with row-parallel kernels (measured
    1.7x on 2 cores: no synchronisation per kernel pass; see README "Performance").
    Default: Numba's thread count; 1 processes the images one after another, each with
    the parallel kernels. The result does not depend on it (images are independent and
    the sums run in image order).
    """
    if len(pairs) == 0:
        raise ValueError("pairs: the batch is empty")
    if warm is not None and len(warm) != len(pairs):
        raise ValueError(f"warm has {len(warm)} entries for {len(pairs)} pairs")
    threads = numba.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    threads = min(threads, len(pairs))

    solver, gradient = resolve_pair(solver, gradient)
    theta = model.check_params(theta)

    def one(i):
        x, t = _checked_pair(model, *pairs[i])
        w = None if warm is None else warm[i]
        # one image per thread: serial kernels; one at a time: row-parallel kernels
        r = loss_and_grad_at(model.bind(x, theta, parallel=threads == 1), t, solver=solver,
                             gradient=gradient, loss=loss, y0=None if w is None else w.y,
                             u0=None if w is None else w.adjoint.u)
        if on_item is not None:
            on_item(i, r)
        if progress is not None:
            progress()
        return r

    if threads == 1:
        items = [one(i) for i in range(len(pairs))]
    else:
        with ThreadPoolExecutor(threads) as pool:
            items = list(pool.map(one, range(len(pairs))))
    return BatchResult.mean_of(items)
