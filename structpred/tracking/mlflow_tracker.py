"""MLflow tracking for training and evaluation runs.

The store is whatever ``tracking.uri`` says; the configs default to one sqlite file in the
checkout, ``<project root>/mlruns/mlflow.db`` (artifacts beside it in ``mlruns/artifacts``),
so that every run shows up in one ``mlflow ui``. ``STRUCTPRED_MLFLOW_URI`` or
``tracking.uri=http://host:5000`` selects another store or a server.

Multirun sweeps: :class:`structpred.tracking.callbacks.MlflowSweepCallback` opens a parent
run when the sweep starts and exports its id in ``STRUCTPRED_PARENT_RUN_ID``; each job's run
is started as its child.

Outages: an unreachable store at the start is a one-line error naming ``tracking.uri``
(or, with ``tracking.on_unreachable=local``, a warning and a local sqlite store in the run
folder). During a run, a failed metric write is retried ``tracking.retries`` times, then kept
in ``<run folder>/metrics_pending.jsonl`` and in memory, and sent with the next write that
succeeds; failed tags and artifacts are reported and skipped (the files stay in the run
folder). Tracking never stops a training.
"""
from __future__ import annotations

import json
import logging
import os
import time
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


def _unreachable(uri: str, exc: Exception):
    from structpred.training.config import ConfigError
    why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return ConfigError("tracking.uri", f"cannot reach the MLflow store {uri} ({why}); start "
                       "the server or fix the URI, or set tracking.on_unreachable=local (a "
                       "local store in the run folder) or tracking.enabled=false")


class Tracker:
    """One MLflow run of the current process (fluent API: the pyfunc logger needs it).

    Parameters
    ----------
    cfg : mapping
        The ``tracking`` config group (``uri``, ``experiment``, ``artifact_root``,
        ``on_unreachable``, ``retries``, ``retry_wait``, ``http_retries``, ``http_timeout``).
    local_dir : path, optional
        The run folder: where metrics that could not be sent are kept, and where the local
        fallback store goes.
    """

    def __init__(self, cfg: Mapping, local_dir=None):
        self.cfg = dict(cfg)
        self.local_dir = Path(local_dir) if local_dir is not None else None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.pending: list[tuple[dict, int]] = []   #: metrics not yet sent, (metrics, step)

    @property
    def pending_path(self) -> Path | None:
        return None if self.local_dir is None else self.local_dir / "metrics_pending.jsonl"

    def _connect(self) -> None:
        """Open the experiment; an unreachable store is an error or the local fallback."""
        # MLflow retries HTTP requests for minutes by default; a run should not hang on it
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                              str(self.cfg.get("http_retries", 2)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.cfg.get("http_timeout", 20)))
        uri = self.cfg["uri"]
        try:
            self.experiment_id = setup_experiment(uri, self.cfg["experiment"],
                                                  self.cfg.get("artifact_root"))
            return
        except Exception as exc:  # MLflow raises many types for "cannot connect"
            if self.cfg.get("on_unreachable", "error") != "local" or self.local_dir is None:
                raise _unreachable(uri, exc) from None
            local = f"sqlite:///{(self.local_dir / 'mlruns' / 'mlflow.db').resolve()}"
            log.warning("MLflow store %s unreachable (%s): tracking to the local store %s "
                        "instead (tracking.on_unreachable=local)", uri, type(exc).__name__, local)
        self.cfg.update(uri=local, artifact_root=None)
        self.experiment_id = setup_experiment(local, self.cfg["experiment"])

    def start(self, *, run_id=None, run_name=None, tags=None) -> str:
        import mlflow
        self._connect()
        if run_id is not None and not self._known_run(run_id):
            # a checkpoint from another store (a committed state resumed on another machine):
            # a new run, linked to the one it continues by a tag
            log.info("MLflow run %s of the checkpoint is not in %s: continuing in a new run "
                     "tagged structpred.resumed_from=%s", run_id, self.cfg["uri"], run_id)
            tags = {**dict(tags or {}), "structpred.resumed_from": run_id}
            run_id = None
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

    def _known_run(self, run_id: str) -> bool:
        import mlflow
        try:
            mlflow.MlflowClient().get_run(run_id)
            return True
        except Exception:  # RESOURCE_DOES_NOT_EXIST (MLflow raises MlflowException)
            return False

    def attempt(self, what: str, fn, *args, **kw) -> bool:
        """Call ``fn``; a tracking failure is reported, never raised."""
        try:
            fn(*args, **kw)
            return True
        except Exception as exc:  # network, server and store errors alike
            log.warning("MLflow %s failed (%s: %s); training goes on", what,
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            return False

    def log_params(self, params: Mapping[str, str]):
        import mlflow
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.attempt("log_params", mlflow.log_params, dict(items[i:i + 100]))

    def set_tags(self, tags: Mapping[str, str]):
        import mlflow
        self.attempt("set_tags", mlflow.set_tags, dict(tags))

    def _send(self, metrics: dict, step: int) -> bool:
        """Send with ``retries`` retries ``retry_wait`` seconds apart (doubling)."""
        import mlflow
        wait = float(self.cfg.get("retry_wait", 1.0))
        for attempt in range(int(self.cfg.get("retries", 2)) + 1):
            if attempt:
                time.sleep(wait)
                wait *= 2
            try:
                mlflow.log_metrics(metrics, step=step)
                return True
            except Exception as exc:  # network, server and store errors alike
                last = exc
        log.warning("MLflow log_metrics at step %d failed (%s); kept in %s and sent later",
                    step, type(last).__name__, self.pending_path or "memory")
        return False

    def _keep(self, metrics: dict, step: int) -> None:
        self.pending.append((metrics, step))
        if self.pending_path is not None:
            try:
                with open(self.pending_path, "a") as fh:
                    fh.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
            except OSError as exc:
                log.warning("cannot keep metrics in %s (%s)", self.pending_path, exc)

    def flush(self) -> bool:
        """Send the metrics kept after earlier failures; True when none is left."""
        while self.pending:
            metrics, step = self.pending[0]
            if not self._send(metrics, step):
                return False
            self.pending.pop(0)
        if self.pending_path is not None and self.pending_path.exists():
            self.pending_path.unlink()
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int):
        """Log (retrying); on failure keep them to send later. Never raises."""
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.pending and not self.flush():
            self._keep(metrics, int(step))
        elif not self._send(metrics, int(step)):
            self._keep(metrics, int(step))

    def log_artifact(self, path, artifact_path: str | None = None):
        import mlflow
        self.attempt(f"log_artifact {path}", mlflow.log_artifact, str(path),
                  artifact_path=artifact_path)

    def end(self, status: str = "FINISHED"):
        import mlflow
        if self.pending and not self.flush():
            log.warning("%d metric records could not be sent to MLflow; they are in %s",
                        len(self.pending), self.pending_path or "memory (lost at exit)")
        if self.run_id is not None and mlflow.active_run() is not None:
            self.attempt("end_run", mlflow.end_run, status=status)
