"""The result of an inner solve."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Status(enum.IntEnum):
    """Why an inner solve stopped (the integer is the Numba solver's info code)."""

    CONVERGED = 0           #: the gradient-norm test holds
    MAXITER = 1             #: maxiter reached before the test held
    LINESEARCH_FAILED = 2   #: no step with sufficient decrease along a descent direction
    NONFINITE = 3           #: the energy or its gradient is NaN or Inf at the start


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
