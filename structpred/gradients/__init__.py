"""Gradient methods: differentiate a loss through a solve's prediction (``grad(energy,
solve, dl_dy)``), and finite-difference checks.

* :class:`ImplicitGradient`: through the argmin (implicit function theorem; any argmin
  solver, e.g. LBFGS);
* :class:`UnrolledGradient`, :class:`TruncatedGradient`: through the T-th iterate of their
  heavy-ball solver (``gradient.solver``), by a reverse sweep.
"""
from structpred.gradients.check import (
    GradCheck, check_grad, check_loss_gradient, check_model_derivatives,
)
from structpred.gradients.implicit import (
    AdjointInfo, AdjointWarning, ImplicitGradient, conjugate_gradient,
)
from structpred.gradients.unrolled import TruncatedGradient, UnrolledGradient, UnrolledInfo
from structpred.registry import build

#: registry of gradient methods: ``name`` in the config -> class
GRADIENTS = {"implicit": ImplicitGradient, "unrolled": UnrolledGradient,
             "truncated": TruncatedGradient}


def make_gradient(name: str, **kwargs):
    """Build a gradient method by name: ``make_gradient("implicit", rtol=1e-8)``,
    ``make_gradient("unrolled", steps=50)``, ``make_gradient("truncated", truncate=20)``."""
    return build(GRADIENTS, "gradient", name, **kwargs)


__all__ = ["AdjointInfo", "AdjointWarning", "GRADIENTS", "GradCheck", "ImplicitGradient",
           "TruncatedGradient", "UnrolledGradient", "UnrolledInfo", "check_grad",
           "check_loss_gradient", "check_model_derivatives", "conjugate_gradient",
           "make_gradient"]
