"""Evaluate a trained model on a test set: ``python -m structpred.evaluate model_ref=RUN_ID``.

Noise follows the published convention (clean + sigma * N(0, 1) in 0..255, not rounded,
fixed seed ``data.seed``); ``data.rounded=true`` gives the 8-bit regime. The task (denoise,
inpaint with its mask, deblur with its kernel) is the one stored in the model file; a
``data.task`` that asks for another one is an error (exit 2). Writes a per-image
PSNR/SSIM table with a last ``mean`` row (``psnr.csv``) and the noisy/denoised PNGs to the
run folder, prints the means, and logs everything to MLflow: metrics
``eval/<dataset>_s<sigma>/{psnr,psnr_noisy,ssim,ssim_noisy,images}``, a run named
``eval-<dataset>-s<sigma> <model's run name> (n of N images)`` (the count only for a subset),
tagged with the model's reference and, for a run id, a child of the model's run.

Examples::

    python -m structpred.evaluate model_ref=<run id>                      # scikit-image test crops
    python -m structpred.evaluate model_ref=<run id> data=bsds data.sigma=25   # BSD68
    python -m structpred.evaluate model_ref=outputs/train/runs/<date>/structpred_model.npz
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from structpred.configs import CONFIG_PATH, register_resolvers

register_resolvers()
log = logging.getLogger("structpred.evaluate")


def to_uint8(img) -> np.ndarray:
    """Round and clip to 8 bit for saving (the PSNR is computed before this)."""
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def evaluate(cfg: DictConfig) -> float:
    """Denoise the ``cfg.split`` images with ``cfg.model_ref``; returns the mean PSNR."""
    import imageio.v3 as iio

    from structpred.data import load_splits
    from structpred.losses import psnr
    from structpred.solvers.monitor import InnerProgress, line_reporter
    from structpred.tracking.mlflow_tracker import Tracker
    from structpred.tracking.model_io import ModelFileError, load_model
    from structpred.training import config as C

    C.validate(cfg, training=False)
    if not cfg.get("model_ref"):
        raise C.ConfigError("model_ref", "give the trained model: an MLflow run id, "
                            "runs:/<id>, a structpred_model.npz or a run folder")
    log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(C.set_threads(cfg))
    uri = cfg.tracking.uri if cfg.tracking.enabled else None
    try:
        trained = load_model(cfg.model_ref, solver=C.build_solver(cfg), tracking_uri=uri)
    except (FileNotFoundError, OSError, ModelFileError) as exc:
        raise C.ConfigError("model_ref", str(exc)) from None
    task = _task(cfg, trained)
    log.info("task: %s (from the model file)", task.describe())
    _check_sigma(cfg, trained)
    data = load_splits(cfg.data, min_shape=trained.model.min_image_shape(),
                       splits=(cfg.split,))[cfg.split]
    out = Path(cfg.paths.output_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    log.info("denoising %d images (the first one compiles the Numba kernels if not cached)",
             len(data))
    inner = InnerProgress(line_reporter(log.info), after=2.0)   # a line per 10 s of a long solve
    for name, x, t in zip(data.names, data.noisy, data.clean):
        with inner.track(name) as monitor:
            y = trained.denoise255(x, monitor=monitor)   # the data are already in 0..255
        rows.append((name, psnr(x, t), psnr(y, t), ssim(x, t), ssim(y, t)))
        if cfg.save_images:
            stem = name.replace("#", "_")
            iio.imwrite(img_dir / f"{stem}_noisy.png", to_uint8(x))
            iio.imwrite(img_dir / f"{stem}_denoised.png", to_uint8(y))
    inner.close()
    means = [float(np.mean([r[i] for r in rows])) for i in range(1, 5)]
    mean_noisy, mean = means[0], means[1]
    table = out / "psnr.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised"])
        w.writerows([(r[0], *(f"{v:.4f}" for v in r[1:])) for r in rows])
        w.writerow(["mean", *(f"{v:.4f}" for v in means)])
    regime = "rounded to 8 bit" if cfg.data.rounded else "not rounded"
    what = "" if task.identity else f", task {task.describe()}"
    used, total = _images_used(cfg.data.get(cfg.split))
    subset = f" (a subset: {used} of {total} images)" if used < total else ""
    print(f"{len(rows)} images{subset}, sigma = {cfg.data.sigma:g} (noise {regime}, seed "
          f"{cfg.data.seed}{what}): mean PSNR noisy {mean_noisy:.2f} dB -> denoised "
          f"{mean:.2f} dB, SSIM {means[2]:.3f} -> {means[3]:.3f}; table in {table}", flush=True)
    if cfg.tracking.enabled:
        from structpred.tracking.mlflow_tracker import PARENT_ENV
        tracker = Tracker(OmegaConf.to_container(cfg.tracking, resolve=True))
        key = eval_key(cfg)
        model_run, model_name = _model_run(str(cfg.model_ref), uri)
        name = cfg.tracking.run_name or " ".join(filter(None, [
            f"eval-{key.replace('_s', '-s', 1)}", model_name,
            f"({used} of {total} images)" if used < total else ""]))
        tags = {"structpred.task": "evaluate", "structpred.model_ref": str(cfg.model_ref),
                "structpred.eval_images": f"{used} of {total}"}
        if model_run:
            tags["structpred.model_run_id"] = model_run
        if model_run and not os.environ.get(PARENT_ENV):
            os.environ[PARENT_ENV] = model_run   # shown under the model's run in the UI
            try:
                tracker.start(run_name=name, tags=tags)
            finally:
                os.environ.pop(PARENT_ENV, None)
        else:
            tracker.start(run_name=name, tags=tags)
        try:
            tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
            tracker.log_metrics({f"eval/{key}/psnr": mean, f"eval/{key}/psnr_noisy": mean_noisy,
                                 f"eval/{key}/ssim": means[3], f"eval/{key}/ssim_noisy":
                                 means[2], f"eval/{key}/images": len(rows)}, 0)
            tracker.log_artifact(table)
            if cfg.save_images:
                import mlflow
                mlflow.log_artifacts(str(img_dir), artifact_path="images")
        except BaseException:
            tracker.end("FAILED")
            raise
        tracker.end("FINISHED")
    return mean


def ssim(y, t) -> float:
    """Structural similarity of ``y`` to the clean ``t`` (scikit-image, 0..255 range); NaN
    for images smaller than its 7x7 window."""
    from skimage.metrics import structural_similarity
    try:
        return float(structural_similarity(t, y, data_range=255.0))
    except ValueError:
        return float("nan")


def eval_key(cfg) -> str:
    """``<dataset>_s<sigma>`` of the MLflow metric keys ``eval/<dataset>_s<sigma>/psnr``: the
    split's folder (``bsd68``) or the data config's name (``skimage``)."""
    spec = cfg.data.get(cfg.split) or {}
    dataset = Path(str(spec.get("path"))).name if spec.get("path") else str(cfg.data.name)
    return f"{dataset}_s{float(cfg.data.sigma):g}"


def _images_used(spec) -> tuple[int, int]:
    """(images evaluated, images in the split without ``start``/``limit``)."""
    spec = spec or {}
    if spec.get("images") is not None:
        total = len(spec["images"])
    elif spec.get("path") is not None:
        total = len(list(Path(str(spec["path"])).glob(spec.get("glob") or "*.png")))
    else:
        return 0, 0
    start = int(spec.get("start") or 0)
    limit = spec.get("limit")
    used = max(0, total - start) if limit is None else min(int(limit), max(0, total - start))
    return used, total


def _model_run(ref: str, uri) -> tuple[str | None, str | None]:
    """(run id, run name) of the training run behind a model reference given as a run id
    or ``runs:/<id>/...``; for a shipped model or a file, (None, a short label): the name
    of ``pretrained:NAME``, the file's stem (its folder's name for a ``structpred_model.npz``),
    so that the evaluation's run name says which model it evaluated."""
    import re
    ref = ref.strip()
    m = re.fullmatch(r"(?:runs:/)?([0-9a-f]{32})(?:/.*)?", ref)
    if not m:
        if ref.startswith("pretrained:"):
            return None, ref[len("pretrained:"):]
        p = Path(ref)
        if p.suffix == ".npz" and p.stem != "structpred_model":
            return None, p.stem
        return None, (p.parent.name if p.suffix == ".npz" else p.name) or None
    try:
        import mlflow
        run = mlflow.MlflowClient(tracking_uri=uri).get_run(m.group(1))
        return m.group(1), run.info.run_name
    except Exception:  # noqa: BLE001 - the model was found; the name is a nicety
        return m.group(1), None


