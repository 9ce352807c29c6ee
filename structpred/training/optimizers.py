"""Outer optimisers over the flat parameter vector: small immutable objects with
``init(fun, theta) -> state`` and ``step(fun, state) -> state`` (optimistix style).

``fun(theta, indices, warm) -> (BatchResult, warm)`` is the training objective: the mean
loss and gradient over the images at ``indices`` (all if None), warm-started from ``warm``
(one :class:`WarmStart` or None per training image) and returning the updated warm starts.
States are frozen dataclasses of arrays and scalars, so a checkpoint can store them exactly.

* :class:`OuterLBFGS`: full-batch L-BFGS with a weak-Wolfe line search (the papers' choice;
  Chen et al. 2013, Samuel & Tappen 2009). Trial points are warm-started from the current
  iterate's minimisers and adjoints, so a line-search evaluation costs a few inner iterations.
* :class:`Adam`: minibatch Adam (Kingma & Ba 2015); minibatches drawn from a generator whose
  state is part of the optimiser state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from structpred.registry import build
from structpred.solvers import Status


@dataclass(frozen=True)
class WarmStart:
    """A previous minimiser ``y`` and adjoint ``u`` of one image (what
    ``batch_loss_and_grad(warm=...)`` reads as ``w.y`` and ``w.adjoint.u``)."""

    y: np.ndarray
    u: np.ndarray

    @property
    def adjoint(self):
        return self


@dataclass(frozen=True)
class StepInfo:
    """What one outer step did (for logging).

    ``status`` is a member of the engine's one status vocabulary
    (:class:`structpred.solvers.Status`): ``ACCEPTED`` (the Wolfe conditions held, or an
    Adam step; also a state no step has led to yet), ``SUFFICIENT_DECREASE`` (an L-BFGS
    step accepted on sufficient decrease only) or ``LINESEARCH_FAILED``. Checkpoints store
    its name; the strings of older checkpoints are mapped back on load
    (``structpred.training.checkpoint``).
    """

    n_evals: int = 0          #: objective evaluations (line-search trials, or 1)
    step_size: float = 0.0    #: accepted step length
    status: Status = Status.ACCEPTED


@dataclass(frozen=True)
class LBFGSState:
    theta: np.ndarray
    loss: float
    grad: np.ndarray
    s_hist: tuple = ()
    y_hist: tuple = ()
    iteration: int = 0
    warm: tuple = ()
    prev_loss: float = math.inf
    last: object = field(default=None, repr=False, compare=False)   #: BatchResult at theta
    info: StepInfo = StepInfo()
    step_scale: float = 1.0   #: first trial step of the next line search (< 1 after a rejection)


@dataclass(frozen=True)
class OuterLBFGS:
    """Full-batch L-BFGS over theta.

    Parameters
    ----------
    max_iter : int
        Outer iterations.
    history : int
        Stored curvature pairs.
    gtol : float
        Stop when ``||dL/dtheta||_2 <= gtol``.
    ftol : float
        Stop when the relative loss decrease of a step is below ``ftol``.
    first_step : float
        Length of the first trial step (along -g, before any curvature is known).
    c1, c2 : float
        Weak-Wolfe constants.
    max_linesearch : int
        Objective evaluations per line search.
    """

    max_iter: int = 30
    history: int = 10
    gtol: float = 1e-6
    ftol: float = 1e-9
    first_step: float = 1e-2
    c1: float = 1e-4
    c2: float = 0.9
    max_linesearch: int = 20

    name = "lbfgs"
    loss_at_new_theta = True   #: a step's loss is evaluated at the theta it returns

    def shrink(self, st: LBFGSState, factor: float) -> LBFGSState:
        """``st`` with the next line search starting ``factor`` times shorter (after a
        rejected step)."""
        return replace(st, step_scale=st.step_scale * factor, info=StepInfo())

    def init(self, fun, theta, n_images: int) -> LBFGSState:
        res, warm = fun(theta, None, (None,) * n_images)
        return LBFGSState(theta=np.array(theta, dtype=np.float64), loss=res.loss, grad=res.grad,
                          warm=warm, last=res)

    def rebase(self, fun, st: LBFGSState, n_images: int) -> LBFGSState:
        """``st`` on another objective (a resume with other training data, model or inner
        solver): its loss and gradient evaluated again at its theta, as the line search and
        the stopping tests compare against them (one evaluation, cold). The curvature pairs
        are kept: they approximate the new objective's curvature as well as any."""
        res, warm = fun(st.theta, None, (None,) * n_images)
        return replace(st, loss=res.loss, grad=res.grad, warm=warm, last=res,
                       prev_loss=math.inf, info=StepInfo())

    def _direction(self, st: LBFGSState) -> np.ndarray:
        """-H g by the two-loop recursion (H0 = gamma I, gamma = s'y / y'y)."""
        q = st.grad.copy()
        alphas = []
        for s, y in zip(reversed(st.s_hist), reversed(st.y_hist)):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        s, y = st.s_hist[-1], st.y_hist[-1]
        q *= float(s @ y) / float(y @ y)
        for (s, y), a in zip(zip(st.s_hist, st.y_hist), reversed(alphas)):
            b = float(y @ q) / float(y @ s)
            q += (a - b) * s
        return -q

    def step(self, fun, st: LBFGSState) -> LBFGSState:
        g = st.grad
        gnorm = float(np.linalg.norm(g))
        d = self._direction(st) if st.s_hist else -g * (self.first_step / max(gnorm, 1e-300))
        gd = float(g @ d)
        s_hist, y_hist = st.s_hist, st.y_hist
        if not gd < 0:  # not a descent direction (stale curvature): restart from -g
            d = -g * (self.first_step / max(gnorm, 1e-300))
            gd, s_hist, y_hist = float(g @ d), (), ()
        a, lo, hi, n = float(st.step_scale), 0.0, math.inf, 0
        accepted = sufficient = None
        while n < self.max_linesearch:
            res, warm = fun(st.theta + a * d, None, st.warm)
            n += 1
            if not (math.isfinite(res.loss) and res.loss <= st.loss + self.c1 * a * gd):
                hi = a
            elif float(res.grad @ d) < self.c2 * gd:
                lo, sufficient = a, (a, res, warm)
            else:
                accepted = (a, res, warm)
                break
            a = 0.5 * (lo + hi) if math.isfinite(hi) else 2.0 * lo
        status = Status.ACCEPTED
        if accepted is None:
            if sufficient is None:
                return replace(st, info=StepInfo(n_evals=n, status=Status.LINESEARCH_FAILED))
            accepted, status = sufficient, Status.SUFFICIENT_DECREASE
        a, res, warm = accepted
        s, yv = a * d, res.grad - g
        if float(s @ yv) > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(yv)):
            s_hist = (s_hist + (s,))[-self.history:]
            y_hist = (y_hist + (yv,))[-self.history:]
        return LBFGSState(theta=st.theta + s, loss=res.loss, grad=res.grad, s_hist=s_hist,
                          y_hist=y_hist, iteration=st.iteration + 1, warm=warm,
                          prev_loss=st.loss, last=res,
                          info=StepInfo(n_evals=n, step_size=a, status=status))

    def terminate(self, st: LBFGSState) -> str | None:
        """Why to stop after ``st`` (None: go on)."""
        if st.info.status is Status.LINESEARCH_FAILED:
            return ("outer line search failed (the loss is not decreasing along the search "
                    "direction; inexact inner solves? tighten solver.gtol)")
        if st.iteration >= self.max_iter:
            return f"max_iter={self.max_iter} reached"
        if float(np.linalg.norm(st.grad)) <= self.gtol:
            return f"||grad|| <= gtol={self.gtol}"
        if (math.isfinite(st.prev_loss)
                and st.prev_loss - st.loss <= self.ftol * max(abs(st.prev_loss), 1e-300)):
            return f"relative loss decrease <= ftol={self.ftol}"
        return None


