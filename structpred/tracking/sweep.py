"""The MLflow side of a multirun sweep: one parent run per sweep, each job a child run.

:func:`open_parent_run` opens the parent (named after the sweep, with the swept keys and
their values and the number of jobs as params), exports its id in
``STRUCTPRED_PARENT_RUN_ID`` (each job's run is started as its child) and the swept keys in
``STRUCTPRED_SWEEP_KEYS`` (each job's run name ends with its values of them).
:func:`summarize` closes it with a summary read back from its children: metrics
``sweep/jobs``, ``sweep/finished``, ``sweep/failed`` and ``sweep/best_<metric>``, tags
``structpred.best_run_id`` and ``structpred.best_run_name``, and ``sweep_summary.txt`` (one
line per job); it ends FINISHED, or FAILED when a job failed.

The Hydra callback that calls these (and validates the jobs first) is
:class:`structpred.training.sweep.SweepCallback`: it needs the training layer's config
validation, which this layer does not import.
"""
from __future__ import annotations

import logging
import math
import os

from omegaconf import DictConfig, OmegaConf

from structpred.tracking.mlflow_tracker import (
    PARENT_ENV, SWEEP_KEYS_ENV, metric_key, model_label, setup_experiment,
)

log = logging.getLogger(__name__)


def swept_values(config: DictConfig) -> dict[str, str]:
    """``{key: "v1,v2"}`` of the overrides that sweep (``model.num_filters=4,8``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    out = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - a sweeper's own syntax; the tag keeps the text
        return out
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element().lstrip("+~")
            try:
                out[key] = ",".join(o.sweep_string_iterator())
            except Exception:  # noqa: BLE001 - ranges/intervals of other sweepers
                out[key] = o.get_value_element_as_str()
    return out


def open_experiment(config: DictConfig) -> str:
    """The id of the sweep's MLflow experiment (created if new); raises the store's error
    if it cannot be opened."""
    t = config.tracking
    return setup_experiment(t.uri, t.experiment, t.get("artifact_root"))


def open_parent_run(config: DictConfig, exp: str, n_jobs: int | None) -> str:
    """Open the sweep's parent run in the experiment ``exp`` and export its id and the
    swept keys for the jobs; returns its id."""
    from mlflow import MlflowClient
    t = config.tracking
    swept = swept_values(config)
    overrides = " ".join(config.hydra.overrides.task)
    prefix = t.get("run_prefix") or config.get("task_name", "train")
    model = ""
    if isinstance(config.get("model"), DictConfig):
        # a swept model key shows its values, not the first job's (foe{4,8}x3, not foe4x3)
        spec = OmegaConf.to_container(config.model, resolve=True)
        for k, v in swept.items():
            if k.startswith("model.") and k[len("model."):] in spec:
                spec[k[len("model."):]] = "{" + v + "}"
        model = f"-{model_label(spec)}"
    name = f"sweep {'debug-' if t.get('debug') else ''}{prefix}{model} " + \
        " ".join(f"{k}={v}" for k, v in swept.items())
    tags = {"structpred.sweep": "parent", "structpred.task": "sweep",
            "structpred.sweep_overrides": overrides[:5000],
            "structpred.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
            "structpred.debug": str(bool(t.get("debug"))).lower()}
    client = MlflowClient()
    run = client.create_run(exp, run_name=name.strip()[:250], tags=tags)
    run_id = run.info.run_id
    params = {f"sweep.{k}": v[:6000] for k, v in swept.items()}
    if n_jobs is not None:
        params["sweep.jobs"] = str(n_jobs)
    for k, v in params.items():
        client.log_param(run_id, k, v)
    os.environ[PARENT_ENV] = run_id
    os.environ[SWEEP_KEYS_ENV] = ",".join(swept)
    log.info("MLflow parent run %s for this sweep (%s jobs)", run_id,
             n_jobs if n_jobs is not None else "?")
    return run_id


def mark_killed(run_id: str) -> None:
    """End the parent KILLED (a sweep stopped by a signal or a crash), quietly."""
    try:
        from mlflow import MlflowClient
        MlflowClient().set_terminated(run_id, "KILLED")
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


def close_parent_run(run_id: str, config: DictConfig) -> dict:
    """Stop exporting the parent to new jobs, then :func:`summarize` it."""
    os.environ.pop(PARENT_ENV, None)
    os.environ.pop(SWEEP_KEYS_ENV, None)
    return summarize(run_id, config)


def summarize(run_id: str, config: DictConfig) -> dict:
    """Count the parent's children by status, find the best by ``optimized_metric``, log it
    all to the parent and end it (FAILED if a child failed). Returns the counts."""
    from mlflow import MlflowClient
    client = MlflowClient()
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  max_results=10000)
    name = str(config.get("optimized_metric") or "val_psnr")
    key = metric_key(name)
    lower = str(OmegaConf.select(config, "hydra.sweeper.direction") or "maximize") == "minimize"
    scored = [(r.data.metrics[key], r) for r in children
              if r.info.status == "FINISHED" and math.isfinite(r.data.metrics.get(key, math.nan))]
    best = (min if lower else max)(scored, key=lambda p: p[0]) if scored else None
    counts = {"jobs": len(children),
              "finished": sum(r.info.status == "FINISHED" for r in children),
              "failed": sum(r.info.status in ("FAILED", "KILLED", "RUNNING") for r in children)}
    metrics = {f"sweep/{k}": float(v) for k, v in counts.items()}
    lines = [f"{'run name':<60} {'status':<9} {key:<10}  run id"]
    for r in sorted(children, key=lambda r: r.info.start_time or 0):
        v = r.data.metrics.get(key)
        lines.append(f"{(r.info.run_name or '')[:60]:<60} {r.info.status:<9} "
                     f"{'-' if v is None else f'{v:.4f}':<10}  {r.info.run_id}")
    if best is not None:
        metrics[f"sweep/best_{key.replace('/', '_')}"] = float(best[0])
        client.set_tag(run_id, "structpred.best_run_id", best[1].info.run_id)
        client.set_tag(run_id, "structpred.best_run_name", best[1].info.run_name or "")
        lines.append(f"best {key}: {best[0]:.4f} ({best[1].info.run_name}, {best[1].info.run_id})")
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    client.log_text(run_id, "\n".join(lines) + "\n", "sweep_summary.txt")
    client.set_terminated(run_id, "FAILED" if counts["failed"] else "FINISHED")
    log.info("sweep summary (MLflow parent run %s):\n%s", run_id, "\n".join(lines))
    return counts
