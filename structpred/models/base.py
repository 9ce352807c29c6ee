"""The energy-model interface.

An energy model scores an output image ``y`` for an input ``x`` under a flat parameter
vector ``theta``. A concrete model writes, in one place:

* :meth:`EnergyModel.param_shapes`: the named parameter groups (their order is the layout
  of ``theta``);
* :meth:`EnergyModel.init_params`: a sensible starting point;
* :meth:`EnergyModel.objective`: a Numba energy-gradient kernel ``fg(y_flat, g_flat, args)``
  and its argument tuple; the inner solvers run entirely in Numba on it;
* :meth:`EnergyModel.hessian`: the Hessian ``E_yy`` linearised at ``y`` as a callable
  ``v -> E_yy v`` (curvature precomputed once, reused by every CG iteration);
* :meth:`EnergyModel.mixed_product`: ``E_wy^T u = d/dtheta <u, grad_y E(y; x, theta)>``.

These three are the hooks a model implements; nothing calls them but the bound energy,
:meth:`EnergyModel.bind` (:class:`structpred.models.energy.BoundEnergy`), which solvers and
gradient methods take, and which passes ``serial`` (the kernels' thread layout) for them.

Everything else (validation, packing, the solvers, the implicit gradient, training) is
generic and works for any model that provides these pieces.

Boundaries. A model may solve on an *extended* domain: ``boundary="symmetric"`` (or
``"reflect"``) mirrors the input ``pad`` pixels beyond each edge, the energy is minimised
over the extended image and the prediction is its central crop (pad, solve, crop). Border
pixels then see filter responses on both sides, as in the interior; under ``"valid"`` (no
padding) they are under-regularised, which costs about 0.4 dB on BSD68 for a trained 48x7x7
FoE (issue 12: 28.06 dB 'valid' vs 28.47 dB padded on 10 images at sigma 25). The solvers
and gradient methods work on the bound energy (:meth:`EnergyModel.bind`), which holds the
extended input and crops the prediction; the kernels only ever see the extended arrays, so the derivatives are those of the same
energy on a larger image, and the loss's gradient enters the adjoint through the crop's
adjoint (:meth:`EnergyModel.extend_adjoint`, zero padding).
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

import numpy as np

from structpred.kernels.threads import owns_cores
from structpred.models.energy import BoundEnergy, bind
from structpred.validation import as_image, as_vector, same_shape

#: boundary handling of the filter models (``np.pad`` modes; "valid" is no padding)
BOUNDARIES = ("valid", "symmetric", "reflect")


class EnergyModel(abc.ABC):
    """Base class of all energy models ``E(y; x, theta)`` over (H, W) images."""

    #: registry name (``make_model(name, ...)``)
    name: str = ""
    #: boundary handling (see the module docstring); a model that pads sets both
    boundary: str = "valid"
    pad: int = 0

    # ------------------------------------------------------------------ layout
    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Ordered mapping from parameter-group name to its shape."""

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s, dtype=int) for s in self.param_shapes().values()))

    def param_slices(self) -> dict[str, slice]:
        """Where each parameter group lies in the flat vector."""
        out, start = {}, 0
        for name, shape in self.param_shapes().items():
            size = int(np.prod(shape, dtype=int))
            out[name] = slice(start, start + size)
            start += size
        return out

    def pack(self, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate named parameter groups into one flat float64 vector."""
        shapes = self.param_shapes()
        missing = set(shapes) - set(params)
        extra = set(params) - set(shapes)
        if missing or extra:
            raise ValueError(f"parameter groups must be exactly {list(shapes)}; "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        parts = []
        for name, shape in shapes.items():
            p = np.asarray(params[name], dtype=np.float64)
            if p.shape != shape:
                raise ValueError(f"parameter group {name!r}: expected shape {shape}, got {p.shape}")
            parts.append(p.ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector into named parameter groups (views, not copies)."""
        theta = self.check_params(theta)
        shapes = self.param_shapes()
        return {name: theta[sl].reshape(shapes[name]) for name, sl in self.param_slices().items()}

    @abc.abstractmethod
    def init_params(self, **kwargs) -> np.ndarray:
        """A sensible flat starting parameter vector."""

    def config(self) -> dict:
        """Constructor arguments (enough to rebuild the model with ``make_model``)."""
        return {}

    # ---------------------------------------------------------------- kernels
    @abc.abstractmethod
    def objective(self, x: np.ndarray, theta: np.ndarray, *,
                  serial: bool = False) -> tuple[Callable, tuple]:
        """Return ``(fg, args)``: ``fg(y_flat, g_flat, args)`` writes grad_y E into
        ``g_flat`` and returns E. ``fg`` is a Numba function (the solvers call it in
        nopython mode); ``args`` holds the prepared parameters and work buffers.
        ``serial=True`` asks for a kernel that runs on the calling thread only (the batch
        objective runs one image per thread); a model without one may ignore it."""

    @abc.abstractmethod
    def hessian(self, y: np.ndarray, x: np.ndarray, theta: np.ndarray, *,
                serial: bool = False) -> Callable:
        """Return ``hvp(v) -> E_yy v`` for (H, W) arrays ``v``, linearised at ``y``
        (``serial`` as in :meth:`objective`)."""

    @abc.abstractmethod
    def mixed_product(self, y: np.ndarray, x: np.ndarray, theta: np.ndarray,
                      u: np.ndarray, *, serial: bool = False) -> np.ndarray:
        """Return the flat vector ``d/dtheta <u, grad_y E(y; x, theta)>`` (= E_wy^T u);
        ``serial`` as in :meth:`objective`."""

    def hessian_symbol(self, x: np.ndarray, theta: np.ndarray):
        """The Fourier symbol (rfft2 layout, shape (H, W // 2 + 1), positive) of a spatially
        constant, periodic approximation of E_yy for images of x's shape, used as a
        preconditioner (:mod:`structpred.solvers.precond`); None (the default): the model
        has none, and the solvers run unpreconditioned."""
        return None

    def min_image_shape(self) -> tuple[int, int]:
        """The smallest image the model accepts (e.g. the filter size)."""
        return (1, 1)

    # ------------------------------------------------------------- boundaries
    def extend(self, img: np.ndarray) -> np.ndarray:
        """``img`` (H, W) on the model's computational domain (H + 2 pad, W + 2 pad),
        mirrored by ``np.pad(mode=boundary)``; ``img`` itself under 'valid'."""
        if not self.pad:
            return img
        return np.ascontiguousarray(np.pad(img, self.pad, mode=self.boundary))

    def crop(self, img: np.ndarray) -> np.ndarray:
        """The (H, W) centre of an extended image (the inverse of :meth:`extend`)."""
        if not self.pad:
            return img
        p = self.pad
        return np.ascontiguousarray(img[p:-p, p:-p])

    def extend_adjoint(self, g: np.ndarray) -> np.ndarray:
        """The adjoint of :meth:`crop`: ``g`` (H, W) zero-padded to the extended domain
        (how a loss on the cropped prediction enters the adjoint system)."""
        if not self.pad:
            return g
        return np.pad(np.asarray(g, dtype=np.float64), self.pad)

    def bind(self, x, theta, *, parallel: bool = True) -> BoundEnergy:
        """``E(.; x, theta)``: this energy at input ``x`` ((H, W), pixels in 0..255) and
        parameters ``theta``, the object solvers minimise and gradient methods
        differentiate (:class:`structpred.models.energy.BoundEnergy`). ``parallel=False``
        binds the serial kernels (one image per thread). Raises ValueError naming ``x`` or
        ``theta``."""
        return bind(self, x, theta, parallel=parallel)

    # -------------------------------------------------------- checked public API
    def check_params(self, theta) -> np.ndarray:
        return as_vector("theta", theta, self.num_params)

    def check_inputs(self, y, x, theta):
        """Validate and convert (y, x, theta); raises ValueError with the argument's name."""
        x = as_image("x", x, min_shape=self.min_image_shape())
        y = as_image("y", y, min_shape=self.min_image_shape())
        same_shape(("y", "x"), y, x)
        return y, x, self.check_params(theta)

    @owns_cores
    def energy_and_grad(self, y, x, theta) -> tuple[float, np.ndarray]:
        """E(y; x, theta) and grad_y E on x's domain (no padding: the energy of the given
        arrays as they are)."""
        y, x, theta = self.check_inputs(y, x, theta)
        return BoundEnergy(self, x, theta, True, x.shape).energy_and_grad(y)

    def energy(self, y, x, theta) -> float:
        return self.energy_and_grad(y, x, theta)[0]

    def grad(self, y, x, theta) -> np.ndarray:
        return self.energy_and_grad(y, x, theta)[1]

    @owns_cores
    def hvp(self, y, x, theta, v) -> np.ndarray:
        """E_yy(y) v."""
        y, x, theta = self.check_inputs(y, x, theta)
        v = as_image("v", v)
        same_shape(("v", "y"), v, y)
        return BoundEnergy(self, x, theta, True, x.shape).hessian(y)(v)

    @owns_cores
    def mixed(self, y, x, theta, u) -> np.ndarray:
        """E_wy^T u, checked (see :meth:`mixed_product`)."""
        y, x, theta = self.check_inputs(y, x, theta)
        u = as_image("u", u)
        same_shape(("u", "y"), u, y)
        return BoundEnergy(self, x, theta, True, x.shape).mixed(y, u)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
