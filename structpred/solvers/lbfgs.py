"""L-BFGS with a strong-Wolfe line search, the whole loop in Numba.

Convergence test (documented, checked before every iteration)::

    ||grad_y E(y_k)||_2 <= max(gtol, rtol * ||grad_y E(y_0)||_2)

Line search: Nocedal & Wright, Algorithms 3.5/3.6 (bracketing, then zoom by safeguarded
cubic interpolation), first trial step 1 (the quasi-Newton step, accepted at once on most
iterations, so close to one energy evaluation per iteration). While the energy still
descends, the next trial is where the secant of phi' vanishes (within 2x-64x the step), not
a fixed x4: on the first iteration, whose unit-length trial is far too short, that takes
2-3 evaluations instead of 6. Near a minimum the Armijo test compares energies that agree
to the last bits; there the approximate Wolfe test of Hager & Zhang (2005) is used
instead, which relies on the directional derivative: ``phi(a) <= phi(0) + eps_f`` and
``(2 c1 - 1) phi'(0) >= phi'(a)``, with ``eps_f = 1e3 * machine eps * |phi(0)|``. Two
energies both within ``eps_f`` of ``phi(0)`` are never compared with each other (their
order is rounding noise): there the sign of ``phi'`` brackets the step and the zoom uses
the secant of ``phi'`` (issue 17a: without this the line search failed at ||grad E|| ~ 1e-6
on 1 of the first 16 Train400 images at the hard-case scales, and spent 9% more
evaluations on the others). This is what lets the solver reach gradient norms around 1e-6
on ill-conditioned models where SciPy's L-BFGS-B stalls.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from structpred.kernels import codegen
from structpred.kernels.threads import owns_cores
from structpred.models.energy import as_energy
from structpred.solvers.precond import check_options, select_symbol
from structpred.solvers.result import SolveResult, Status

_TEMPLATE = "structpred.solvers._lbfgs_template"
_LOOPS: dict = {}
_LOCK = threading.Lock()
_NO_MONITOR = np.zeros(0)          # the loop's "no monitor" (never written: size 0)


def _depends_on():
    from structpred.solvers import precond, result
    # the Status members are compiled in as constants; the preconditioner's jitted FFT is
    # called from the loop (Numba's cache of the loop does not see an edit of precond.py)
    return (result.__file__, precond.__file__)


def loop_module_name(module: str, kernel: str) -> str:
    """The name (with its digest) of the loop bound to ``module.kernel``, a kernel of a
    generated module, without loading it (``python -m structpred.kernels list``)."""
    src = codegen.render(_TEMPLATE, {"fg": f"from {module} import {kernel} as fg"})
    return codegen.module_name("structpred_lbfgs", src, _depends_on())


def loop_for(fg):
    """The L-BFGS loop ``lbfgs_minimize(args, y0, gtol, rtol, maxiter, history, c1, c2,
    max_evals, pinv, monitor)`` (``pinv``: 1 / a Fourier symbol, or an empty array;
    ``monitor``: a :class:`~structpred.solvers.monitor.SolveMonitor`'s buffer, or an empty
    array) compiled
    against the energy-gradient kernel ``fg``; returns ``(y, E, ||grad||, iterations,
    energy evaluations, status)`` (``status`` a :class:`Status` member). ``args`` is passed
    to ``fg`` as it is: a namedtuple (the filter models) or a plain tuple (a user's model).

    A kernel from a generated module (the filter-bank kernels) is imported by name into a
    copy of the loop rendered from :mod:`structpred.solvers._lbfgs_template`
    (:func:`structpred.kernels.codegen.render`), which Numba caches on disk: a new process
    loads it instead of compiling it again. Any other kernel (a user's model) is bound in
    memory (the same rendering, ``fg`` a global of the module), compiled once per process.
    """
    loop = _LOOPS.get(fg)
    if loop is not None:
        return loop
    with _LOCK:
        loop = _LOOPS.get(fg)
        if loop is not None:
            return loop
        owner = sys.modules.get(getattr(fg, "__module__", None) or "")
        name = getattr(fg, "__name__", "")
        if getattr(owner, codegen.MARKER, False) and getattr(owner, name, None) is fg:
            src = codegen.render(_TEMPLATE, {"fg": f"from {owner.__name__} import {name} as fg"})
            loop = codegen.load("structpred_lbfgs", src, _depends_on()).lbfgs_minimize
        else:
            src = codegen.render(_TEMPLATE, {"fg": ""})
            loop = codegen.in_memory("structpred_lbfgs_bound", src, {"fg": fg}).lbfgs_minimize
        _LOOPS[fg] = loop
        return loop


@dataclass(frozen=True)
class LBFGS:
    """Limited-memory BFGS for the inner problem ``min_y E(y; x, theta)``.

    Parameters
    ----------
    gtol : float
        Absolute tolerance on ``||grad_y E||_2`` (the peer and the papers' convention).
    rtol : float
        Relative tolerance: stop when ``||grad|| <= rtol * ||grad at y0||``. The effective
        tolerance is ``max(gtol, rtol * ||grad_0||)``.
    maxiter : int
        Maximum number of iterations; reaching it is reported (``Status.MAXITER``).
    history : int
        Number of stored curvature pairs.
    c1, c2 : float
        Wolfe constants (sufficient decrease, curvature), ``0 < c1 < c2 < 1``.
    max_linesearch : int
        Maximum energy evaluations in one line search.
    preconditioner : {"auto", "fft", None}
        ``"fft"``: the initial inverse Hessian of every iteration is ``(s.y / y.M y) M``
        with ``M`` the inverse of the model's Fourier symbol of E_yy's quadratic part
        (:meth:`EnergyModel.hessian_symbol`; two FFTs per iteration, jitted);
        ``None``: ``(s.y / y.y) I``; ``"auto"`` (default): ``"fft"`` when the symbol's
        condition number is at least ``precond_min_cond``. The stopping rule is unchanged.
    precond_min_cond : float
        The threshold of ``"auto"`` (the default cases' symbols: 3-13; the hard cases',
        unit-norm filters: 600-1200).

    The defaults (``gtol=1e-6``, ``maxiter=5000``) are for one accurate solve (the API, the
    derivative checks). The training config ``structpred/configs/solver/lbfgs.yaml`` uses ``gtol=1e-4``,
    ``maxiter=2000`` on purpose: training repeats the solve for every image at every outer
    evaluation, and the outer optimiser needs only a few digits of the gradient (README,
    "Tolerances").
    """

    gtol: float = 1e-6
    rtol: float = 0.0
    maxiter: int = 5000
    history: int = 10
    c1: float = 1e-4
    c2: float = 0.9
    max_linesearch: int = 30
    preconditioner: str | None = "auto"
    precond_min_cond: float = 100.0

    def __post_init__(self):
        if not (self.gtol >= 0 and self.rtol >= 0 and (self.gtol > 0 or self.rtol > 0)):
            raise ValueError(f"gtol and rtol must be >= 0 and not both 0, got {self.gtol}, "
                             f"{self.rtol}")
        if not (isinstance(self.maxiter, (int, np.integer)) and self.maxiter >= 0):
            raise ValueError(f"maxiter must be a non-negative integer, got {self.maxiter!r}")
        if not (isinstance(self.history, (int, np.integer)) and self.history >= 1):
            raise ValueError(f"history must be a positive integer, got {self.history!r}")
        if not 0 < self.c1 < self.c2 < 1:
            raise ValueError(f"need 0 < c1 < c2 < 1, got c1={self.c1}, c2={self.c2}")
        if not self.max_linesearch >= 2:
            raise ValueError(f"max_linesearch must be >= 2, got {self.max_linesearch}")
        check_options(self.preconditioner, self.precond_min_cond)

    #: the prediction is a minimiser (what the implicit gradient differentiates)
    is_argmin: ClassVar[bool] = True

    def _inverse_symbol(self, energy):
        """1 / the model's Fourier symbol if this solve is preconditioned, else an empty
        array (the loop's "no preconditioner")."""
        S = select_symbol(energy, self.preconditioner, self.precond_min_cond)
        return np.zeros((0, 0)) if S is None else np.ascontiguousarray(1.0 / S)

    @owns_cores
    def minimize(self, problem, x=None, theta=None, *, y0=None, monitor=None) -> SolveResult:
        """Minimise the energy over y from ``y0`` (default: x).

        ``problem`` is a bound energy (``model.bind(x, theta)``), or a model followed by
        ``x`` and ``theta`` (shorthand for binding them). A model that pads (``boundary``
        other than 'valid') is solved on the extended image and ``SolveResult.y`` is the
        crop to the image's shape (``y_ext`` the full solution); ``y0`` may have the image's
        shape or the extended one. The kernels run as the energy was bound (parallel, or
        serial for one image per thread).

        ``monitor``: a :class:`structpred.solvers.monitor.SolveMonitor` (reset here) that the
        loop writes at every iteration (iteration, ||grad E||, E, evaluations, and the
        tolerance), for another thread to watch the solve; the result is the same bit for
        bit with or without it."""
        energy = as_energy(problem, x, theta)
        y0e = energy.start(y0)
        fg, args = energy.kernel
        pinv = self._inverse_symbol(energy)
        buf = _NO_MONITOR if monitor is None else monitor.reset().buffer
        y, f, gnorm, it, nev, status = loop_for(fg)(
            args, y0e.ravel(), float(self.gtol), float(self.rtol), int(self.maxiter),
            int(self.history), float(self.c1), float(self.c2), int(self.max_linesearch), pinv,
            buf)
        y = y.reshape(energy.shape)
        return SolveResult(y=energy.crop(y), energy=float(f), grad_norm=float(gnorm),
                           iterations=int(it), n_evals=int(nev), status=Status(status),
                           y_ext=y if energy.model.pad else None, solver=self)
