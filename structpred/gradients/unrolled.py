"""Unrolled and truncated gradients: differentiate T iterations of an inner solver.

Instead of differentiating the exact argmin (:class:`ImplicitGradient`), "back-optimisation"
(Domke 2012, *Generic methods for optimization-based modeling*) defines the prediction as
the T-th iterate of a fixed, differentiable inner algorithm and differentiates *that*
exactly, in reverse mode. The algorithm here is gradient descent with heavy-ball momentum::

    y_{-1} = y_0,   y_{t+1} = y_t - eta * grad_y E(y_t; theta) + beta * (y_t - y_{t-1})

for t = 0 .. T-1, and the prediction is y_T. With ``a_t = dl/dy_t`` (through every later
iterate) the reverse sweep is, since grad_y E's Jacobian in y is the symmetric E_yy::

    a_T = dl/dy_T,   a_{T+1} = 0
    a_t = (1 + beta) a_{t+1} - eta * E_yy(y_t) a_{t+1} - beta * a_{t+2}
    dl/dtheta = - eta * sum_t E_wy(y_t)^T a_{t+1}

so one backward step costs one Hessian-vector product and one mixed product at the stored
iterate y_t. y_0 (the input x, or a warm start) is a constant.

Truncation (Shaban et al. 2019) runs the same T forward steps but back-propagates through
only the last K of them, treating y_{T-K} and y_{T-K-1} as constants: cheaper and with
memory O(K), at the price of a bias that vanishes as the iterates converge and K grows.

Memory: the backward sweep needs the iterates in reverse order. Storing all K of them costs
K images; instead we store the state (y_t, y_{t-1}) every c steps during the forward pass
and, in the backward pass, recompute each segment of c iterates forward from its checkpoint
before sweeping it backwards (checkpointing; Griewank & Walther). Peak memory is about
2K/c + c images (smallest, ~sqrt(8K), at c = sqrt(2K), the default) for at most one extra
forward pass of gradient evaluations; ``checkpoint_every=1`` stores every iterate and
recomputes nothing. Reversing the heavy-ball step instead (y_{t-1} from y_t and y_{t+1})
would need no storage at all, but it divides by beta at every step, so floating-point error
grows like beta^-T (1e23 after 500 steps with beta = 0.9) unless the arithmetic is made
exact (Maclaurin et al. 2015); checkpointing is exact and simple.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from structpred.numerics import safe_norm
from structpred.solvers.result import SolveResult, Status


@dataclass(frozen=True)
class UnrolledInfo:
    """Diagnostics of one unrolled forward-backward pass.

    The attributes ``u``, ``iterations``, ``residual``, ``converged`` and ``method`` mirror
    :class:`AdjointInfo`, so that code logging either kind of gradient works unchanged.
    """

    steps: int              #: forward iterations T
    backprop_steps: int     #: iterations differentiated (K = T unless truncated)
    step_size: float        #: eta used (resolved when it was automatic)
    momentum: float         #: beta
    checkpoint_every: int   #: c
    grad_evals: int         #: gradient evaluations, forward + recomputation + final
    hvps: int               #: Hessian-vector products in the backward sweep
    stored_images: int      #: peak number of (H, W) iterates held for the backward sweep
    method: str             #: "unrolled" or "truncated"
    u: np.ndarray | None = field(default=None, repr=False)  #: no adjoint solve: always None

    @property
    def iterations(self) -> int:
        """Backward steps (the analogue of the adjoint solver's iterations)."""
        return self.backprop_steps

    @property
    def residual(self) -> float:
        """0: the reverse sweep differentiates the unrolled loss exactly."""
        return 0.0

    @property
    def converged(self) -> bool:
        """Always True: nothing in the backward sweep is iterative or approximate."""
        return True


def estimate_lipschitz(model, x, theta, y, *, iterations: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of E_yy(y) by power iteration (a slight under-estimate).

    Parameters
    ----------
    model : EnergyModel
    x, theta : the input image and parameters
    y : the image at which the Hessian is linearised
    iterations : power iterations (each one Hessian-vector product)
    seed : seed of the random start (fixed, so the estimate is deterministic)
    """
    hvp = model.hessian(y, x, theta)
    v = np.random.default_rng(seed).normal(size=y.shape)
    v /= safe_norm(v)
    lam = 0.0
    for _ in range(iterations):
        w = hvp(v)
        lam = safe_norm(w)      # scale-safe: sqrt(w . w) overflows for ||E_yy|| > 1e154
        if lam == 0.0:
            break
        v = w / lam
    return lam


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")


@dataclass(frozen=True)
class UnrolledGradient:
    """Exact gradient of the loss of the T-th heavy-ball iterate (back-optimisation).

    The strategy owns its inner iteration: the prediction is y_T, not the solver's argmin,
    and :meth:`predict_and_grad` ignores the ``solver`` it is given.

    Parameters
    ----------
    steps : int
        T, the number of forward iterations.
    step_size : float or None
        eta. None (default): ``1 / L`` with L the largest |eigenvalue| of E_yy at the start
        y_0, estimated by ``power_iterations`` steps of power iteration. The estimate is a
        constant of the unrolled map (it is not differentiated). For a quadratic energy L
        is exact; for the FoE the curvature along the path differs from that at y_0, which
        heavy ball tolerates up to ``eta * L < 2 (1 + beta)`` (a factor 3.8 at beta = 0.9).
    momentum : float
        beta in [0, 1); 0 gives plain gradient descent.
    truncate : int or None
        K: back-propagate through only the last K steps (None: all T).
    checkpoint_every : int or None
        c: store the state every c steps and recompute segments in the backward sweep.
        None: ``ceil(sqrt(2K))``, which minimises memory; 1: store every iterate.
    power_iterations : int
        Hessian-vector products spent on the automatic step size.
    warm_start : bool
        Start from the caller's ``y0`` when one is given (e.g. the previous prediction
        during training). False (default) always starts from x, so that the unrolled loss
        is the same function of theta at every call.
    """

    steps: int = 50
    step_size: float | None = None
    momentum: float = 0.9
    truncate: int | None = None
    checkpoint_every: int | None = None
    power_iterations: int = 30
    warm_start: bool = False

    method = "unrolled"
    #: the prediction is the T-th iterate (a fixed step budget), not a converged minimiser
    uses_argmin: ClassVar[bool] = False

    def __post_init__(self):
        _positive_int("steps", self.steps)
        _positive_int("truncate", self.truncate, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("power_iterations", self.power_iterations)
        if self.step_size is not None and not (np.isfinite(self.step_size)
                                               and self.step_size > 0):
            raise ValueError(f"step_size must be positive or None, got {self.step_size!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")

    # ------------------------------------------------------------------ set-up
    @property
    def backprop_steps(self) -> int:
        """K: the steps differentiated (``truncate`` capped at ``steps``)."""
        return self.steps if self.truncate is None else min(self.truncate, self.steps)

    @property
    def segment(self) -> int:
        """c: the checkpoint spacing actually used."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, math.ceil(math.sqrt(2 * self.backprop_steps)))

    def start(self, x, y0=None) -> np.ndarray:
        """The first iterate: ``y0`` if warm-starting and one is given, else ``x``."""
        return np.array(y0 if (self.warm_start and y0 is not None) else x, dtype=np.float64)

    def resolve(self, model, x, theta, y0=None) -> "UnrolledGradient":
        """This strategy with the automatic step size fixed to its value at (x, theta).

        The unrolled map is then a fixed function of theta, which is what finite
        differences of the unrolled loss must perturb.
        """
        xe, ye = model.extend_problem(x, y0 if (self.warm_start and y0 is not None) else None)
        return self._resolved_at(model, xe, theta, ye)

    def _resolved_at(self, model, x, theta, y):
        if self.step_size is not None:
            return self
        lip = estimate_lipschitz(model, x, theta, y, iterations=self.power_iterations)
        if not (np.isfinite(lip) and lip > 0):
            raise ValueError(f"automatic step size: the Hessian's largest eigenvalue estimate "
                             f"is {lip!r}; pass step_size explicitly")
        return replace(self, step_size=1.0 / lip)

    # ----------------------------------------------------------------- forward
    def unroll(self, model, x, theta, y0=None, y_prev=None) -> np.ndarray:
        """Run the T forward steps from the state (y0, y_prev) and return y_T.

        No storage and no gradient: for finite-difference checks and studies. ``y0``
        defaults to x and ``y_prev`` to ``y0`` (no initial velocity); unlike in
        :meth:`predict_and_grad`, a given ``y0`` is always used.
        """
        x, y0 = model.extend_problem(x, y0)     # a padding model: on the extended image
        y0, x, theta = model.check_inputs(y0, x, theta)
        y_prev = y0 if y_prev is None else model.extend_problem(model.crop(x), y_prev)[1]
        fixed = self._resolved_at(model, x, theta, y0)
        fg, args = model.objective(x, theta)
        return model.crop(fixed._advance(fg, args, y0, y_prev, 0, self.steps)[0])

    def _advance(self, fg, args, y, y_prev, t0, t1, keep=None):
        """Heavy-ball steps t0 .. t1-1 from state (y_t0, y_t0-1); returns (y_t1, y_t1-1, n).

        ``keep(t, y_t, y_{t-1})`` is called before each step (to store checkpoints).
        """
        eta, beta = self.step_size, self.momentum
        g = np.empty_like(y)
        for t in range(t0, t1):
            if keep is not None:
                keep(t, y, y_prev)
            energy = fg(y.ravel(), g.ravel(), args)
            if not np.isfinite(energy):     # free test, long before y itself overflows
                _diverged(eta, beta, t)
            # a new array each step: stored checkpoints are never overwritten
            y, y_prev = y - eta * g + beta * (y - y_prev), y
        if not np.all(np.isfinite(y)):
            _diverged(eta, beta, t1)
        return y, y_prev, t1 - t0

    # ---------------------------------------------------------------- backward
    def _backward(self, model, x, theta, fg, args, checkpoints, a_last):
        """Reverse sweep over the last K steps from the stored checkpoints.

        Returns (dl/dtheta, gradient evaluations spent recomputing, hvps, peak images).
        """
        eta, beta = self.step_size, self.momentum
        T, K, c = self.steps, self.backprop_steps, self.segment
        first = T - K
        grad = np.zeros(model.num_params)
        a1, a2 = a_last, np.zeros_like(a_last)          # a_{t+1}, a_{t+2}
        recomputed = hvps = 0
        peak = _unique_images(checkpoints) + 2
        for s in sorted(checkpoints, reverse=True):
            y_s, y_sm1 = checkpoints.pop(s)
            seg, e = [], min(s + c, T)
            y_end, _, n = self._advance(fg, args, y_s, y_sm1, s, e - 1,
                                        keep=lambda t, y, y_prev: seg.append(y))
            seg.append(y_end)
            recomputed += n
            peak = max(peak, _unique_images(checkpoints) + 2 + len(seg))
            for t in range(e - 1, s - 1, -1):
                y_t = seg.pop()
                grad -= eta * model.mixed_product(y_t, x, theta, a1)
                if t > first:                           # a_t is needed by step t-1
                    a0 = (1 + beta) * a1 - eta * model.hessian(y_t, x, theta)(a1) - beta * a2
                    hvps += 1
                    a1, a2 = a0, a1
        return grad, recomputed, hvps, peak

    # --------------------------------------------------------------- interface
    def predict_and_grad(self, model, x, theta, dl_dy, *, solver=None, y0=None, u0=None,
                         serial=False):
        """Prediction y_T and the exact gradient of ``l(y_T)`` in theta.

        Parameters
        ----------
        model : EnergyModel
        x, theta : the input image and parameters
        dl_dy : callable, y -> dl/dy at the prediction
        solver : ignored (the strategy owns its inner iteration)
        y0 : start of the iteration when ``warm_start`` is set
        u0 : ignored (there is no adjoint linear system to warm-start)
        serial : ignored (the unrolled sweep calls the model's parallel kernels, which are
            safe to call from several threads at once)

        Returns
        -------
        solve : SolveResult
            y_T with its energy and gradient norm; ``status`` is ``MAXITER`` (the fixed
            budget of T steps is the stopping rule, whatever the gradient norm).
        grad : ndarray, dl(y_T)/dtheta
        info : UnrolledInfo
        """
        # a padding model runs the iteration on the extended image; the loss sees the crop
        x, y_start = model.extend_problem(x, y0 if (self.warm_start and y0 is not None)
                                          else None)
        y_start, x, theta = model.check_inputs(np.array(y_start), x, theta)
        loss_grad = dl_dy
        dl_dy = (lambda ye: model.extend_adjoint(loss_grad(model.crop(ye)))) if model.pad \
            else loss_grad
        fixed = self._resolved_at(model, x, theta, y_start)
        fg, args = model.objective(x, theta)
        T, K, c = fixed.steps, fixed.backprop_steps, fixed.segment
        checkpoints = {}

        def keep(t, y, y_prev):
            if t >= T - K and (t - (T - K)) % c == 0:
                checkpoints[t] = (y, y_prev)
        y_T, _, _ = fixed._advance(fg, args, y_start, y_start, 0, T, keep=keep)
        g_T = np.empty_like(y_T)
        energy = fg(y_T.ravel(), g_T.ravel(), args)
        a_T = np.ascontiguousarray(dl_dy(y_T), dtype=np.float64)
        grad, recomputed, hvps, peak = fixed._backward(model, x, theta, fg, args,
                                                       checkpoints, a_T)
        solve = SolveResult(y=model.crop(y_T), energy=float(energy), grad_norm=safe_norm(g_T),
                            iterations=T, n_evals=T + 1, status=Status.MAXITER,
                            y_ext=y_T if model.pad else None)
        info = UnrolledInfo(steps=T, backprop_steps=K, step_size=float(fixed.step_size),
                            momentum=float(fixed.momentum), checkpoint_every=c,
                            grad_evals=T + 1 + recomputed, hvps=hvps, stored_images=peak,
                            method=self.method)
        return solve, grad, info


@dataclass(frozen=True)
class TruncatedGradient(UnrolledGradient):
    """:class:`UnrolledGradient` back-propagating through only the last ``truncate`` steps.

    The defaults run the forward iteration long (300 steps, near convergence for the FoE
    at moderate conditioning) and differentiate the last 30.
    """

    steps: int = 300
    truncate: int | None = 30

    method = "truncated"

    def __post_init__(self):
        super().__post_init__()
        if self.truncate is None:
            raise ValueError("truncate must be a positive integer for TruncatedGradient "
                             "(use UnrolledGradient to differentiate every step)")


def _diverged(eta, beta, t):
    raise FloatingPointError(f"the unrolled heavy-ball iteration diverged at step {t} "
                             f"(step_size={eta:.3e}, momentum={beta}): pass a smaller step_size")


def _unique_images(checkpoints) -> int:
    """Distinct arrays held by the checkpoints (consecutive states share an iterate)."""
    return len({id(a) for pair in checkpoints.values() for a in pair})
