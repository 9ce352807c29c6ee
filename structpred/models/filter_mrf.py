"""Filter-based MRFs: Fields of Experts and the Gaussian MRF.

Energy (denoising)::

    E(y; x, theta) = lam/2 ||y - x||^2 + sum_k alpha_k sum_p rho(z_kp),   z_k = F_k (*) y

with ``(*)`` the 'valid' correlation of :mod:`structpred.kernels.correlation`: a filter
response exists only where the whole m x m filter lies inside the (possibly extended, see
``boundary``) image, in training and in testing alike.

Parameters (the flat vector ``theta`` in this order):

* ``filters`` (K, nb): filter coefficients. With ``basis="dct"`` the filter is
  ``F_k = sum_j filters[k, j] B_j`` over the m*m - 1 DCT basis filters without DC
  (zero-mean filters, Chen et al. 2013); with ``basis="free"`` nb = m*m and
  ``filters[k]`` is the flattened filter itself.
* ``log_alpha`` (K,): alpha_k = exp(log_alpha_k) > 0, the expert weights.
* ``log_lambda`` (1,): lam = exp(log_lambda) > 0, the data-term weight.

The penalty is ``rho(z) = log(1 + c z^2)`` (Student-t, Fields of Experts; c = 1/2 as in
Roth & Black and the peer implementation, c = 1 in Chen et al. 2013) or ``c z^2 / 2``
(Gaussian MRF, whose argmin solves a linear system), or any other entry of
:data:`structpred.models.penalties.PENALTIES` (Charbonnier, generalised Charbonnier).

Options:

* ``learn_scale=True`` adds the group ``log_scale`` (1,): c = exp(log_scale) is learned
  (not for the quadratic penalty, where c only rescales alpha).
* ``boundary``, ``pad``: "valid" (default: responses only where the filter lies inside the
  image), or "symmetric" / "reflect": the input is mirrored ``pad`` pixels beyond each edge
  (default ``filter_size + 1``), the energy minimised on the extended image and the
  prediction cropped (see :mod:`structpred.models.base`). A task's mask is extended the
  same way; a blur acts on the extended image.
* ``task``: the observation model (:mod:`structpred.data.tasks`); the data term becomes
  ``lam/2 ||A y - x||^2`` with A the identity (denoise, the fused fast path), an inpainting
  mask or a known blur (zero-padded 'same' correlation). Gradient lam A^T (A y - x),
  Hessian lam A^T A, mixed product (log_lambda) lam <u, A^T (A y - x)>.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from structpred.data.tasks import make_task
from structpred.kernels.correlation import valid_shape
from structpred.kernels.dataterm import OP_BLUR, OP_IDENTITY, OP_MASK, data_grad
from structpred.kernels.filterbank import kernels_for
from structpred.kernels.kernel_args import EnergyArgs, HvpArgs, TaskEnergyArgs, TaskHvpArgs
from structpred.kernels.penalties import penalty_curv_row
from structpred.models.base import BOUNDARIES, EnergyModel
from structpred.models.dct import dct_filters
from structpred.models.penalties import get_penalty

BASES = ("dct", "free")


# ------------------------------------------------------------------------------ model
class FilterMRF(EnergyModel):
    """A filter-based MRF for denoising (see the module docstring for the energy).

    Parameters
    ----------
    num_filters : int
        K, the number of filters (experts).
    filter_size : int
        m, odd, >= 3: filters are m x m.
    penalty : str
        ``"student_t"`` (Fields of Experts) or ``"quadratic"`` (Gaussian MRF).
    penalty_scale : float, optional
        The shape ``c`` of the penalty; defaults to the penalty's default (1/2 for Student-t).
    basis : {"dct", "free"}
        Filters as coefficients of the DCT basis without DC, or as free m x m arrays.
    learn_scale : bool
        Learn the penalty shape c as the parameter group ``log_scale`` (1,).
    task : None, str or mapping
        The observation model (see :mod:`structpred.data.tasks`); None: denoising.
    boundary : {"valid", "symmetric", "reflect"}
        Boundary handling (module docstring); "valid" pads nothing.
    pad : int, optional
        Pixels of mirrored extension per edge (default ``filter_size + 1`` when
        ``boundary`` pads; must be None or 0 for "valid").
    """

    name = "filter_mrf"

    def __init__(self, num_filters: int = 8, filter_size: int = 3, *, penalty: str = "student_t",
                 penalty_scale: float | None = None, basis: str = "dct",
                 learn_scale: bool = False, task=None, boundary: str = "valid",
                 pad: int | None = None):
        if not isinstance(num_filters, (int, np.integer)) or num_filters < 1:
            raise ValueError(f"num_filters must be a positive integer, got {num_filters!r}")
        if (not isinstance(filter_size, (int, np.integer)) or filter_size < 3
                or filter_size % 2 == 0):
            raise ValueError(f"filter_size must be an odd integer >= 3, got {filter_size!r}")
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        self.penalty = get_penalty(penalty)
        scale = self.penalty.default_scale if penalty_scale is None else float(penalty_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"penalty_scale must be positive, got {penalty_scale!r}")
        self.num_filters = int(num_filters)
        self.filter_size = int(filter_size)
        self.penalty_scale = scale
        self._init_options(learn_scale, task, boundary, pad)
        self.basis_name = basis
        m = self.filter_size
        # (m*m, nb): filter_k (flattened) = basis @ coefficients_k
        self.basis = dct_filters(m).reshape(-1, m * m).T.copy() if basis == "dct" else np.eye(m * m)

    def _init_options(self, learn_scale, task, boundary="valid", pad=None):
        if learn_scale and not self.penalty.learnable_shape:
            raise ValueError(f"learn_scale: the {self.penalty.name} penalty has no shape "
                             "parameter to learn")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if boundary == "valid":
            if pad not in (None, 0):
                raise ValueError(f"pad={pad!r} needs a padding boundary ('symmetric' or "
                                 "'reflect'); 'valid' pads nothing")
            pad = 0
        elif pad is None:
            pad = self.filter_size + 1     # border responses see a full filter of mirror
        elif not (isinstance(pad, (int, np.integer)) and not isinstance(pad, bool) and pad >= 1):
            raise ValueError(f"pad must be a positive integer, got {pad!r}")
        self.boundary, self.pad = boundary, int(pad)
        self.learn_scale = bool(learn_scale)
        self.task = make_task(task)
        self._ops: dict = {}

    # ------------------------------------------------------------------ layout
    def param_shapes(self):
        K = self.num_filters
        out = {"filters": (K, self.basis.shape[1]), "log_alpha": (K,), "log_lambda": (1,)}
        if self.learn_scale:
            out["log_scale"] = (1,)
        return out

    def _options_config(self, cfg):
        # options at their defaults are left out: old model files and checkpoints describe
        # the same models as before these options existed
        if self.learn_scale:
            cfg["learn_scale"] = True
        if not self.task.identity:
            cfg["task"] = self.task.as_dict()
        if self.boundary != "valid":
            cfg["boundary"], cfg["pad"] = self.boundary, self.pad
        return cfg

    def config(self):
        return self._options_config(dict(
            num_filters=self.num_filters, filter_size=self.filter_size,
            penalty=self.penalty.name, penalty_scale=self.penalty_scale, basis=self.basis_name))

    def min_image_shape(self):
        return (self.filter_size, self.filter_size)

    def init_params(self, *, sigma: float = 25.0, filter_scale: float | None = None,
                    lam_scale: float = 4.0, seed: int = 1) -> np.ndarray:
        """DCT filters (the K smoothest, DC excluded) times ``filter_scale`` (default 1/sigma,
        so that a noise-only response is ~N(0, 1), at the knee of the Student-t penalty);
        if K > m*m - 1 the rest are random zero-mean unit-norm filters (rng ``seed``);
        alpha = 1 and lam = lam_scale / sigma^2. With the defaults this is exactly the
        peer implementation's starting point."""
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        m, K = self.filter_size, self.num_filters
        scale = 1.0 / sigma if filter_scale is None else float(filter_scale)
        F = dct_filters(m)[:K].reshape(-1, m * m)
        if K > len(F):
            R = np.random.default_rng(seed).normal(size=(K - len(F), m, m))
            R -= R.mean(axis=(1, 2), keepdims=True)
            R /= np.linalg.norm(R, axis=(1, 2), keepdims=True)
            F = np.concatenate([F, R.reshape(-1, m * m)])
        coeffs = np.linalg.lstsq(self.basis, (scale * F).T, rcond=None)[0].T
        return self.pack(self._with_scale({
            "filters": coeffs, "log_alpha": np.zeros(K),
            "log_lambda": np.array([np.log(lam_scale / sigma ** 2)])}))

    def _with_scale(self, params):
        if self.learn_scale:
            params["log_scale"] = np.array([np.log(self.penalty_scale)])
        return params

    # ------------------------------------------------------------ derived values
    def filter_bank(self, theta) -> np.ndarray:
        """The (K, m, m) filters of ``theta``."""
        p = self.unpack(theta)
        m = self.filter_size
        return np.ascontiguousarray((p["filters"] @ self.basis.T).reshape(-1, m, m))

    def weights(self, theta) -> tuple[np.ndarray, float]:
        """(alpha, lam) of ``theta``."""
        p = self.unpack(theta)
        return np.exp(p["log_alpha"]), float(np.exp(p["log_lambda"][0]))

    def scale(self, theta) -> float:
        """The penalty shape c (learned or fixed)."""
        if not self.learn_scale:
            return self.penalty_scale
        return float(np.exp(self.unpack(theta)["log_scale"][0]))

    def _operator(self, shape):
        """(op, mask, kernel, flipped kernel) of the task for images of ``shape``."""
        shape = (int(shape[0]), int(shape[1]))
        op = self._ops.get(shape)
        if op is None:
            empty = np.zeros((1, 1))
            if self.task.name == "inpaint":
                # a padding model sees only extended images: its mask is the image's mask
                # extended the same way as the observation (seeded by the image's shape)
                p = self.pad
                mask = self.task.mask((shape[0] - 2 * p, shape[1] - 2 * p))
                op = (OP_MASK, self.extend(mask), empty, empty)
            elif self.task.name == "deblur":
                k = self.task.blur_kernel()
                op = (OP_BLUR, empty, k, np.ascontiguousarray(k[::-1, ::-1]))
            else:
                op = (OP_IDENTITY, empty, empty, empty)
            self._ops[shape] = op
        return op

    def data_gradient(self, y, x, lam) -> tuple[float, np.ndarray]:
        """(lam/2 ||A y - x||^2, lam A^T (A y - x))."""
        y = np.ascontiguousarray(y, dtype=np.float64)
        x = np.ascontiguousarray(x, dtype=np.float64)
        if self.task.identity:
            r = y - x
            return 0.5 * lam * float(np.vdot(r, r)), lam * r
        op, M, k, kf = self._operator(y.shape)
        G = np.empty_like(y)
        e = data_grad(op, y, x, lam, M, k, kf, np.empty_like(y), G)
        return float(e), G

    def hessian_symbol(self, x, theta):
        """Fourier symbol of ``lam A^T A + sum_k alpha_k rho''(0) C_k^T C_k`` with periodic
        boundaries (rfft2 layout): the quadratic part of E_yy at responses near 0, a
        convolution. A^T A: 1 (denoise), |k^|^2 (deblur), the observed fraction (inpaint,
        a constant: the mask is not a convolution)."""
        shape = (int(np.shape(x)[0]), int(np.shape(x)[1]))
        F = self.filter_bank(theta)
        alpha, lam = self.weights(theta)
        d2 = np.zeros(1)
        penalty_curv_row(self.penalty.code, self.scale(theta), 1.0, d2)   # rho''(0)
        P = np.zeros((len(F),) + shape)
        m0, m1 = min(F.shape[1], shape[0]), min(F.shape[2], shape[1])
        P[:, :m0, :m1] = F[:, :m0, :m1]
        S = ((alpha * d2[0])[:, None, None] * np.abs(sfft.rfft2(P, axes=(1, 2))) ** 2).sum(0)
        if self.task.identity:
            data = lam
        elif self.task.name == "deblur":
            k = self.task.blur_kernel()
            Pk = np.zeros(shape)
            Pk[:min(k.shape[0], shape[0]), :min(k.shape[1], shape[1])] = \
                k[:shape[0], :shape[1]]
            data = lam * np.abs(sfft.rfft2(Pk)) ** 2
        else:
            data = lam * float(np.mean(self._operator(shape)[1]))
        S = S + data
        floor = 1e-12 * float(S.max())      # keeps the symbol positive (deblur: |k^| ~ 0)
        return np.maximum(S, floor)

    def _buffers(self, shape):
        Hv, Wv = valid_shape(shape, (self.filter_size, self.filter_size))
        return np.empty((self.num_filters, Hv, Wv)), np.empty(Hv)

    # ---------------------------------------------------------------- kernels
    def kernels(self):
        """The generated (size-specialised) kernel module of this model's filter size."""
        return kernels_for(self.filter_size)

    def _padded(self, shape):
        m = self.filter_size
        # zero-padded responses: the adjoint is then a plain 'valid' correlation
        return np.zeros((self.num_filters, shape[0] + m - 1, shape[1] + m - 1))

    def objective(self, x, theta, *, serial: bool = False):
        """``(fg, args)``; ``serial=True`` gives a kernel that runs on the calling thread only
        (for threads over images). ``args`` is an ``EnergyArgs`` (denoising) or a
        ``TaskEnergyArgs`` (a mask or a blur), see :mod:`structpred.kernels.kernel_args`."""
        alpha, lam = self.weights(theta)
        F = self.filter_bank(theta)
        Ff = np.ascontiguousarray(F[:, ::-1, ::-1])
        Hv, _ = valid_shape(x.shape, F.shape[1:])
        x = np.ascontiguousarray(x, dtype=np.float64)
        args = EnergyArgs(x=x, F=F, Ff=Ff, alpha=alpha, lam=lam, penalty=self.penalty.code,
                          scale=self.scale(theta), Rp=self._padded(x.shape), erow=np.empty(Hv),
                          drow=np.empty(x.shape[0]))
        mod = self.kernels()
        if self.task.identity:
            return (mod.energy_grad_serial if serial else mod.energy_grad), args
        op, M, k, kf = self._operator(x.shape)
        args = TaskEnergyArgs(*args, op=op, mask=M, blur=k, blur_flipped=kf,
                              T=np.empty(x.shape), G=np.empty(x.shape), zeros=np.zeros(x.shape))
        return (mod.energy_grad_task_serial if serial else mod.energy_grad_task), args

    def hessian(self, y, x, theta, *, serial: bool = False):
        mod = self.kernels()
        F = self.filter_bank(theta)
        alpha, lam = self.weights(theta)
        y = np.ascontiguousarray(y, dtype=np.float64)
        D, _ = self._buffers(y.shape)          # w_k rho''(z): computed once, reused by every E_yy v
        (mod.curvature_serial if serial else mod.curvature_pass)(
            y, F, alpha, self.penalty.code, self.scale(theta), D)
        args = HvpArgs(F=F, Ff=np.ascontiguousarray(F[:, ::-1, ::-1]), D=D, lam=lam,
                       Sp=self._padded(y.shape), zeros=np.zeros(y.shape),
                       drow=np.empty(y.shape[0]))
        if self.task.identity:
            kernel = mod.hvp_serial if serial else mod.hvp
        else:
            op, M, k, kf = self._operator(y.shape)
            args = TaskHvpArgs(*args, op=op, mask=M, blur=k, blur_flipped=kf,
                               T=np.empty(y.shape), Hd=np.empty(y.shape))
            kernel = mod.hvp_task_serial if serial else mod.hvp_task

        def hvp(v):
            v = np.ascontiguousarray(v, dtype=np.float64).reshape(y.shape)
            out = np.empty_like(v)
            kernel(v, out, args)
            return out
        return hvp

    def mixed_product(self, y, x, theta, u, *, serial: bool = False):
        # g(theta) = <u, grad_y E> = lam <u, A^T (A y - x)> + sum_k alpha_k <F_k (*) u, rho'(z_k)>,
        # z_k = F_k (*) y; its filter derivative has a term through F_k (*) u and one through z_k
        F = self.filter_bank(theta)
        alpha, lam = self.weights(theta)
        c = self.scale(theta)
        shapes = self.param_shapes()
        y = np.ascontiguousarray(y, dtype=np.float64)
        u = np.ascontiguousarray(u, dtype=np.float64)
        dF, ga, gs = np.zeros_like(F), np.zeros(self.num_filters), np.zeros(self.num_filters)
        mod = self.kernels()
        (mod.mixed_serial if serial else mod.mixed_pass)(
            y, u, F, self.penalty.code, c, "log_scale" in shapes, dF, ga, gs)
        out = {"log_alpha": alpha * ga}
        if "filters" in shapes:
            out["filters"] = (alpha[:, None, None] * dF).reshape(self.num_filters, -1) @ self.basis
        _, G = self.data_gradient(y, x, lam)       # lam A^T (A y - x)
        out["log_lambda"] = np.array([float(np.vdot(u, G))])
        if "log_scale" in shapes:
            out["log_scale"] = np.array([c * float(np.dot(alpha, gs))])
        return self.pack(out)


