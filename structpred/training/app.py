"""The training application behind ``python -m structpred.train``: :func:`train` builds the
objects and the callbacks a composed config describes and runs the
:class:`~structpred.training.trainer.Trainer` (Hydra-independent: it takes a composed
config, so tests can run it through Hydra's compose API). Around it: one-line errors and
exit statuses (:func:`guarded`, :func:`run_job`), finding a checkpoint to resume, and the
final evaluation on the held-out images (:func:`finish`)."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from structpred.data import DataError, load_splits
from structpred.losses import psnr
from structpred.training import config as C
from structpred.training.callbacks import (
    BEFORE, Checkpointer, IterationLog, MLflowLogger, ProgressBar, Validation, mean_psnr,
)
from structpred.training.checkpoint import PREV_NAME, CheckpointError, load_latest
from structpred.training.loop import Interrupted, StopFlag, denoise_all
from structpred.training.trainer import Callback, Trainer, TrainingFailed

log = logging.getLogger("structpred.train")

CKPT_NAME = "last.npz"
EXIT_FAILED = 3   #: the robustness policy stopped the run (README "Robustness")
CKPT_TAG = "structpred.checkpoint"


#: the current job's MLflow run id and last error (read by :func:`run_job` in a sweep)
JOB: dict = {"run_id": None, "error": None}


def fail(message: str, code: int = C.EXIT_CONFIG):
    """One line on stderr, then exit (no traceback)."""
    JOB["error"] = message
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return False


def run_job(fn, cfg):
    """``guarded(fn, cfg)``; in a multirun sweep a job that fails (exit status 2 or 3, or an
    unexpected exception) is logged and recorded as a FAILED MLflow child run, and returns
    None so that the sweep goes on with its other jobs (the sweep callback counts the
    failures in the parent run and exits with status 3). Interruptions still stop the
    sweep."""
    if not in_multirun():
        return guarded(fn, cfg)
    JOB.update(run_id=None, error=None)
    try:
        return guarded(fn, cfg)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if code == 0 or code >= 128:
            raise
        why = JOB["error"] or f"exit status {code}"
    except Exception as exc:  # noqa: BLE001 - one job's crash must not end the sweep
        log.exception("the job crashed")
        why = f"{type(exc).__name__}: {exc}"
    log.error("job failed (%s); the sweep goes on with its other jobs", why)
    _record_failed_job(cfg, why)
    return None


def _record_failed_job(cfg, why: str) -> None:
    """A job that failed before its MLflow run started gets a FAILED child run (its name,
    params and the error), so the sweep's parent shows every job."""
    if JOB["run_id"] is not None or not cfg.get("tracking") or not cfg.tracking.enabled:
        return
    try:
        from structpred.tracking.mlflow_tracker import Tracker, run_name
        resolved = OmegaConf.to_container(cfg, resolve=True)
        tracker = Tracker(resolved["tracking"])
        tracker.start(run_name=run_name(resolved), tags={
            "structpred.task": str(cfg.get("task_name", "train")),
            "structpred.stop_reason": why[:5000]})
        tracker.log_config(resolved)
        tracker.end("FAILED")
    except Exception as exc:  # noqa: BLE001 - the store itself may be the problem
        log.warning("could not record the failed job in MLflow (%s)", exc)


def guarded(fn, cfg, **kw):
    """Run ``fn(cfg)``; configuration and data errors become one line and exit status 2."""
    try:
        return fn(cfg, **kw)
    except (C.ConfigError, DataError) as exc:
        fail(str(exc))


