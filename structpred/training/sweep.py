"""Hydra callback of multirun sweeps (``structpred/configs/hydra/default.yaml``): validate
every job first, compile the kernels once, and track the sweep as one MLflow parent run.

At the start of a sweep (``on_multirun_start``) every job's config is composed and
validated, so a bad value stops the sweep with one line (exit 2) before anything runs or
any run is created. Then the kernels of the sweep's models are compiled once in this process
(local launchers), and the MLflow parent run is opened (:mod:`structpred.tracking.sweep`:
each job's run is its child, named after its swept values).

At the end (``on_multirun_end``) the parent gets a summary read back from its children and
ends FINISHED, or FAILED when a job failed (the other jobs still ran); the sweep then exits
with status 3. A sweep stopped by a signal marks the parent KILLED.

This lives in the training layer, not in tracking, because it validates and builds training
configs; the MLflow part is in :mod:`structpred.tracking.sweep`.
"""
from __future__ import annotations

import atexit
import logging
import sys
import time

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from structpred.training.config import register_resolvers

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


def validate_jobs(config: DictConfig) -> list[DictConfig] | None:
    """Compose and validate every job's config; a bad one is one line naming the job, exit
    status 2. Returns the jobs' configs (None if the sweeper decides them as it goes)."""
    from hydra.core.global_hydra import GlobalHydra

    from structpred.errors import EXIT_CONFIG, ConfigError
    from structpred.tracking.sweep import swept_values
    from structpred.training.config import validate
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
    """The project's ``structpred/configs/hydra/launcher/<name>.yaml`` are complete configs
    named like the plugins' schemas; Hydra then warns, in every worker process too (they
    get this process's ConfigStore, and run the app as ``__main__`` pickled by value, so a
    warning filter does not reach them), that each is "validated against ConfigStore schema
    with the same name". Dropping those schemas here, before the workers start, silences
    it."""
    from hydra.core.config_store import ConfigStore

    from structpred.configs import CONFIG_DIR
    ours = CONFIG_DIR / "hydra" / "launcher"
    group = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    for f in ours.glob("*.yaml"):
        group.pop(f.name, None)


class SweepCallback(Callback):
    """Validates the sweep and warms the kernels; with tracking on, opens the MLflow parent
    run at ``on_multirun_start`` (its id exported in ``STRUCTPRED_PARENT_RUN_ID`` for the
    jobs) and closes it with a summary at ``on_multirun_end`` (exit status 3 if a job
    failed)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled   #: tracking.enabled: the MLflow parent run
        self.run_id = None

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
        from structpred.tracking.mlflow_tracker import _unreachable
        from structpred.tracking.sweep import open_experiment, open_parent_run
        try:
            exp = open_experiment(config)
        except Exception as exc:  # noqa: BLE001 - one line, as for a single run
            print(f"error: {_unreachable(config.tracking.uri, exc)}", file=sys.stderr,
                  flush=True)
            raise SystemExit(2) from None
        self.run_id = open_parent_run(config, exp, n_jobs)
        atexit.register(self._abandoned)

    def _abandoned(self) -> None:
        """At exit without ``on_multirun_end`` (a signal, a crash): the parent is KILLED,
        not left RUNNING."""
        if self.run_id is not None:
            from structpred.tracking.sweep import mark_killed
            mark_killed(self.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        from structpred.tracking.sweep import close_parent_run
        run_id, self.run_id = self.run_id, None
        summary = close_parent_run(run_id, config)
        failed = summary["failed"]
        if failed:
            print(f"error: {failed} of {summary['jobs']} sweep jobs failed (MLflow parent run "
                  f"{run_id}; the other jobs ran)", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_JOBS_FAILED)
