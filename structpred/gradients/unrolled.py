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

Prediction and differentiation are separate steps: the forward iteration is the solver
:class:`structpred.solvers.HeavyBall`, which records the checkpoints in its result; the
gradient methods here sweep them backwards. A method states its solver (``.solver``, built
from its fields) and refuses a solve that another solver produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from structpred.kernels.threads import owns_cores
from structpred.solvers.heavy_ball import HeavyBall, HeavyBallTrace, _positive_int
from structpred.solvers.result import Status


@dataclass(frozen=True)
class UnrolledInfo:
    """Diagnostics of one unrolled backward sweep.

    The attributes ``u``, ``iterations``, ``residual``, ``converged``, ``status`` and
    ``method`` mirror :class:`AdjointInfo`, so that code logging either kind of gradient
    works unchanged.
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

    @property
    def status(self) -> Status:
        """Always CONVERGED (see :attr:`converged`)."""
        return Status.CONVERGED


@dataclass(frozen=True)
class UnrolledGradient:
    """Exact gradient of the loss of the T-th heavy-ball iterate (back-optimisation).

    The prediction is the T-th iterate of :attr:`solver` (a :class:`HeavyBall` built from
    the first fields below), not an argmin; :meth:`grad` differentiates a solve of that
    solver and refuses any other.

    Parameters
    ----------
    steps, step_size, momentum, power_iterations, warm_start
        The forward iteration: see :class:`structpred.solvers.HeavyBall`.
    truncate : int or None
        K: back-propagate through only the last K steps (None: all T).
    checkpoint_every : int or None
        c: store the state every c steps and recompute segments in the backward sweep.
        None: ``ceil(sqrt(2K))``, which minimises memory; 1: store every iterate.
    """

    steps: int = 50
    step_size: float | None = None
    momentum: float = 0.9
    truncate: int | None = None
    checkpoint_every: int | None = None
    power_iterations: int = 30
    warm_start: bool = False

    method = "unrolled"

    def __post_init__(self):
        _positive_int("truncate", self.truncate, allow_none=True)
        self.solver      # noqa: B018 - validates the forward fields (HeavyBall's checks)

    @property
    def backprop_steps(self) -> int:
        """K: the steps differentiated (``truncate`` capped at ``steps``)."""
        return self.steps if self.truncate is None else min(self.truncate, self.steps)

    @property
    def solver(self) -> HeavyBall:
        """The solver whose prediction this method differentiates (checkpoints from T - K,
        every c steps)."""
        return HeavyBall(steps=self.steps, step_size=self.step_size, momentum=self.momentum,
                         power_iterations=self.power_iterations, warm_start=self.warm_start,
                         checkpoint_from=self.steps - self.backprop_steps,
                         checkpoint_every=self.checkpoint_every)

    @property
    def segment(self) -> int:
        """c: the checkpoint spacing actually used."""
        return self.solver.segment

    def default_solver(self) -> HeavyBall:
        return self.solver

    def check_solver(self, solver) -> None:
        """Refuse any solver but :attr:`solver` (a different T, momentum, warm start or
        fixed step size defines another prediction). TypeError naming both."""
        mine = self.solver
        ok = (isinstance(solver, HeavyBall) and solver.steps == mine.steps
              and solver.momentum == mine.momentum and solver.warm_start == mine.warm_start
              and (solver.step_size == mine.step_size if mine.step_size is not None
                   else solver.power_iterations == mine.power_iterations)
              # the state at T - K must be recorded (the sweep starts there)
              and solver.checkpoint_from <= mine.checkpoint_from
              and (mine.checkpoint_from - solver.checkpoint_from) % solver.segment == 0)
        if not ok:
            raise TypeError(f"{type(self).__name__} differentiates the prediction of {mine!r}; "
                            f"got a solve of {solver!r}. Pass solver=gradient.solver (or "
                            f"none), or set the iteration through the gradient's fields")

    def prediction_map(self, solve):
        """``(f, description)``: ``f(energy)`` is the prediction as a function of the
        parameters that :meth:`grad` differentiates exactly, at the constants ``solve``
        chose (the step size): all T steps from the same start (unrolled), or the last K
        steps from the state ``(y_{T-K}, y_{T-K-1})`` of ``solve``, held constant
        (truncated). What ``check_loss_gradient`` takes finite differences of."""
        self.check_solver(solve.solver)
        fixed, T, K = solve.solver, solve.solver.steps, self.backprop_steps
        if K == T:
            return (lambda energy: fixed.minimize(energy).y,
                    f"{type(self).__name__} of the T={T} iterate of {fixed!r}")
        y_k, y_km1 = solve.trace.checkpoints[T - K]
        return (lambda energy: energy.crop(fixed.advance(energy, y_k, y_km1, T - K, T)[0]),
                f"{type(self).__name__} of the last K={K} of T={T} steps of {fixed!r}, from "
                f"its state at step {T - K} held constant")

    # ---------------------------------------------------------------- backward
    @owns_cores
    def grad(self, energy, solve, dl_dy, *, u0=None):
        """``(dl(y_T)/dtheta, UnrolledInfo)``: the exact gradient of the loss of the
        heavy-ball prediction in ``solve`` (a result of :attr:`solver`'s ``minimize`` on
        ``energy``), by a reverse sweep over its last K steps.

        ``dl_dy``: (H, W), the loss gradient at ``solve.y``; ``u0``: ignored (there is no
        adjoint system to warm-start). Raises TypeError for a solve of another solver.
        """
        self.check_solver(solve.solver)
        trace = solve.trace
        if not isinstance(trace, HeavyBallTrace):
            raise TypeError("the solve carries no heavy-ball trace to differentiate")
        fixed = solve.solver
        eta, beta = fixed.step_size, fixed.momentum
        T, K = fixed.steps, self.backprop_steps
        first = T - K
        a1 = np.ascontiguousarray(energy.extend_adjoint(dl_dy), dtype=np.float64)  # a_{t+1}
        a2 = np.zeros_like(a1)                                                      # a_{t+2}
        grad = np.zeros(energy.model.num_params)
        checkpoints = dict(trace.checkpoints)
        c = trace.every
        recomputed = hvps = 0
        peak = _unique_images(checkpoints) + 2
        for s in sorted(checkpoints, reverse=True):
            y_s, y_sm1 = checkpoints.pop(s)
            e = min(s + c, T)
            if e <= first or s >= T:
                continue
            seg = []
            y_end, _ = fixed.advance(energy, y_s, y_sm1, s, e - 1,
                                     keep=lambda t, y, y_prev: seg.append(y))
            seg.append(y_end)
            recomputed += e - 1 - s
            peak = max(peak, _unique_images(checkpoints) + 2 + len(seg))
            for t in range(e - 1, max(s, first) - 1, -1):
                y_t = seg[t - s]
                grad -= eta * energy.mixed(y_t, a1)
                if t > first:                           # a_t is needed by step t-1
                    a0 = (1 + beta) * a1 - eta * energy.hessian(y_t)(a1) - beta * a2
                    hvps += 1
                    a1, a2 = a0, a1
        info = UnrolledInfo(steps=T, backprop_steps=K, step_size=float(eta),
                            momentum=float(beta), checkpoint_every=c,
                            grad_evals=T + 1 + recomputed, hvps=hvps, stored_images=peak,
                            method=self.method)
        return grad, info


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


def _unique_images(checkpoints) -> int:
    """Distinct arrays held by the checkpoints (consecutive states share an iterate)."""
    return len({id(a) for pair in checkpoints.values() for a in pair})