# ----------------------------------------------------------------------------- resume
def find_checkpoint(ref: str, tracking_uri: str | None) -> Path:
    """A checkpoint file from a file, a run folder, or an MLflow run id."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.is_dir():
        hits = sorted(p.rglob(CKPT_NAME)) or sorted(p.rglob(PREV_NAME))
        if hits:
            return hits[0]
        raise C.ConfigError("resume", f"{p}: no {CKPT_NAME} in this folder")
    try:
        import mlflow
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        run = mlflow.MlflowClient().get_run(ref)
    except Exception as exc:
        raise C.ConfigError("resume", f"{ref!r} is not a checkpoint file, a run folder or a "
                            f"known MLflow run id ({type(exc).__name__})") from None
    local = run.data.tags.get(CKPT_TAG)
    if local and Path(local).is_file():
        return Path(local)
    import mlflow
    return Path(mlflow.artifacts.download_artifacts(run_id=ref,
                                                    artifact_path=f"checkpoints/{CKPT_NAME}"))


# ----------------------------------------------------------------------------- helpers
def _progress_enabled(cfg) -> bool:
    if cfg.progress == "auto":
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                return False
        except Exception:  # not under Hydra (compose API, scripts)
            pass
        return sys.stderr.isatty()      # a bar redirected into a log file is noise
    return bool(cfg.progress)


def _tracker(cfg, out_dir):
    from structpred.tracking.mlflow_tracker import Tracker
    if not cfg.tracking.enabled:
        return None
    return Tracker(OmegaConf.to_container(cfg.tracking, resolve=True), local_dir=out_dir)


def _resume_state(ref, optimizer, model):
    """``(state, meta, before)`` of the checkpoint ``ref`` (or the one before it, if torn);
    ``before`` is the outer loop's last good state before ``state`` if the checkpoint kept
    one (see :class:`Trainer`), else None."""
    try:
        used, name, state, meta, extra = load_latest(ref, with_extra=True)
    except (FileNotFoundError, CheckpointError) as exc:
        raise C.ConfigError("resume", str(exc)) from None
    if name != optimizer.name or state.theta.size != model.num_params:
        raise C.ConfigError("resume", f"{used}: checkpoint of a {name} run with "
                            f"{state.theta.size} parameters does not match this config")
    log.info("resuming from %s at outer iteration %d", used, state.iteration)
    return state, meta, extra.get(BEFORE)


#: the config groups that define the training objective (the loss and gradient an outer
#: optimiser's state holds), less the keys that only say where things are or what is
#: measured beside it
OBJECTIVE_KEYS = ("model", "solver", "gradient", "data")
NOT_OBJECTIVE = ("data.root", "data.train.path", "data.val", "data.test")


def objective_changes(before: dict | None, now: dict) -> list[str]:
    """``"key: old -> new"`` for each key of the training objective (``OBJECTIVE_KEYS``,
    less ``NOT_OBJECTIVE``) that differs between a checkpoint's resolved config and this
    run's; [] when the checkpoint kept no config (written before configs were kept)."""
    from structpred.tracking.mlflow_tracker import flatten   # (values as strings)
    if not before:
        return []
    a = flatten({k: before.get(k) for k in OBJECTIVE_KEYS})
    b = flatten({k: now.get(k) for k in OBJECTIVE_KEYS})
    inside = tuple(x + "." for x in NOT_OBJECTIVE)
    gone = "(absent)"
    return [f"{k}: {a.get(k, gone)} -> {b.get(k, gone)}" for k in sorted(set(a) | set(b))
            if not (k in NOT_OBJECTIVE or k.startswith(inside)) and a.get(k) != b.get(k)]


def _start_run(tracker, cfg, resolved: dict, meta: dict, ckpt_path: Path, out_dir: Path):
    """Start (or, resuming, continue) the MLflow run: tags, the config as params and as an
    artifact; a resumed run whose checkpoint's run is in another store gets its history
    replayed, so the whole training shows in one run."""
    from structpred.tracking.mlflow_tracker import run_name
    tracker.start(run_id=meta.get("run_id"), run_name=run_name(resolved),
                  tags={"structpred.task": "train", "structpred.tags": ",".join(cfg.tags),
                        "structpred.debug": str(bool(cfg.tracking.get("debug"))).lower()})
    JOB["run_id"] = tracker.run_id
    new_run = tracker.run_id != meta.get("run_id")
    if new_run:
        tracker.log_config(resolved)
    if cfg.resume and new_run:
        for h in meta.get("history", []):
            tracker.log_metrics({k: v for k, v in h.items() if k != "step"}, h["step"])
    tracker.set_tags({CKPT_TAG: str(ckpt_path.resolve()), "structpred.output_dir":
                      str(out_dir.resolve())})
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    tracker.log_artifact(out_dir / "config.yaml")


def _commits(meta: dict, state) -> list:
    """The checkpoint's code segments with this process's commit added (a resumed
    checkpoint written before commits were recorded starts with an "unknown" segment)."""
    from structpred.provenance import extend_commits
    before = meta.get("commits") or ([[0, "unknown"]] if state is not None else [])
    return extend_commits(before, state.iteration if state is not None else 0)


