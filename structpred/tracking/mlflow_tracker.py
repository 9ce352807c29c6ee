"""MLflow tracking for training and evaluation runs.

The store is whatever ``tracking.uri`` says; the configs default to one sqlite file in the
checkout, ``<project root>/mlruns/mlflow.db`` (artifacts beside it in ``mlruns/artifacts``),
so that every run shows up in one ``mlflow ui``. ``STRUCTPRED_MLFLOW_URI`` or
``tracking.uri=http://host:5000`` selects another store or a server.

Multirun sweeps: :class:`structpred.training.sweep.SweepCallback` opens a parent
run when the sweep starts and exports its id in ``STRUCTPRED_PARENT_RUN_ID``; each job's run
is started as its child.

Outages: an unreachable store at the start is a one-line error naming ``tracking.uri``
(or, with ``tracking.on_unreachable=local``, a warning and a local sqlite store in the run
folder). During a run, a failed metric write is retried ``tracking.retries`` times, then kept
in ``<run folder>/metrics_pending.jsonl`` and in memory, and sent with the next write that
succeeds; failed tags and artifacts are reported and skipped (the files stay in the run
folder). Tracking never stops a training. A write whose reply was lost may have landed: before
any resend the store is asked which of the step's metrics it holds, so a step is not recorded
twice. Within one write, MLflow's own HTTP retries (``tracking.http_retries``) also resend a
request whose reply was lost, which this check cannot see; ``tracking.http_retries=0`` leaves
every resend to the check, at the cost of no retry for params and tags.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

PARENT_ENV = "STRUCTPRED_PARENT_RUN_ID"
SWEEP_KEYS_ENV = "STRUCTPRED_SWEEP_KEYS"   #: the keys a sweep varies (for the job's run name)
MAX_PARAM = 6000  # MLflow rejects longer parameter values
#: experiment tag that MLflow 3's UI reads to choose between its GenAI and model views
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: MLflow metric key of each metric the training loop computes. A "/" groups charts in the
#: MLflow UI (one section per prefix): the curves first (``train/``, ``val/``, ``test/``),
#: then the diagnostics (``solver/`` inner solves, ``adjoint/`` the implicit gradient's linear
#: solves, ``outer/`` the outer optimiser, ``time/``). Keys already holding a "/" are kept.
METRIC_KEYS = {
    "train_loss": "train/loss", "train_psnr": "train/psnr", "grad_norm": "train/grad_norm",
    "val_psnr": "val/psnr",
    "test_psnr": "test/psnr", "test_psnr_noisy": "test/psnr_noisy",
    "test_psnr_init": "test/psnr_init",
    "inner_iters_mean": "solver/iters_mean", "inner_iters_max": "solver/iters_max",
    "inner_unconverged": "solver/unconverged",
    "inner_unconverged_fraction": "solver/unconverged_fraction",
    "adjoint_iters_mean": "adjoint/iters_mean", "adjoint_iters_max": "adjoint/iters_max",
    "adjoint_residual_max": "adjoint/residual_max", "adjoint_unconverged": "adjoint/unconverged",
    "adjoint_minres": "adjoint/minres",
    "evals": "outer/evals", "step_size": "outer/step_size",
    "rejected_steps": "outer/rejected_steps",
    "wall_time": "time/elapsed_s", "iter_time": "time/iter_s",
}


def metric_key(name: str) -> str:
    """The MLflow key of a training metric (see :data:`METRIC_KEYS`); others unchanged."""
    return METRIC_KEYS.get(name, name)


#: config keys that are not hyperparameters: logged as tags ``config.<key>``, not as params
#: (run-specific paths would be the first parallel-coordinates axis and always differ; the
#: loop's extra ``callbacks``, e.g. the fault injector, change no result)
_TAG_GROUPS = ("paths.", "tracking.", "hydra.", "checkpoint.", "callbacks.")
_TAG_KEYS = {"resume", "progress", "data.root", "model_ref", "task_name", "tags",
             "optimized_metric", "save_images"}


def split_config(flat: Mapping[str, str]) -> tuple[dict, dict]:
    """``(params, tags)`` of a flattened config: hyperparameters as params; paths, the
    tracking settings and other run-specific values as tags ``config.<key>``."""
    params, tags = {}, {}
    for k, v in flat.items():
        is_path = (k.startswith(_TAG_GROUPS) or k in _TAG_KEYS or k.endswith((".path", "_dir"))
                   or k.endswith(".dir"))
        if is_path:
            tags[f"config.{k}"] = v
        else:
            params[k] = v
    return params, tags


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


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock on ``<db>.lock`` beside a sqlite store while it is created or
    migrated: MLflow creates the tables and runs its migrations on the first connection,
    and two processes doing that at once fail ("duplicate column name", alembic errors).
    Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def setup_experiment(uri: str, experiment: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created if missing, with
    its artifacts under ``artifact_root`` for a local store, and tagged as a model-training
    experiment for MLflow 3's UI). A sqlite store is created under a file lock, so parallel
    processes on a fresh store all succeed."""
    import mlflow
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_root = artifact_root or str(db.parent / "artifacts")
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)   # creates/migrates a new store
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if artifact_root and "://" not in artifact_root:
            Path(artifact_root).mkdir(parents=True, exist_ok=True)
            location = Path(artifact_root).resolve().as_uri()
        try:
            return client.create_experiment(experiment, artifact_location=location,
                                            tags=dict([EXPERIMENT_KIND]))
        except Exception:  # created meanwhile by a parallel job (another server client)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            return exp.experiment_id


