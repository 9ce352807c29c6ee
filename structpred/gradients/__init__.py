"""Gradients of a loss through the argmin, and finite-difference checks."""
from structpred.gradients.check import (
    GradCheck, check_grad, check_loss_gradient, check_model_derivatives,
)
from structpred.gradients.implicit import (
    AdjointInfo, AdjointWarning, ImplicitGradient, conjugate_gradient,
)
from structpred.gradients.unrolled import (
    TruncatedGradient, UnrolledGradient, UnrolledInfo, estimate_lipschitz,
)
from structpred.registry import build

#: registry of gradient strategies: ``name`` in the config -> class
GRADIENTS = {"implicit": ImplicitGradient, "unrolled": UnrolledGradient,
             "truncated": TruncatedGradient}


def make_gradient(name: str, **kwargs):
    """Build a gradient strategy by name: ``make_gradient("implicit", rtol=1e-8)``,
    ``make_gradient("unrolled", steps=50)``, ``make_gradient("truncated", truncate=20)``."""
    return build(GRADIENTS, "gradient", name, **kwargs)


__all__ = ["AdjointInfo", "AdjointWarning", "GRADIENTS", "GradCheck", "ImplicitGradient",
           "TruncatedGradient", "UnrolledGradient", "UnrolledInfo", "check_grad",
           "check_loss_gradient", "check_model_derivatives", "conjugate_gradient",
           "estimate_lipschitz", "make_gradient"]
