"""The trained model as an MLflow pyfunc: ``mlflow.pyfunc.load_model(uri).predict(noisy)``.

``predict`` takes one (H, W) array in 0..255, or a list of them, and returns the denoised
image(s). The model file travels as the pyfunc's artifact ``model_file``.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from structpred.tracking.model_io import MODEL_FILE


class StructpredPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps :class:`structpred.tracking.model_io.TrainedModel` for MLflow."""

    def load_context(self, context):
        from structpred.tracking.model_io import read_model_file
        self.trained = read_model_file(context.artifacts["model_file"])

    # The hint np.ndarray is one MLflow accepts without inferring a schema, so it validates
    # nothing and passes lists of images through too; without a hint MLflow warns at class
    # definition, under a warning filter of its own that ours cannot override.
    def predict(self, context, model_input: np.ndarray, params=None):
        """Denoise one (H, W) image in 0..255 or a list of them."""
        return self.trained.predict(model_input)


def log_pyfunc(model_file, name: str = "model"):
    """Log ``model_file`` as a pyfunc model of the active run; returns the ModelInfo."""
    import scipy
    import numba
    reqs = [f"numpy=={np.__version__}", f"scipy=={scipy.__version__}",
            f"numba=={numba.__version__}", "structpred"]
    import logging
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # the cloudpickle notice is expected: our class is importable
    try:
        return mlflow.pyfunc.log_model(name=name, python_model=StructpredPyfunc(),
                                       artifacts={"model_file": str(model_file)},
                                       pip_requirements=reqs)
    finally:
        quiet.setLevel(level)


__all__ = ["MODEL_FILE", "StructpredPyfunc", "log_pyfunc"]
