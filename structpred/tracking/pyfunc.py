"""The trained model as an MLflow pyfunc: ``mlflow.pyfunc.load_model(uri).predict(image)``.

``predict`` takes one image, an (H, W) or (H, W, C) array of any dtype (or a pandas DataFrame
of H rows and W columns), or a list of images, and returns the denoised image(s) in the
input's dtype, range and layout. Pixel values and channels follow the one rule of
:mod:`structpred.data.images` (README "Your own images"): uint8 0..255, uint16 0..65535,
float 0..1 or 0..255 by their values, other integers if within 0..255, otherwise an error;
the parameters ``range`` ("auto" or "LO,HI") and ``gray`` (convert colour to luminance)
are given as ``predict(image, params={"range": "0,1", "gray": True})``. A bad image raises an
``MlflowException`` (HTTP 400 when served) with one line saying what to do.

The logged model is self-contained: the model file travels as the artifact ``model_file``,
structpred's own code as ``code/structpred`` (``code_paths``), and the requirements pin the
versions it was trained with, so ``mlflow models serve -m runs:/<id>/model`` builds its
environment from the package index alone (structpred itself is not on it). Its signature
declares the parameters; the input schema is left open on purpose: MLflow's tensor schemas
fix one dtype and number of dimensions (they would refuse uint8, (H, W, 3) with ``gray``,
lists, and DataFrames of any width), and the rule above checks every input instead.

Served, the formats MLflow documents all work for one image: ``{"inputs": [[...], ...]}``
(rows of pixels), ``{"instances": [[...], ...]}``, and ``{"dataframe_split": {"columns":
[...], "data": [[...], ...]}}`` (H rows, W columns); ``"params": {"range": "0,1"}`` beside them.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from structpred.tracking.model_io import MODEL_FILE

#: the parameters of ``predict`` (name, MLflow type, default)
PARAMS = (("range", "string", "auto"), ("gray", "boolean", False))


class StructpredPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps :class:`structpred.tracking.model_io.TrainedModel` for MLflow."""

    def load_context(self, context):
        from structpred.tracking.model_io import read_model_file
        self.trained = read_model_file(context.artifacts["model_file"])

    # The hint np.ndarray is one MLflow accepts without inferring a schema from it (the
    # logged signature is explicit); without a hint MLflow warns at class definition.
    def predict(self, context, model_input: np.ndarray, params=None):
        """Denoise one image ((H, W) or (H, W, C) array, or a DataFrame of H rows) or a list
        of images; ``params``: ``range`` ("auto" or "LO,HI"), ``gray`` (bool)."""
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        from structpred.data.images import PYFUNC_HINTS, ImageError, parse_range
        params = dict(params or {})
        try:
            value_range = parse_range(params.get("range"), "params['range']")
            if hasattr(model_input, "to_numpy"):          # a DataFrame: rows x columns
                model_input = model_input.to_numpy()
            return self.trained.predict(model_input, value_range=value_range,
                                        gray=bool(params.get("gray") or False),
                                        hints=PYFUNC_HINTS)
        except (ImageError, ValueError) as exc:
            raise MlflowException(str(exc).splitlines()[0],
                                  error_code=INVALID_PARAMETER_VALUE) from None


def signature():
    """The logged signature: the parameters, no input schema (see the module docstring)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec
    return ModelSignature(inputs=None, outputs=None,
                          params=ParamSchema([ParamSpec(n, t, d) for n, t, d in PARAMS]))


def input_example() -> np.ndarray:
    """A small gray image in 0..255 (float64), the example logged with the model."""
    yy, xx = np.mgrid[0:16, 0:16]
    return np.round(128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0), 1)


def requirements() -> list[str]:
    """Pinned versions of what structpred needs at prediction time (MLflow adds itself)."""
    from importlib.metadata import PackageNotFoundError, version
    reqs = []
    for name in ("numpy", "scipy", "numba", "threadpoolctl"):
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:   # pragma: no cover - all are dependencies
            reqs.append(name)
    return reqs


def _package_copy(tmp) -> str:
    """A copy of the structpred package without caches, for ``code_paths``."""
    import shutil
    from pathlib import Path

    import structpred
    src = Path(structpred.__file__).resolve().parent
    dst = Path(tmp) / "structpred"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi",
                                                            "*.nbc"))
    return str(dst)


def log_pyfunc(model_file, name: str = "model"):
    """Log ``model_file`` as a self-contained pyfunc model of the active run (the model file,
    structpred's code, pinned requirements, a signature and an input example); returns the
    ModelInfo."""
    import logging
    import tempfile
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # the cloudpickle notice is expected: our class is importable
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return mlflow.pyfunc.log_model(name=name, python_model=StructpredPyfunc(),
                                           artifacts={"model_file": str(model_file)},
                                           code_paths=[_package_copy(tmp)],
                                           pip_requirements=requirements(),
                                           signature=signature(),
                                           input_example=input_example())
    finally:
        quiet.setLevel(level)


__all__ = ["MODEL_FILE", "StructpredPyfunc", "input_example", "log_pyfunc", "requirements",
           "signature"]
