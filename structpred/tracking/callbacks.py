"""Hydra callback: one MLflow parent run per multirun sweep, each job a child run."""
from __future__ import annotations

import logging
import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from structpred.training.config import register_resolvers
from structpred.tracking.mlflow_tracker import PARENT_ENV, setup_experiment

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Opens the parent run at ``on_multirun_start`` (its id exported in
    ``STRUCTPRED_PARENT_RUN_ID`` for the jobs) and closes it at ``on_multirun_end``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.run_id = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled or not config.get("tracking") or not config.tracking.enabled:
            return
        register_resolvers()
        from mlflow import MlflowClient
        t = config.tracking
        exp = setup_experiment(t.uri, t.experiment, t.get("artifact_root"))
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(exp, run_name=f"sweep {config.get('task_name', '')}",
                                        tags={"structpred.sweep": "parent",
                                              "structpred.sweep_overrides": overrides[:5000]})
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id
        log.info("MLflow parent run %s for this sweep", self.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient
        MlflowClient().set_terminated(self.run_id, "FINISHED")
        os.environ.pop(PARENT_ENV, None)
