"""The training objective: a loss on the argmin, and its gradient, for one image or a batch.

One evaluation for a (noisy x, clean t) pair::

    y  = prediction                     (the argmin of E, or the T-th unrolled iterate)
    L  = l(y, t)
    dL/dtheta                           (gradient strategy: implicit by default)

The gradient strategy decides what the prediction is, through one protocol,
``gradient.predict_and_grad(model, x, theta, dl_dy, solver=, y0=, u0=)`` returning
``(solve_result, grad, info)``:

* an *argmin* strategy (:class:`ImplicitGradient`, ``uses_argmin = True``) runs the inner
  solver to ``y* = argmin_y E(y; x, theta)`` (warm-started from y0 if given) and
  differentiates the exact minimiser;
* a *trajectory* strategy (:class:`UnrolledGradient`, :class:`TruncatedGradient`,
  ``uses_argmin = False``) owns its inner iteration, because its gradient is exact only for
  the iterate it produced; the solver is not run.

Over a batch the objective is the mean of the per-image losses (so that its scale does not
depend on the batch size); images are processed on threads, one image per thread with
single-threaded kernels (``threads=1``: one image at a time with row-parallel kernels).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numba
import numpy as np

from structpred.gradients.implicit import AdjointInfo, ImplicitGradient
from structpred.kernels.threads import single_threaded_blas
from structpred.losses import MSELoss, psnr
from structpred.solvers import LBFGS, SolveResult
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


def loss_and_grad(model, theta, noisy, clean, *, solver=None, gradient=None, loss=None,
                  y0=None, u0=None, serial=False) -> PairResult:
    """Loss of the prediction for ``noisy`` against ``clean`` and its gradient in theta.

    The prediction is ``argmin_y E(y; noisy, theta)`` for the default (implicit) gradient,
    or the T-th iterate of an unrolled strategy's inner iteration.

    Parameters
    ----------
    model : EnergyModel
    theta : array, the flat parameters
    noisy, clean : (H, W) arrays
    solver : inner solver (default ``LBFGS()``; unused by unrolled strategies)
    gradient : gradient strategy (default ``ImplicitGradient()``; see ``make_gradient``)
    loss : loss object with ``value``/``grad`` (default ``MSELoss()``)
    y0, u0 : optional warm starts for the prediction and the adjoint solve
    serial : run the model's kernels on the calling thread only (for threads over images)
    """
    solver = LBFGS() if solver is None else solver
    gradient = ImplicitGradient() if gradient is None else gradient
    loss = MSELoss() if loss is None else loss
    clean = as_image("clean", clean)
    noisy = as_image("noisy", noisy, min_shape=model.min_image_shape())
    same_shape(("noisy", "clean"), noisy, clean)
    theta = model.check_params(theta)
    # all of it, the loss included: one BLAS call (np.vdot) wakes OpenBLAS's threads, which
    # then spin against the kernels' threads (measured: 8x3x3 MAP + gradient 2.5x slower)
    with single_threaded_blas():
        res, g, info = gradient.predict_and_grad(model, noisy, theta,
                                                 lambda y: loss.grad(y, clean), solver=solver,
                                                 y0=y0, u0=u0, serial=serial)
        value = loss.value(res.y, clean)
    return PairResult(loss=value, grad=g, y=res.y, solve=res, adjoint=info,
                      psnr=psnr(res.y, clean))


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

    def one(i):
        x, t = pairs[i]
        w = None if warm is None else warm[i]
        r = loss_and_grad(model, theta, x, t, solver=solver, gradient=gradient, loss=loss,
                          y0=None if w is None else w.y, u0=None if w is None else w.adjoint.u,
                          serial=threads > 1)
        if on_item is not None:
            on_item(i, r)
        if progress is not None:
            progress()
        return r

    if threads == 1:
        items = [one(i) for i in range(len(pairs))]
    else:
        # BLAS is limited to one thread here once for all workers (the per-call limits
        # inside would otherwise race on the process-wide setting)
        with single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
            items = list(pool.map(one, range(len(pairs))))
    return BatchResult.mean_of(items)
