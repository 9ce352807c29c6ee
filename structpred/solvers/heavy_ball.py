"""Heavy-ball gradient descent with a fixed step budget: the prediction of the unrolled and
truncated gradients (Domke 2012, "back-optimisation").

    y_{-1} = y_0,   y_{t+1} = y_t - eta * grad_y E(y_t) + beta * (y_t - y_{t-1}),   t < T

The prediction is y_T whatever the gradient norm there, so the status is always
``Status.MAXITER`` (the budget is the stopping rule). The solve records what a reverse sweep
needs (:class:`HeavyBallTrace`: the state ``(y_t, y_{t-1})`` every ``checkpoint_every``
steps from ``checkpoint_from`` on), so that :class:`structpred.gradients.UnrolledGradient`
differentiates exactly this prediction without running it again.

The automatic step size ``eta = 1 / L`` (L: E_yy's largest eigenvalue at y_0, by power
iteration) is a constant of the map, not differentiated: ``SolveResult.solver`` is this
solver with the value filled in, the one that finite differences of the prediction re-run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from structpred.kernels.threads import owns_cores
from structpred.numerics import safe_norm
from structpred.models.energy import as_energy
from structpred.solvers.result import SolveResult, Status


def estimate_lipschitz(energy, y, *, iterations: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of E_yy(y) by power iteration (a slight under-estimate).

    ``energy``: a bound energy (``model.bind(x, theta)``); ``y`` on its domain;
    ``iterations``: Hessian-vector products; ``seed``: of the random start (deterministic).
    """
    hvp = energy.hessian(y)
    v = np.random.default_rng(seed).normal(size=energy.shape)
    v /= safe_norm(v)
    lam = 0.0
    for _ in range(iterations):
        w = hvp(v)
        lam = safe_norm(w)      # scale-safe: sqrt(w . w) overflows for ||E_yy|| > 1e154
        if lam == 0.0:
            break
        v = w / lam
    return lam


@dataclass(frozen=True)
class HeavyBallTrace:
    """What a heavy-ball solve keeps for its reverse sweep."""

    checkpoints: dict            #: t -> (y_t, y_{t-1}), every ``every`` steps from ``first``
    first: int                   #: the first recorded step
    every: int                   #: the spacing c


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")


