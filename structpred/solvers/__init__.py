"""Inner solvers: minimise E(y; x, theta) over y."""
from structpred.registry import build
from structpred.solvers.lbfgs import LBFGS
from structpred.solvers.result import SolveResult, Status

SOLVERS = {"lbfgs": LBFGS}


def make_solver(name: str, **kwargs):
    """Build an inner solver by name: ``make_solver("lbfgs", gtol=1e-6)``."""
    return build(SOLVERS, "solver", name, **kwargs)


__all__ = ["LBFGS", "SOLVERS", "SolveResult", "Status", "make_solver"]
