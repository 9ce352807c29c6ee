"""The result of an inner solve, and the one status vocabulary."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Status(enum.IntEnum):
    """Why a solve or a step stopped: the one status vocabulary of the engine.

    Reported by the inner solvers (``SolveResult.status``), the adjoint solve
    (``AdjointInfo.status``) and the outer optimiser's steps (``StepInfo.status``); each
    member says which of them use it. The integers 0-3 are the codes the Numba L-BFGS loop
    returns (its template uses these members, not bare integers).
    """

    CONVERGED = 0           #: the stopping test holds (inner solve, adjoint solve)
    MAXITER = 1             #: the iteration budget ran out first (inner, adjoint); the
    #:                        unrolled heavy-ball solver always stops here (its fixed budget)
    LINESEARCH_FAILED = 2   #: no step with sufficient decrease (inner solve, outer step)
    NONFINITE = 3           #: NaN or Inf in the energy or its gradient (inner solve)
    NEGATIVE_CURVATURE = 4  #: CG met p^T E_yy p <= 0; MINRES took over and converged (adjoint)
    ACCEPTED = 5            #: the step met the strong Wolfe conditions (outer step)
    SUFFICIENT_DECREASE = 6  #: the step was accepted on sufficient decrease only (outer step)


@dataclass(frozen=True)
class SolveResult:
    """Outcome of ``solver.minimize``: the minimiser and how it was reached."""

    y: np.ndarray
    energy: float
    grad_norm: float
    iterations: int
    n_evals: int
    status: Status
    #: the minimiser on the model's computational domain, when the model pads the image
    #: (``boundary`` other than 'valid'); ``y`` is its central crop. None: same as ``y``.
    y_ext: np.ndarray | None = field(default=None, repr=False)
    #: the solver that produced it, with every constant it chose from the data filled in
    #: (the heavy-ball step size): re-running it at other parameters gives the same
    #: prediction map (what ``check_loss_gradient`` differentiates)
    solver: object = field(default=None, repr=False)
    #: what a gradient method needs from the solve beyond y (the heavy-ball checkpoints)
    trace: object = field(default=None, repr=False)

    @property
    def y_domain(self) -> np.ndarray:
        """The solution on the computational domain (what the adjoint linearises at and
        what a warm start reuses): ``y_ext`` if the model pads, else ``y``."""
        return self.y if self.y_ext is None else self.y_ext

    @property
    def converged(self) -> bool:
        return self.status == Status.CONVERGED

    @property
    def message(self) -> str:
        return (f"{self.status.name.lower()} after {self.iterations} iterations "
                f"({self.n_evals} energy evaluations), ||grad E|| = {self.grad_norm:.3e}")
