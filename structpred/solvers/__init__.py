"""Solvers: produce the prediction ``y`` from a bound energy, ``minimize(energy, y0=) ->
SolveResult``.

* :class:`LBFGS`: the argmin ``y* = argmin_y E`` (what the implicit gradient differentiates);
* :class:`HeavyBall`: T steps of heavy-ball gradient descent (the prediction of the
  unrolled and truncated gradients).
"""
from structpred.registry import build
from structpred.solvers.heavy_ball import HeavyBall, HeavyBallTrace, estimate_lipschitz
from structpred.solvers.lbfgs import LBFGS
from structpred.solvers.result import SolveResult, Status

SOLVERS = {"lbfgs": LBFGS, "heavy_ball": HeavyBall}


def make_solver(name: str, **kwargs):
    """Build a solver by name: ``make_solver("lbfgs", gtol=1e-6)``,
    ``make_solver("heavy_ball", steps=50)``."""
    return build(SOLVERS, "solver", name, **kwargs)


__all__ = ["HeavyBall", "HeavyBallTrace", "LBFGS", "SOLVERS", "SolveResult", "Status",
           "estimate_lipschitz", "make_solver"]