@dataclass(frozen=True)
class HeavyBall:
    """T steps of gradient descent with heavy-ball momentum (see the module docstring).

    Parameters
    ----------
    steps : int
        T, the number of iterations (the prediction is y_T).
    step_size : float or None
        eta. None (default): ``1 / L`` with L the largest |eigenvalue| of E_yy at y_0
        (``power_iterations`` steps of power iteration). For a quadratic energy L is exact;
        for the FoE the curvature along the path differs from that at y_0, which heavy ball
        tolerates up to ``eta * L < 2 (1 + beta)`` (a factor 3.8 at beta = 0.9).
    momentum : float
        beta in [0, 1); 0 gives plain gradient descent.
    power_iterations : int
        Hessian-vector products spent on the automatic step size.
    warm_start : bool
        Start from the caller's ``y0`` when one is given (e.g. the previous prediction
        during training). False (default) always starts from x, so that the prediction is
        the same function of theta at every call.
    checkpoint_from, checkpoint_every : int
        Record the state ``(y_t, y_{t-1})`` at t = checkpoint_from + j * checkpoint_every
        for the reverse sweep (None: ``ceil(sqrt(2 (T - checkpoint_from)))``, which
        minimises its memory). The unrolled gradient sets both for its truncation.
    """

    steps: int = 50
    step_size: float | None = None
    momentum: float = 0.9
    power_iterations: int = 30
    warm_start: bool = False
    checkpoint_from: int = 0
    checkpoint_every: int | None = None

    #: the prediction is the T-th iterate, not a minimiser: the implicit gradient refuses it
    is_argmin: ClassVar[bool] = False

    def __post_init__(self):
        _positive_int("steps", self.steps)
        _positive_int("power_iterations", self.power_iterations)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        if not (isinstance(self.checkpoint_from, (int, np.integer))
                and 0 <= self.checkpoint_from <= self.steps):
            raise ValueError(f"checkpoint_from must be an integer in [0, steps], got "
                             f"{self.checkpoint_from!r}")
        if self.step_size is not None and not (np.isfinite(self.step_size)
                                               and self.step_size > 0):
            raise ValueError(f"step_size must be positive or None, got {self.step_size!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")

    @property
    def segment(self) -> int:
        """c: the checkpoint spacing actually used."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, math.ceil(math.sqrt(2 * max(1, self.steps - self.checkpoint_from))))

    def first_point(self, energy, y0=None) -> np.ndarray:
        """y_0 on the domain: ``y0`` if warm-starting and one is given, else x."""
        return energy.start(y0 if (self.warm_start and y0 is not None) else None)

    @owns_cores
    def resolved(self, energy, y0=None) -> "HeavyBall":
        """This solver with the automatic step size fixed to its value at y_0 (the map that
        finite differences of the prediction must re-run)."""
        if self.step_size is not None:
            return self
        lip = estimate_lipschitz(energy, self.first_point(energy, y0),
                                 iterations=self.power_iterations)
        if not (np.isfinite(lip) and lip > 0):
            raise ValueError(f"automatic step size: the Hessian's largest eigenvalue estimate "
                             f"is {lip!r}; pass step_size explicitly")
        return replace(self, step_size=1.0 / lip)

    @owns_cores
    def minimize(self, problem, x=None, theta=None, *, y0=None) -> SolveResult:
        """y_T from y_0 (x, or ``y0`` with ``warm_start``); ``problem`` is a bound energy
        (``model.bind(x, theta)``), or a model followed by ``x`` and ``theta``. Status
        ``MAXITER`` always; ``solver`` the resolved solver, ``trace`` the checkpoints."""
        energy = as_energy(problem, x, theta)
        fixed = self.resolved(energy, y0)
        y_start = fixed.first_point(energy, y0)
        first, c = fixed.checkpoint_from, fixed.segment
        checkpoints = {}

        def keep(t, y, y_prev):
            if t >= first and (t - first) % c == 0:
                checkpoints[t] = (y, y_prev)
        y_T, _ = fixed.advance(energy, y_start, y_start, 0, fixed.steps, keep=keep)
        e, g = energy.energy_and_grad(y_T)
        return SolveResult(y=energy.crop(y_T), energy=e, grad_norm=safe_norm(g),
                           iterations=fixed.steps, n_evals=fixed.steps + 1,
                           status=Status.MAXITER, y_ext=y_T if energy.model.pad else None,
                           solver=fixed,
                           trace=HeavyBallTrace(checkpoints, first, c))

    @owns_cores
    def iterate(self, energy, y, y_prev=None, steps: int | None = None) -> np.ndarray:
        """The bare iteration: ``steps`` (default T) heavy-ball steps from the state
        ``(y, y_prev)`` (domain arrays; ``y_prev`` defaults to ``y``, no initial velocity),
        returning the last iterate on the domain. For studies and finite-difference checks
        of truncated sweeps; the step size must be resolved (see :meth:`resolved`)."""
        if self.step_size is None:
            raise ValueError("iterate needs a fixed step_size: use solver.resolved(energy)")
        y = energy.start(y)
        y_prev = y if y_prev is None else energy.start(y_prev)
        return self.advance(energy, y, y_prev, 0, self.steps if steps is None else steps)[0]

    def advance(self, energy, y, y_prev, t0, t1, keep=None):
        """Steps t0 .. t1-1 from the state (y_t0, y_t0-1); returns (y_t1, y_t1-1).
        ``keep(t, y_t, y_{t-1})`` is called before each step (to store checkpoints)."""
        eta, beta = self.step_size, self.momentum
        fg, args = energy.kernel
        g = np.empty_like(y)
        for t in range(t0, t1):
            if keep is not None:
                keep(t, y, y_prev)
            value = fg(y.ravel(), g.ravel(), args)
            if not np.isfinite(value):     # free test, long before y itself overflows
                _diverged(eta, beta, t)
            # a new array each step: stored checkpoints are never overwritten
            y, y_prev = y - eta * g + beta * (y - y_prev), y
        if not np.all(np.isfinite(y)):
            _diverged(eta, beta, t1)
        return y, y_prev


def _diverged(eta, beta, t):
    raise FloatingPointError(f"the heavy-ball iteration diverged at step {t} "
                             f"(step_size={eta:.3e}, momentum={beta}): pass a smaller step_size")
