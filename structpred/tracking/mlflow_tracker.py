"""MLflow tracking for training and evaluation runs.

The store is whatever ``tracking.uri`` says; the configs default to one sqlite file in the
checkout, ``<project root>/mlruns/mlflow.db`` (artifacts beside it in ``mlruns/artifacts``),
so that every run shows up in one ``mlflow ui``. ``STRUCTPRED_MLFLOW_URI`` or
``tracking.uri=http://host:5000`` selects another store or a server.

Multirun sweeps: :class:`structpred.tracking.callbacks.MlflowSweepCallback` opens a parent
run when the sweep starts and exports its id in ``STRUCTPRED_PARENT_RUN_ID``; each job's run
is started as its child.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

PARENT_ENV = "STRUCTPRED_PARENT_RUN_ID"
MAX_PARAM = 6000  # MLflow rejects longer parameter values


def flatten(d: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"model": {"num_filters": 8}} -> {"model.num_filters": "8"}`` (lists as strings)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM]
    return out


def setup_experiment(uri: str, experiment: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created if missing, with
    its artifacts under ``artifact_root`` for a local store)."""
    import mlflow
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_root = artifact_root or str(db.parent / "artifacts")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root and "://" not in artifact_root:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(experiment).experiment_id


class Tracker:
    """One MLflow run of the current process (fluent API: the pyfunc logger needs it)."""

    def __init__(self, cfg: Mapping):
        self.cfg = cfg
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def start(self, *, run_id=None, run_name=None, tags=None) -> str:
        import mlflow
        self.experiment_id = setup_experiment(self.cfg["uri"], self.cfg["experiment"],
                                              self.cfg.get("artifact_root"))
        if run_id is not None:  # resume: reopen the same run (status back to RUNNING)
            run = mlflow.start_run(run_id=run_id)
        else:
            parent = os.environ.get(PARENT_ENV) or None
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name,
                                   parent_run_id=parent, tags=dict(tags or {}))
        self.run_id = run.info.run_id
        log.info("MLflow run %s in %s (experiment %r)", self.run_id, self.cfg["uri"],
                 self.cfg["experiment"])
        return self.run_id

    def log_params(self, params: Mapping[str, str]):
        import mlflow
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow's batch limit
            mlflow.log_params(dict(items[i:i + 100]))

    def set_tags(self, tags: Mapping[str, str]):
        import mlflow
        mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int):
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_artifact(self, path, artifact_path: str | None = None):
        import mlflow
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED"):
        import mlflow
        if self.run_id is not None and mlflow.active_run() is not None:
            mlflow.end_run(status=status)
