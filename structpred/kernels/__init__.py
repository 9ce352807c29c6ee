"""Numba kernels shared by the models: correlations with filter banks and penalties."""
from structpred.kernels.correlation import (
    correlate, correlate_adjoint, correlate_new, filter_gradient, valid_shape,
)

__all__ = ["correlate", "correlate_adjoint", "correlate_new", "filter_gradient", "valid_shape"]
