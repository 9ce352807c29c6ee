"""The bound energy: one model's ``E(.; x, theta)`` at one input and one parameter vector.

What the solvers minimise and the gradient methods differentiate (the shape of optimistix's
``fn`` + ``args``, or jaxopt's ``optimality_fun`` with its parameters bound)::

    energy = model.bind(x, theta)                # E(.; x, theta), parallel kernels
    solve = sp.LBFGS().minimize(energy)          # SolveResult: the prediction y
    g, info = sp.ImplicitGradient().grad(energy, solve, dl_dy)   # dl/dtheta at that y

It holds the input on the model's computational domain (extended by ``pad`` mirrored pixels
when the model pads, see :mod:`structpred.models.base`), the checked parameters, and how its
kernels run: ``parallel=True`` (one image at a time, row-parallel kernels) or ``False``
(serial kernels: one image per thread, the batch objective's choice). Every solver and
gradient method goes through it, so none can call the wrong kernels for the thread layout.

A bound energy owns work buffers (the kernels write into them): use one per thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from structpred.validation import as_image, warn_if_unit_range


@dataclass(frozen=True, eq=False)
class BoundEnergy:
    """``E(y; x, theta)`` as a function of y alone (build it with ``model.bind(x, theta)``).

    Attributes
    ----------
    model : EnergyModel
    x : (H + 2 pad, W + 2 pad) float64 array, the input on the computational domain
    theta : (P,) float64 array, the parameters (checked)
    parallel : bool, whether the kernels are row-parallel (True) or run on the calling
        thread only (False)
    image_shape : (H, W), the shape of the image the user passed (the prediction's shape)
    """

    model: object
    x: np.ndarray = field(repr=False)
    theta: np.ndarray = field(repr=False)
    parallel: bool = True
    image_shape: tuple = ()

    # ------------------------------------------------------------------ domain
    @property
    def shape(self) -> tuple[int, int]:
        """The computational domain's shape (what ``y`` has inside solvers)."""
        return self.x.shape

    def start(self, y0=None) -> np.ndarray:
        """A starting point on the domain: ``x`` (default), or ``y0`` given on the image's
        shape (extended like ``x``) or on the domain's shape (a warm start kept from an
        earlier solve, copied as it is). Raises ValueError naming ``y0`` otherwise."""
        if y0 is None:
            return self.x.copy()
        y0 = as_image("y0", y0)
        if y0.shape == self.shape:
            return np.array(y0, dtype=np.float64)
        if y0.shape == tuple(self.image_shape):
            return self.model.extend(y0)
        raise ValueError(f"y0 has shape {y0.shape} but the image has shape {self.image_shape}; "
                         f"a warm start must have the image's shape or the extended shape "
                         f"{self.shape}")

    def crop(self, y) -> np.ndarray:
        """The image-shaped centre of a domain array (the prediction the loss sees)."""
        return self.model.crop(y)

    def extend_adjoint(self, g) -> np.ndarray:
        """The adjoint of :meth:`crop`: an image-shaped ``dl/dy`` on the domain (zero-padded)."""
        g = as_image("dl_dy", g)
        if g.shape != tuple(self.image_shape):
            raise ValueError(f"dl_dy has shape {g.shape} but the image has shape "
                             f"{tuple(self.image_shape)}")
        return self.model.extend_adjoint(g)

    # ----------------------------------------------------------------- kernels
    @cached_property
    def kernel(self):
        """``(fg, args)``: the Numba energy-gradient kernel ``fg(y_flat, g_flat, args)`` and
        its arguments, for the solvers' compiled loops (built once per bound energy)."""
        return self.model.objective(self.x, self.theta, serial=not self.parallel)

    def energy_and_grad(self, y) -> tuple[float, np.ndarray]:
        """``(E(y), grad_y E(y))`` for ``y`` on the domain."""
        fg, args = self.kernel
        y = np.ascontiguousarray(y, dtype=np.float64).reshape(self.shape)
        g = np.empty_like(y)
        return float(fg(y.ravel(), g.ravel(), args)), g

    def hessian(self, y):
        """``hvp(v) -> E_yy(y) v`` linearised at ``y`` (curvature precomputed once)."""
        return self.model.hessian(np.ascontiguousarray(y, dtype=np.float64), self.x, self.theta,
                                  serial=not self.parallel)

    def mixed(self, y, u) -> np.ndarray:
        """``E_wy^T u = d/dtheta <u, grad_y E(y)>``, a (P,) vector."""
        return self.model.mixed_product(np.ascontiguousarray(y, dtype=np.float64), self.x,
                                        self.theta, np.ascontiguousarray(u, dtype=np.float64),
                                        serial=not self.parallel)

    @cached_property
    def symbol(self):
        """The model's Fourier symbol of E_yy's quadratic part on this domain (a
        preconditioner; None if the model has none)."""
        return self.model.hessian_symbol(self.x, self.theta)


def bind(model, x, theta, *, parallel: bool = True) -> BoundEnergy:
    """``model``'s energy at input ``x`` (an (H, W) image) and parameters ``theta``; see
    :class:`BoundEnergy`. Raises ValueError naming ``x`` or ``theta`` if they are not valid."""
    x = as_image("x", x, min_shape=model.min_image_shape())
    warn_if_unit_range("x", x)
    theta = model.check_params(theta)
    return BoundEnergy(model, np.ascontiguousarray(model.extend(x), dtype=np.float64), theta,
                       bool(parallel), tuple(x.shape))


def as_energy(problem, x=None, theta=None) -> BoundEnergy:
    """``problem`` if it is a bound energy (then ``x`` and ``theta`` must be None), else
    ``problem.bind(x, theta)`` for a model: the two forms every solver's ``minimize``
    accepts (``minimize(model.bind(x, theta))`` and its shorthand ``minimize(model, x,
    theta)``)."""
    if isinstance(problem, BoundEnergy):
        if x is not None or theta is not None:
            raise TypeError("minimize(energy, ...): a bound energy already holds x and theta; "
                            "pass y0 by keyword")
        return problem
    if x is None or theta is None:
        raise TypeError("minimize(model, x, theta): give x and theta, or pass "
                        "model.bind(x, theta)")
    return bind(problem, x, theta)
