"""Numba kernels shared by the models: correlations with filter banks and penalties."""
from structpred.kernels import compile_notice as _compile_notice
from structpred.kernels.correlation import (
    correlate, correlate_adjoint, correlate_new, filter_gradient, valid_shape,
)

__all__ = ["correlate", "correlate_adjoint", "correlate_new", "filter_gradient", "valid_shape"]

_compile_notice.install()   # one line when a cold first call compiles (compile_notice.py)
