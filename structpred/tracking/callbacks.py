"""Hydra callback: one MLflow parent run per multirun sweep, each job a child run.

At the start of a sweep (``on_multirun_start``) every job's config is composed and
validated, so a bad value stops the sweep with one line (exit 2) before anything runs or
any run is created. Then the parent run is opened: named after the sweep, with the swept
keys and their values and the number of jobs as params; its id is exported in
``STRUCTPRED_PARENT_RUN_ID`` (each job's run is its child) and the swept keys in
``STRUCTPRED_SWEEP_KEYS`` (each job's run name ends with its values of them).

At the end (``on_multirun_end``) the parent gets a summary read back from its children:
metrics ``sweep/jobs``, ``sweep/finished``, ``sweep/failed`` and ``sweep/best_<metric>``,
tags ``structpred.best_run_id`` and ``structpred.best_run_name``, and ``sweep_summary.txt``
(one line per job). It ends FINISHED, or FAILED when a job failed (the other jobs still ran);
the sweep then exits with status 3. A sweep stopped by a signal marks the parent KILLED.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from structpred.training.config import register_resolvers
from structpred.tracking.mlflow_tracker import (
    PARENT_ENV, SWEEP_KEYS_ENV, metric_key, model_label, setup_experiment,
)

log = logging.getLogger(__name__)

EXIT_JOBS_FAILED = 3


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The override list of every job of a basic-sweeper sweep (None for other sweepers,
    e.g. Optuna, whose jobs are chosen as the sweep goes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    sweeper = OmegaConf.select(config, "hydra.sweeper._target_") or ""
    if not sweeper.endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


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


def validate_jobs(config: DictConfig) -> list[DictConfig] | None:
    """Compose and validate every job's config; a bad one is one line naming the job, exit
    status 2. Returns the jobs' configs (None if the sweeper decides them as it goes)."""
    from hydra.core.global_hydra import GlobalHydra

    from structpred.training.config import EXIT_CONFIG, ConfigError, validate
    jobs = sweep_jobs(config)
    if jobs is None:
        return None
    loader = GlobalHydra.instance().hydra.config_loader
    configs = []
    for i, overrides in enumerate(jobs):
        try:
            job_cfg = loader.load_sweep_config(config, list(overrides))
            validate(job_cfg, training=config.get("task_name") != "evaluate")
            configs.append(job_cfg)
        except ConfigError as exc:
            swept = " ".join(o for o in overrides if o.split("=")[0] in swept_values(config))
            print(f"error: sweep job #{i} ({swept}): {exc}; nothing was run",
                  file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CONFIG) from None
    return configs


def warm_kernels(configs, limit: int = 8) -> None:
    """Compile (or load from the disk cache) the kernels of the sweep's distinct models in
    this process, before the launcher starts its workers: otherwise each worker of a
    parallel launcher compiles the same kernels at the same time (none finds them cached
    yet), each on its share of the cores. A failure here is left to the job to report."""
    import numpy as np

    from structpred.objective import loss_and_grad
    from structpred.training import config as C
    seen = set()
    t0 = time.perf_counter()
    for cfg in configs:
        key = repr([OmegaConf.to_container(cfg.get(g), resolve=True) if cfg.get(g) else None
                    for g in ("model", "solver", "gradient")])
        if key in seen or len(seen) >= limit:
            continue
        seen.add(key)
        try:
            model = C.build_model(cfg)
            theta = C.init_params(model, cfg)
            h = max(16, 3 * max(model.min_image_shape()))
            rng = np.random.default_rng(0)
            clean = 128 + 40 * rng.standard_normal((h, h))
            noisy = clean + 25 * rng.standard_normal((h, h))
            solver, gradient = C.build_pair(cfg)
            loss_and_grad(model, theta, noisy, clean, solver=solver, gradient=gradient)
        except Exception as exc:  # noqa: BLE001 - the job itself will say what is wrong
            log.debug("kernel warm-up skipped (%s)", exc)
    if seen:
        log.info("kernels of %d model(s) compiled or loaded from the cache in %.1f s, before "
                 "starting the jobs", len(seen), time.perf_counter() - t0)