#: words of the errors that mean "cannot connect" (MLflow raises many exception types)
_UNREACHABLE = ("max retries exceeded", "connection refused", "failed to establish",
                "name or service not known", "temporary failure in name resolution",
                "timed out", "unable to open database file", "no route to host",
                "connection reset", "connection aborted", "api request to")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached (rather than another failure)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in _UNREACHABLE)


def _unreachable(uri: str, exc: Exception):
    from structpred.errors import ConfigError
    why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if not is_unreachable(exc):
        return ConfigError("tracking.uri", f"the MLflow store {uri} failed to open "
                           f"({type(exc).__name__}: {why}); check the store, or set "
                           "tracking.enabled=false")
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
            if (self.cfg.get("on_unreachable", "error") != "local" or self.local_dir is None
                    or not is_unreachable(exc)):
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
        log.info("MLflow run %s in %s (experiment %r); in the MLflow UI: %s", self.run_id,
                 self.cfg["uri"], self.cfg["experiment"],
                 ui_link(self.cfg["uri"], run.info.experiment_id, self.run_id))
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

    def log_config(self, config: Mapping) -> None:
        """The resolved config: hyperparameters as params, paths and tracking settings as
        tags (:func:`split_config`)."""
        params, tags = split_config(flatten(config))
        self.log_params(params)
        self.set_tags(tags)

    def set_tags(self, tags: Mapping[str, str]):
        import mlflow
        self.attempt("set_tags", mlflow.set_tags, dict(tags))

    def _unsent(self, metrics: dict, step: int) -> dict:
        """Those of ``metrics`` that the store does not hold at ``step``.

        A write that failed may still have landed: the server committed it and died, or the
        reply timed out. MLflow's metric writes are not idempotent, so sending it again
        recorded the step twice (CI of stop 25: ``train/loss`` steps [0, 1, 1, 2, ...] after
        the server was killed). Asked only before a resend, one request per key."""
        import mlflow
        client = mlflow.MlflowClient()
        held = {}
        for key in metrics:
            held[key] = [m.value for m in client.get_metric_history(self.run_id, key)
                         if m.step == step]
        return {k: v for k, v in metrics.items()
                if not any(_same_value(v, h) for h in held[k])}

    def _send(self, metrics: dict, step: int, *, resend: bool = False) -> bool:
        """Send with ``retries`` retries ``retry_wait`` seconds apart (doubling). A retry,
        or a ``resend`` of metrics kept after a failure, first asks the store which of them
        it already holds (:meth:`_unsent`) and sends only the others."""
        import mlflow
        wait = float(self.cfg.get("retry_wait", 1.0))
        for attempt in range(int(self.cfg.get("retries", 2)) + 1):
            if attempt:
                time.sleep(wait)
                wait *= 2
            try:
                todo = self._unsent(metrics, step) if (attempt or resend) else metrics
                if todo:
                    mlflow.log_metrics(todo, step=step)
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
        """Send the metrics kept after earlier failures; True when none is left.

        Only the first kept record was sent before (a record kept while others wait is
        queued unsent), so only it is checked against the store first (:meth:`_unsent`)."""
        first = True
        while self.pending:
            metrics, step = self.pending[0]
            if not self._send(metrics, step, resend=first):
                return False
            self.pending.pop(0)
            first = False
        if self.pending_path is not None and self.pending_path.exists():
            self.pending_path.unlink()
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int):
        """Log (retrying); on failure keep them to send later. Never raises. Keys are
        renamed by :func:`metric_key` (``train_loss`` -> ``train/loss``)."""
        metrics = {metric_key(k): float(v) for k, v in metrics.items()}
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