@dataclass(frozen=True)
class AdamState:
    theta: np.ndarray
    m: np.ndarray
    v: np.ndarray
    rng_state: dict
    iteration: int = 0
    warm: tuple = ()
    loss: float = math.nan
    grad: np.ndarray | None = None
    last: object = field(default=None, repr=False, compare=False)
    info: StepInfo = StepInfo()
    lr_scale: float = 1.0   #: multiplies ``Adam.lr`` (< 1 after a rejected step)


@dataclass(frozen=True)
class Adam:
    """Minibatch Adam over theta.

    Parameters
    ----------
    max_iter : int
        Outer iterations (one minibatch each).
    lr : float
        Step size (in parameter units; the filters' DCT coefficients are ~1/sigma).
    batch_size : int or None
        Images per minibatch (None: full batch).
    beta1, beta2, eps : float
        Adam's constants.
    seed : int
        Seed of the minibatch generator.
    """

    max_iter: int = 100
    lr: float = 1e-2
    batch_size: int | None = 4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0

    name = "adam"
    loss_at_new_theta = False  #: a step's loss is that of the minibatch at the previous theta

    def shrink(self, st: AdamState, factor: float) -> AdamState:
        """``st`` with a learning rate ``factor`` times smaller (after a rejected step)."""
        return replace(st, lr_scale=st.lr_scale * factor, info=StepInfo())

    def init(self, fun, theta, n_images: int) -> AdamState:
        theta = np.array(theta, dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        return AdamState(theta=theta, m=np.zeros_like(theta), v=np.zeros_like(theta),
                         rng_state=rng.bit_generator.state, warm=(None,) * n_images)

    def rebase(self, fun, st: AdamState, n_images: int) -> AdamState:
        """``st`` on another objective (see :meth:`OuterLBFGS.rebase`): the minibatches are
        drawn from the ``n_images`` of the new data; nothing to evaluate (a step does not use
        the stored loss and gradient), the moments are kept."""
        return replace(st, warm=(None,) * n_images, loss=math.nan, grad=None, last=None,
                       info=StepInfo())

    def step(self, fun, st: AdamState) -> AdamState:
        n = len(st.warm)
        rng = np.random.default_rng()
        rng.bit_generator.state = st.rng_state
        k = n if self.batch_size is None else min(int(self.batch_size), n)
        idx = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        res, warm = fun(st.theta, idx, st.warm)
        t = st.iteration + 1
        m = self.beta1 * st.m + (1 - self.beta1) * res.grad
        v = self.beta2 * st.v + (1 - self.beta2) * res.grad ** 2
        mhat, vhat = m / (1 - self.beta1 ** t), v / (1 - self.beta2 ** t)
        lr = self.lr * st.lr_scale
        theta = st.theta - lr * mhat / (np.sqrt(vhat) + self.eps)
        return AdamState(theta=theta, m=m, v=v, rng_state=rng.bit_generator.state, iteration=t,
                         warm=warm, loss=res.loss, grad=res.grad, last=res,
                         info=StepInfo(n_evals=1, step_size=lr), lr_scale=st.lr_scale)

    def terminate(self, st: AdamState) -> str | None:
        if st.iteration >= self.max_iter:
            return f"max_iter={self.max_iter} reached"
        return None


OPTIMIZERS = {"lbfgs": OuterLBFGS, "adam": Adam}


def make_optimizer(name: str, **kwargs):
    """Build an outer optimiser by name: ``make_optimizer("adam", lr=1e-2)``."""
    return build(OPTIMIZERS, "optimizer", name, **kwargs)