# ------------------------------------------------------------------------------- main
def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> float | None:
    """Train the model a config describes; returns ``cfg.optimized_metric`` at the end.

    ``callbacks`` are added to those of the config's ``callbacks`` group (tests pass the
    fault injector here). Exits with status 2 (through :func:`guarded`) on a bad config or
    data, 128 + signal number when interrupted, 3 when the robustness policy stops the run;
    each time the last accepted state is checkpointed."""
    C.validate(cfg)
    ckpt_path = Path(cfg.checkpoint.dir) / CKPT_NAME
    if not cfg.resume:
        # a fresh run would rotate another run's checkpoints away within two iterations
        # (e.g. a reproduction run started again without resume=, over its committed state)
        held = [p for p in (ckpt_path, ckpt_path.with_name(PREV_NAME)) if p.exists()]
        if held:
            raise C.ConfigError("checkpoint.dir", f"{ckpt_path.parent} already holds "
                                f"{held[0].name} of an earlier run: continue it with "
                                f"resume={held[0]}, or give another checkpoint.dir (or "
                                f"move that one away)")
    log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(C.set_threads(cfg))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model = C.build_model(cfg)
    solver, gradient = C.build_pair(cfg)
    optimizer = C.build_optimizer(cfg)
    theta0 = C.init_params(model, cfg)
    extra = [*C.build_callbacks(cfg), *callbacks]
    data = load_splits(cfg.data, min_shape=model.min_image_shape())
    train_set, val_set, test_set = data["train"], data["val"], data["test"]
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, meta, before = None, {}, None
    tracker = _tracker(cfg, out_dir)
    changed = []
    if cfg.resume:
        ref = find_checkpoint(str(cfg.resume), cfg.tracking.uri if tracker else None)
        state, meta, before = _resume_state(ref, optimizer, model)
        changed = objective_changes(meta.get("config"), resolved)
        if changed:
            # the state's loss and gradient are the old objective's: the line search would
            # compare this run's losses against them (and Adam would draw minibatches from
            # the old number of images)
            log.warning("the training objective differs from the checkpoint's (%s): the "
                        "loss and gradient at its parameters are evaluated again on this "
                        "run's before the first step", "; ".join(changed))
            # the partial-result cache is keyed by theta and image index, not by objective
            from structpred.training.loop import PartialResults
            PartialResults(ckpt_path.parent / "partial").clear()
    if tracker:
        _start_run(tracker, cfg, resolved, meta, ckpt_path, out_dir)

    stop = StopFlag()
    status, fun = "FAILED", None
    try:
        from structpred.training.executors import Rebalance, make_executor
        # executor=local: threads over images here; executor=ray: actors owning shards
        fun = make_executor(cfg, model, solver, gradient, train_set.pairs(),
                            on_image=stop.check,
                            partial_dir=(ckpt_path.parent / "partial"
                                         if cfg.checkpoint.get("partial", True) else None))
        log.info("model %s: %d parameters; %d training images",
                 model.name, model.num_params, len(train_set))
        trainer = Trainer(
            optimizer, fun, state, theta0=theta0, names=train_set.names,
            elapsed0=float(meta.get("elapsed", 0.0)), history=list(meta.get("history", [])),
            policy=C.build_policy(cfg), count_inner=solver.is_argmin, rebase=bool(changed),
            callbacks=[   # run in this order at each hook
                Validation(model, solver, val_set, cfg.val_every),
                *extra,   # e.g. the fault injector: before anything reports or saves
                *([MLflowLogger(tracker)] if tracker else []),
                *([ProgressBar(optimizer.max_iter)] if _progress_enabled(cfg) else []),
                IterationLog(optimizer.max_iter),
                Checkpointer(ckpt_path, optimizer, every=cfg.checkpoint.every,
                             save_warm=cfg.checkpoint.save_warm, config=resolved,
                             tracker=tracker, executor=fun,
                             commits=_commits(meta, state)),
                Rebalance(fun),   # executor=ray: shards by measured cost, between iterations
            ])
        trainer.restore(meta.get("trainer"), before)   # the rejection memory, if resumed
        with stop:
            state = trainer.run()
            result = finish(cfg, model, solver, theta0, state, test_set, val_set,
                            trainer.history, out_dir, tracker, trainer.reason)
        status = "FINISHED"
        return result
    except (Interrupted, TrainingFailed) as exc:
        # the callbacks saved the last accepted state and tagged the run
        killed = isinstance(exc, Interrupted)
        JOB["error"] = str(exc)
        status = "KILLED" if killed else "FAILED"
        run = f" or resume={tracker.run_id}" if tracker else ""
        print(f"{'' if killed else 'error: '}{exc}: checkpoint saved to {ckpt_path}; "
              f"continue with resume={ckpt_path}{run}", file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum if killed else EXIT_FAILED) from None
    finally:
        if fun is not None:
            fun.close()
        if tracker:
            tracker.end(status)


