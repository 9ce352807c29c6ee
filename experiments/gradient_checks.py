"""The finite-difference errors behind the derivative tests, as numbers rather than pass/fail.

The tests assert bounds (1e-6 for E_y, E_yy v and E_wy^T u; 1e-4 for the loss gradient
through the argmin); this prints how far below the bound each case is, on exactly the
tests' cases (the lists are imported from ``tests/``, so the two never drift apart):

* ``model``: ``check_model_derivatives`` (central differences, eps 1e-5) for every model and
  image shape of ``tests/test_derivatives.py``;
* ``loss``: ``check_loss_gradient`` (inner solve to 1e-10, adjoint to 1e-12) for every model
  and task of ``tests/test_models_tasks.py``'s implicit-gradient check.

Usage (needs the test extras, ``pip install -e ".[test]"``)::

    python experiments/gradient_checks.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

import structpred as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import perturbed_params, random_case  # noqa: E402
from test_derivatives import MODELS, SHAPES  # noqa: E402
from test_models_tasks import IMPLICIT_CASES, skimage_photo  # noqa: E402


def model_rows():
    for name, kwargs in MODELS:
        for shape in SHAPES:
            model = sp.make_model(name, **kwargs)
            x, _ = random_case(shape, seed=1)
            theta = perturbed_params(model, seed=2)
            y = x + 5 * np.random.default_rng(3).normal(size=shape)
            check = sp.check_model_derivatives(model, y, x, theta, eps=1e-5)
            yield f"model {name} {kwargs} {shape}", check


def loss_rows():
    clean = skimage_photo("camera")[200:214, 240:253]
    for name, kwargs, eps in IMPLICIT_CASES:
        model = sp.make_model(name, **kwargs)
        noisy = model.task.degrade(clean, 10.0, np.random.default_rng(0))
        theta = perturbed_params(model, seed=5, scale=0.2)
        check = sp.check_loss_gradient(model, theta, noisy, clean, solver=sp.LBFGS(gtol=1e-10),
                                       gradient=sp.ImplicitGradient(rtol=1e-12), eps=eps)
        yield f"loss {name} {kwargs} eps {eps:g}", check


def main():
    warnings.simplefilter("ignore", RuntimeWarning)
    for label, check in (*model_rows(), *loss_rows()):
        worst = max(check.errors, key=check.errors.get)
        print(f"{check.max_error:9.1e}  ({worst})  {label}")


if __name__ == "__main__":
    main()