def _check_sigma(cfg, trained):
    """Warn when the test noise differs from the training noise: legitimate (a robustness
    study), but a model restores best the noise it was trained for, so say it."""
    trained_sigma = trained.meta.get("sigma")
    if trained_sigma is not None and float(trained_sigma) != float(cfg.data.sigma):
        log.warning("the model was trained at sigma %g but is evaluated at data.sigma=%g; "
                    "set data.sigma=%g to evaluate it on the noise it was trained for",
                    float(trained_sigma), float(cfg.data.sigma), float(trained_sigma))


def _task(cfg, trained):
    """The model's task, written into ``cfg.data.task`` (what the data are degraded with and
    what is logged); a ``data.task`` given by the user must agree with it (ConfigError)."""
    from structpred.data import task_for_model
    from structpred.errors import ConfigError
    requested = cfg.data.get("task")
    if isinstance(requested, DictConfig):
        requested = OmegaConf.to_container(requested, resolve=True)
    try:
        task = task_for_model(getattr(trained.model, "task", None), requested,
                              source="data.task")
    except ValueError as exc:
        raise ConfigError("data.task", str(exc).splitlines()[0]) from None
    with open_dict(cfg):
        cfg.data.task = task.as_dict()
    return task


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from structpred.training.app import guarded
    return guarded(evaluate, cfg)


if __name__ == "__main__":
    main()