def _same_value(a: float, b: float) -> bool:
    """One metric value as sent and as read back (NaN equals NaN; a store may round)."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


#: MLflow 3.17's UI chooses between its GenAI view and its model-training view by a global
#: switch (the URL parameter ``workflowType``, else the browser's last choice, else GenAI),
#: not by the experiment's ``mlflow.experimentKind`` tag (which older 3.x versions read, and
#: which is still set): a link with this parameter opens a run in the model-training view
#: (checked in Chromium, ``experiments/ui_check.py``).
UI_VIEW = "workflowType=machine_learning"


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a run is in the MLflow UI, in the model-training view: the full URL for a
    tracking server, else the page's path for ``mlflow ui --backend-store-uri <uri>``."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    page += f"?{UI_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


# ------------------------------------------------------------------------- run names
def model_label(model: Mapping) -> str:
    """``foe8x3``, ``filter_mrf8x3-charbonnier``, ``pairwise``: the model, its filter count
    and size, and its penalty when the config names one."""
    label = str(model.get("name", "model"))
    k, m = model.get("num_filters"), model.get("filter_size")
    if k is not None and m is not None:
        label += f"{k}x{m}"
    if model.get("penalty"):
        label += f"-{model['penalty']}"
    return label


def _lookup(cfg: Mapping, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def sweep_keys() -> list[str]:
    """The config keys the current sweep varies (exported by the sweep callback)."""
    return [k for k in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if k]


def run_name(cfg: Mapping) -> str:
    """The MLflow run name of a training run: ``tracking.run_name`` if set, else
    ``<run_prefix>-<model><K>x<m>-s<sigma>`` (``denoise-foe8x3-s25``); ``debug-`` in front of
    a ``+debug=fast`` run, and in a sweep the job's values of the swept keys after a space
    (``denoise-foe4x3-s25 model.num_filters=4``), so that no two jobs share a name."""
    t = cfg.get("tracking") or {}
    name = t.get("run_name")
    if not name:
        parts = [str(t.get("run_prefix") or cfg.get("task_name") or "train")]
        if isinstance(cfg.get("model"), Mapping):
            parts.append(model_label(cfg["model"]))
        sigma = _lookup(cfg, "data.sigma")
        if sigma is not None:
            parts.append(f"s{float(sigma):g}")
        name = "-".join(parts)
    if t.get("debug"):
        name = f"debug-{name}"
    swept = [f"{k}={_lookup(cfg, k)}" for k in sweep_keys() if _lookup(cfg, k) is not None]
    return " ".join([name, *swept])[:250]


def register_model(run_id: str, name: str, tags: Mapping[str, str] | None = None):
    """Register ``runs:/<run_id>/model`` in the MLflow Model Registry as ``name``; returns
    the new ModelVersion (its ``version``), with ``tags`` on the version."""
    import mlflow
    mv = mlflow.register_model(f"runs:/{run_id}/model", name,
                               tags={k: str(v) for k, v in (tags or {}).items()})
    log.info("registered the model as %r version %s", name, mv.version)
    return mv
