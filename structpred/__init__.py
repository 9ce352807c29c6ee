"""structpred: train energy models by differentiating a loss through an argmin.

Quick tour::

    import structpred as sp
    model = sp.make_model("foe", num_filters=8, filter_size=3)
    theta = model.init_params(sigma=25)
    energy = model.bind(noisy, theta)                                # E(.; noisy, theta)
    solve = sp.LBFGS(gtol=1e-6).minimize(energy)                     # predict: the MAP
    g, info = sp.ImplicitGradient().grad(energy, solve, dl_dy)       # then differentiate
    pair = sp.loss_and_grad(model, theta, noisy, clean)              # both, with an MSE loss
    print(sp.check_loss_gradient(model, theta, noisy, clean))        # vs finite differences
    unrolled = sp.UnrolledGradient(steps=50)                         # back-optimisation:
    pair = sp.loss_and_grad(model, theta, noisy, clean, gradient=unrolled)  # its HeavyBall
"""
import os as _os

# MLflow's "Downloading artifacts" progress bars on every model load (a user may turn them
# back on by setting the variable to true)
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from structpred import _numba_cache  # noqa: E402  (before anything compiles a kernel)

_numba_cache.configure()

from structpred.gradients import (  # noqa: E402
    AdjointInfo, AdjointWarning, GradCheck, ImplicitGradient, TruncatedGradient,
    UnrolledGradient, UnrolledInfo, check_grad, check_loss_gradient, check_model_derivatives,
    make_gradient,
)
from structpred.losses import MSELoss, mse, psnr
from structpred.models import (
    EnergyModel, FieldsOfExperts, FilterMRF, GaussianMRF, make_model,
)
from structpred.models.energy import BoundEnergy
from structpred.objective import (  # noqa: E402
    BatchResult, PairResult, batch_loss_and_grad, loss_and_grad, loss_and_grad_at, resolve_pair,
)
from structpred.shipped import pretrained
from structpred.solvers import HeavyBall, LBFGS, SolveResult, Status, make_solver
from structpred.validation import PixelRangeWarning

__version__ = "0.1.0"

__all__ = [
    "AdjointInfo", "AdjointWarning", "BatchResult", "BoundEnergy", "EnergyModel", "HeavyBall", "FieldsOfExperts",
    "FilterMRF", "GaussianMRF", "GradCheck", "ImplicitGradient", "LBFGS", "MSELoss",
    "PairResult", "PixelRangeWarning", "SolveResult", "Status", "TruncatedGradient", "UnrolledGradient",
    "UnrolledInfo", "batch_loss_and_grad", "check_grad", "loss_and_grad_at", "resolve_pair",
    "check_loss_gradient", "check_model_derivatives", "loss_and_grad", "make_gradient",
    "make_model", "make_solver", "mse", "psnr", "pretrained",
]