def _drop_launcher_schemas() -> None:
    """The project's ``configs/hydra/launcher/<name>.yaml`` are complete configs named like
    the plugins' schemas; Hydra then warns, in every worker process too (they get this
    process's ConfigStore, and run the app as ``__main__`` pickled by value, so a warning
    filter does not reach them), that each is "validated against ConfigStore schema with
    the same name". Dropping those schemas here, before the workers start, silences it."""
    from hydra.core.config_store import ConfigStore
    from structpred.training.config import project_root
    ours = Path(__file__).resolve().parents[2] / "configs" / "hydra" / "launcher"
    if not ours.is_dir():
        ours = Path(project_root()) / "configs" / "hydra" / "launcher"
    group = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    for f in ours.glob("*.yaml") if ours.is_dir() else ():
        group.pop(f.name, None)


class MlflowSweepCallback(Callback):
    """Validates the sweep, opens the parent run at ``on_multirun_start`` (its id exported in
    ``STRUCTPRED_PARENT_RUN_ID`` for the jobs) and closes it with a summary at
    ``on_multirun_end``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.run_id = None
        self.uri = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        register_resolvers()
        _drop_launcher_schemas()
        jobs = validate_jobs(config)
        n_jobs = None if jobs is None else len(jobs)
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        # jobs in other processes on this machine: compile once, here (not for Slurm: its
        # nodes may have other CPUs, and the login node is not the place to compile)
        local_workers = launcher.endswith(("JoblibLauncher", "submitit_launcher.LocalLauncher"))
        if launcher.endswith("ray_launcher.RayLauncher"):   # a local Ray instance
            local_workers = not OmegaConf.select(config, "hydra.launcher.ray.init.address")
        if jobs and local_workers and config.get("task_name") != "evaluate":
            warm_kernels(jobs)
        if not self.enabled or not config.get("tracking") or not config.tracking.enabled:
            return
        from mlflow import MlflowClient

        from structpred.tracking.mlflow_tracker import _unreachable
        t = config.tracking
        self.uri = t.uri
        try:
            exp = setup_experiment(t.uri, t.experiment, t.get("artifact_root"))
        except Exception as exc:  # noqa: BLE001 - one line, as for a single run
            print(f"error: {_unreachable(t.uri, exc)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        swept = swept_values(config)
        overrides = " ".join(config.hydra.overrides.task)
        prefix = t.get("run_prefix") or config.get("task_name", "train")
        model = (f"-{model_label(OmegaConf.to_container(config.model, resolve=True))}"
                 if isinstance(config.get("model"), DictConfig) else "")
        name = f"sweep {'debug-' if t.get('debug') else ''}{prefix}{model} " + \
            " ".join(f"{k}={v}" for k, v in swept.items())
        tags = {"structpred.sweep": "parent", "structpred.task": "sweep",
                "structpred.sweep_overrides": overrides[:5000],
                "structpred.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                "structpred.debug": str(bool(t.get("debug"))).lower()}
        client = MlflowClient()
        run = client.create_run(exp, run_name=name.strip()[:250], tags=tags)
        self.run_id = run.info.run_id
        params = {f"sweep.{k}": v[:6000] for k, v in swept.items()}
        if n_jobs is not None:
            params["sweep.jobs"] = str(n_jobs)
        for k, v in params.items():
            client.log_param(self.run_id, k, v)
        os.environ[PARENT_ENV] = self.run_id
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept)
        atexit.register(self._abandoned)
        log.info("MLflow parent run %s for this sweep (%s jobs)", self.run_id,
                 n_jobs if n_jobs is not None else "?")

    def _abandoned(self) -> None:
        """At exit without ``on_multirun_end`` (a signal, a crash): the parent is KILLED,
        not left RUNNING."""
        if self.run_id is None:
            return
        try:
            from mlflow import MlflowClient
            MlflowClient().set_terminated(self.run_id, "KILLED")
        except Exception:  # noqa: BLE001 - exiting anyway
            pass

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEEP_KEYS_ENV, None)
        summary = summarize(run_id, config)
        failed = summary["failed"]
        if failed:
            print(f"error: {failed} of {summary['jobs']} sweep jobs failed (MLflow parent run "
                  f"{run_id}; the other jobs ran)", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_JOBS_FAILED)


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
    lines = [f"{'run name':<60} {'status':<9} {key}"]
    for r in sorted(children, key=lambda r: r.info.start_time or 0):
        v = r.data.metrics.get(key)
        lines.append(f"{(r.info.run_name or '')[:60]:<60} {r.info.status:<9} "
                     f"{'-' if v is None else f'{v:.4f}'}  {r.info.run_id}")
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