class FieldsOfExperts(FilterMRF):
    """Fields of Experts: K filters with the Student-t penalty alpha_k log(1 + c z^2)."""

    name = "foe"

    def __init__(self, num_filters: int = 8, filter_size: int = 3, *,
                 penalty_scale: float | None = None, basis: str = "dct",
                 learn_scale: bool = False, task=None, boundary: str = "valid",
                 pad: int | None = None):
        super().__init__(num_filters, filter_size, penalty="student_t",
                         penalty_scale=penalty_scale, basis=basis, learn_scale=learn_scale,
                         task=task, boundary=boundary, pad=pad)

    def config(self):
        cfg = super().config()
        cfg.pop("penalty")
        return cfg


class GaussianMRF(FilterMRF):
    """Gaussian MRF: quadratic penalty alpha_k c z^2 / 2; its argmin solves the linear system
    (lam I + sum_k alpha_k c C_k^T C_k) y = lam x."""

    name = "gmrf"

    def __init__(self, num_filters: int = 8, filter_size: int = 3, *,
                 penalty_scale: float | None = None, basis: str = "dct", task=None,
                 boundary: str = "valid", pad: int | None = None):
        super().__init__(num_filters, filter_size, penalty="quadratic",
                         penalty_scale=penalty_scale, basis=basis, task=task,
                         boundary=boundary, pad=pad)

    def config(self):
        cfg = super().config()
        cfg.pop("penalty")
        return cfg