# ----------------------------------------------------------------------------- the end
def _psnrs(ys, data) -> list[float]:
    return [psnr(y, t) for y, t in zip(ys, data.clean)]


def _summary(test, init_ps, final_ps) -> str:
    noisy = [psnr(x, t) for x, t in zip(test.noisy, test.clean)]
    lines = [f"PSNR on {len(test)} held-out images at sigma = {test.sigma:g} (dB):",
             f"  {'image':<16}{'noisy':>8}{'initial':>9}{'trained':>9}"]
    for n, a, b, c in zip(test.names, noisy, init_ps, final_ps):
        lines.append(f"  {n:<16}{a:8.2f}{b:9.2f}{c:9.2f}")
    lines.append(f"  {'mean':<16}{np.mean(noisy):8.2f}{np.mean(init_ps):9.2f}"
                 f"{np.mean(final_ps):9.2f}")
    return "\n".join(lines), float(np.mean(noisy))


def finish(cfg, model, solver, theta0, state, test_set, val_set, history, out_dir, tracker,
           reason):
    """After training: the summary on the held-out images, the model file, pictures, the
    final metrics and artifacts in MLflow (and the pyfunc model, registered if asked);
    returns ``cfg.optimized_metric`` (None if absent or not finite)."""
    from structpred.tracking import plots
    from structpred.tracking.model_io import MODEL_ARTIFACT_DIR, MODEL_FILE, save_model
    theta = state.theta
    init_ys = denoise_all(model, theta0, test_set.noisy, solver)
    final_ys = denoise_all(model, theta, test_set.noisy, solver)
    init_ps, final_ps = _psnrs(init_ys, test_set), _psnrs(final_ys, test_set)
    text, noisy_mean = _summary(test_set, init_ps, final_ps)
    print(text, flush=True)
    log.info("stopped because: %s", reason)
    final = {"test_psnr_noisy": noisy_mean, "test_psnr_init": float(np.mean(init_ps)),
             "test_psnr": float(np.mean(final_ps))}
    logged = dict(final)
    if val_set is not None:
        last = history[-1] if history else {}
        if last.get("step") == state.iteration and "val_psnr" in last:
            final["val_psnr"] = float(last["val_psnr"])   # measured and logged at this step
        else:
            final["val_psnr"] = logged["val_psnr"] = mean_psnr(
                denoise_all(model, theta, val_set.noisy, solver), val_set)
    model_file = save_model(out_dir / MODEL_FILE, model, theta, solver=solver,
                            meta={"sigma": float(cfg.data.sigma), "iterations": state.iteration,
                                  **final})
    art = out_dir / "artifacts"
    art.mkdir(exist_ok=True)
    pics = [plots.plot_filters(model, theta, art / "filters.png"),
            plots.plot_comparison(test_set.noisy[0], final_ys[0], test_set.clean[0],
                                  art / "comparison.png",
                                  psnrs=[psnr(test_set.noisy[0], test_set.clean[0]),
                                         final_ps[0]])]
    if history:
        pics.append(plots.plot_curves(history, art / "curves.png"))
    (art / "summary.txt").write_text(text + f"\nstopped because: {reason}\n")
    if tracker:
        tracker.log_metrics(logged, state.iteration)
        for p in pics + [art / "summary.txt"]:
            tracker.log_artifact(p, "plots" if p.suffix == ".png" else None)
        tracker.log_artifact(model_file, MODEL_ARTIFACT_DIR)
        tracker.set_tags({"structpred.stop_reason": str(reason)[:5000]})
        register = cfg.tracking.get("register_model")
        if cfg.tracking.log_model or register:
            from structpred.tracking.pyfunc import log_pyfunc
            logged = tracker.attempt("log_model", log_pyfunc, model_file)
            if register and logged:
                from structpred.tracking.mlflow_tracker import register_model
                tracker.attempt("register_model", register_model, tracker.run_id,
                                str(register), tags={
                                    "sigma": f"{float(cfg.data.sigma):g}", "model":
                                    model.name, "test_psnr": f"{final['test_psnr']:.4f}",
                                    "debug": str(bool(cfg.tracking.get("debug"))).lower()})
    metric = final.get(cfg.optimized_metric)
    return None if metric is None or not math.isfinite(metric) else metric
