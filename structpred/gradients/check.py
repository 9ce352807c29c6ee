"""Central finite-difference checks, for the library's tests and for users' own models.

Differences are fourth-order central (Richardson extrapolation of two central differences,
truncation error O(eps^4)), so a moderate step keeps both truncation and rounding error
far below the errors a wrong derivative makes.

``check_grad`` compares any analytic gradient with central differences; the two helpers
built on it check a model's three derivatives (E_y, E_yy v, E_wy^T u) and the implicit
gradient of the whole loss, per parameter group. Errors are relative:
``||analytic - fd|| / ||fd||`` over the coordinates (or directions) checked.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from structpred.kernels.threads import owns_cores


@dataclass(frozen=True)
class GradCheck:
    """Relative errors per group, with both sides of the comparison."""

    errors: dict[str, float]
    analytic: dict[str, np.ndarray]
    numeric: dict[str, np.ndarray]
    checked: str = ""     #: what was differentiated (check_loss_gradient: the pair)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    def __str__(self) -> str:
        return ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    den = max(np.linalg.norm(b), np.linalg.norm(a), np.finfo(float).tiny)
    return float(np.linalg.norm(a - b) / den)


def central_difference(f, eps: float):
    """Fourth-order central difference of ``f(s)`` at s = 0 (f returns a float or array)."""
    d1 = f(eps) - f(-eps)
    d2 = f(2 * eps) - f(-2 * eps)
    return (8 * np.asarray(d1) - np.asarray(d2)) / (12 * eps)


def check_grad(f: Callable[[np.ndarray], float], grad, theta, *, eps: float = 1e-6,
               groups: Mapping[str, slice] | None = None, directions: int | None = None,
               seed: int = 0) -> GradCheck:
    """Compare ``grad`` (a vector, or a callable returning one) with central differences of f.

    Parameters
    ----------
    f : callable, theta -> float
    grad : array or callable theta -> array
    theta : the point (flat vector)
    eps : the finite-difference step
    groups : name -> slice of theta; one error per group (default: one group "all")
    directions : None to difference every coordinate of each group; an integer n to use n
        random unit directions inside each group (cheaper for large groups)
    """
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(grad(theta) if callable(grad) else grad, dtype=np.float64)
    if g.shape != theta.shape:
        raise ValueError(f"gradient shape {g.shape} != parameter shape {theta.shape}")
    groups = {"all": slice(None)} if groups is None else groups
    rng = np.random.default_rng(seed)
    errors, analytic, numeric = {}, {}, {}
    for name, sl in groups.items():
        idx = np.arange(theta.size)[sl]
        if directions is None:
            dirs = np.eye(theta.size)[idx]
        else:
            dirs = np.zeros((directions, theta.size))
            dirs[:, idx] = rng.normal(size=(directions, idx.size))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        fd = np.array([central_difference(lambda s: f(theta + s * d), eps) for d in dirs])
        an = dirs @ g
        errors[name], analytic[name], numeric[name] = _rel(an, fd), an, fd
    return GradCheck(errors, analytic, numeric)


def check_model_derivatives(model, y, x, theta, *, eps: float = 1e-5, seed: int = 0,
                            directions: int | None = None) -> GradCheck:
    """Check E_y, E_yy v and E_wy^T u of ``model`` at (y, x, theta) by central differences.

    Groups of the result: ``grad_y`` (directional derivative along 3 random directions),
    ``hvp`` (a random v, the whole image), and ``mixed/<group>`` for each parameter group.
    """
    y, x, theta = model.check_inputs(y, x, theta)
    rng = np.random.default_rng(seed)
    errors, analytic, numeric = {}, {}, {}

    _, g = model.energy_and_grad(y, x, theta)
    V = rng.normal(size=(3,) + y.shape)
    an = np.array([np.vdot(g, v) for v in V])
    fd = np.array([central_difference(lambda s: model.energy(y + s * v, x, theta), eps)
                   for v in V])
    errors["grad_y"], analytic["grad_y"], numeric["grad_y"] = _rel(an, fd), an, fd

    v = rng.normal(size=y.shape)
    an = model.hvp(y, x, theta, v)
    fd = central_difference(lambda s: model.grad(y + s * v, x, theta), eps)
    errors["hvp"], analytic["hvp"], numeric["hvp"] = _rel(an, fd), an.ravel(), fd.ravel()

    u = rng.normal(size=y.shape)
    mixed = check_grad(lambda th: float(np.vdot(u, model.grad(y, x, th))),
                       model.mixed(y, x, theta, u), theta, eps=eps,
                       groups=model.param_slices(), directions=directions, seed=seed)
    for k in mixed.errors:
        errors[f"mixed/{k}"] = mixed.errors[k]
        analytic[f"mixed/{k}"] = mixed.analytic[k]
        numeric[f"mixed/{k}"] = mixed.numeric[k]
    return GradCheck(errors, analytic, numeric)


def check_loss_gradient(model, theta, noisy, clean, *, solver=None, gradient=None, loss=None,
                        eps: float = 1e-4, directions: int | None = None,
                        seed: int = 0) -> GradCheck:
    """Check the gradient of the loss of the prediction against central differences of that
    loss, re-running the prediction for every perturbed theta. One error per parameter
    group; ``GradCheck.checked`` says which (solver, gradient) pair was checked.

    The finite differences differentiate exactly the prediction that the (solver, gradient)
    pair defines, as the gradient method states it (``gradient.prediction_map(solve)``):

    * the implicit gradient with an argmin solver (default ``LBFGS(gtol=1e-10)``): every
      perturbed solve is warm-started from the unperturbed minimiser (the same basin of a
      non-convex energy) and refined by Newton steps (:func:`newton_polish`), since the
      differences are only as accurate as the argmins;
    * the unrolled gradient with its heavy-ball solver (default: ``gradient.solver``): the
      same T steps from the same start, with the step size fixed at the value the
      unperturbed solve chose (``SolveResult.solver``); the truncated gradient: the last K
      steps from the unperturbed state at step T - K, held constant (its definition).

    Raises TypeError for a pair that is not allowed (as :func:`structpred.loss_and_grad`).
    """
    from structpred.gradients.implicit import ImplicitGradient
    from structpred.losses import MSELoss
    from structpred.objective import loss_and_grad, resolve_pair
    from structpred.solvers import LBFGS

    gradient = ImplicitGradient() if gradient is None else gradient
    if solver is None and isinstance(gradient.default_solver(), LBFGS):
        solver = LBFGS(gtol=1e-10)
    solver, gradient = resolve_pair(solver, gradient)
    loss = MSELoss() if loss is None else loss
    base = loss_and_grad(model, theta, noisy, clean, solver=solver, gradient=gradient, loss=loss)
    predict, checked = gradient.prediction_map(base.solve)
    out = check_grad(lambda th: loss.value(predict(model.bind(noisy, th)), clean), base.grad,
                     theta, eps=eps, groups=model.param_slices(), directions=directions,
                     seed=seed)
    return replace(out, checked=checked)


@owns_cores
def newton_polish(energy, res, *, steps: int = 3) -> np.ndarray:
    """The argmin of ``res`` (a solve of the bound ``energy``) refined by up to ``steps``
    Newton steps (CG on E_yy to a relative residual of 1e-14), cropped to the image.

    Finite differences of the loss are only as accurate as the perturbed argmins: L-BFGS's
    line search runs out of float64 resolution in the energy near ||grad E|| ~ 1e-8 on
    ill-conditioned cases (a padded FoE inpainting case stopped at 9.3e-9 and its check
    showed 5e-4 errors at eps 1e-4; after polishing 1e-6), where Newton's steps, which use
    only gradients, still converge quadratically. A step that meets negative curvature or
    does not reduce ||grad E|| is not taken."""
    from structpred.gradients.implicit import conjugate_gradient
    y = np.array(res.y_domain, dtype=np.float64)
    g = energy.energy_and_grad(y)[1]
    gnorm = np.linalg.norm(g)
    for _ in range(steps):
        d, info, _, _ = conjugate_gradient(energy.hessian(y), g, rtol=1e-14,
                                           maxiter=10 * y.size)
        if info == 2:
            break
        trial = y - d
        tg = energy.energy_and_grad(trial)[1]
        tnorm = np.linalg.norm(tg)
        if not tnorm < gnorm:
            break
        y, g, gnorm = trial, tg, tnorm
    return energy.crop(y)
