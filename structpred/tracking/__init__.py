"""MLflow tracking, pictures, trained-model files and loading a model back from a run."""
from structpred.tracking.mlflow_tracker import Tracker, flatten, setup_experiment
from structpred.tracking.model_io import (
    MODEL_ARTIFACT_DIR, MODEL_FILE, TrainedModel, load_model, read_model_file, save_model,
)

__all__ = ["MODEL_ARTIFACT_DIR", "MODEL_FILE", "Tracker", "TrainedModel", "flatten",
           "load_model", "read_model_file", "save_model", "setup_experiment"]
