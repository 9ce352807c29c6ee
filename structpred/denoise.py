"""Denoise your own image files with a trained model.

    python -m structpred.denoise MODEL IMAGE [IMAGE ...] [-o OUTDIR] [--add-noise SIGMA]

MODEL is an MLflow run id, ``runs:/<id>``, a ``structpred_model.npz`` or a run folder. Each
IMAGE (grayscale PNG/JPEG/TIFF, 0..255) is written as ``OUTDIR/<name>_denoised.png``.
``--add-noise SIGMA`` first degrades a clean image as the model was trained to undo (its task,
stored in the model file: noise only, or the inpainting mask, or the blur, then Gaussian noise
of seed ``--seed``), to try a model on a clean photograph; with ``--gray`` colour images are
converted to gray. Without it, each IMAGE is the observation itself (for an inpainting model
the pixels outside the model's mask are ignored and restored).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m structpred.denoise",
                                description="Denoise image files with a trained structpred model.")
    p.add_argument("model", help="MLflow run id, runs:/<id>, structpred_model.npz or run folder")
    p.add_argument("images", nargs="+", help="grayscale image files")
    p.add_argument("-o", "--out", default="denoised", help="output folder (default: denoised)")
    p.add_argument("--add-noise", type=float, default=None, metavar="SIGMA",
                   help="degrade the image first with the model's task (mask or blur, if any) "
                        "and N(0, SIGMA^2) noise (for trying a model on a clean image)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --add-noise")
    p.add_argument("--gray", action="store_true", help="convert colour images to gray")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store to find a run id in (default: STRUCTPRED_MLFLOW_URI or "
                        "<project root>/mlruns/mlflow.db)")
    return p.parse_args(argv)


def _read(path: Path, gray: bool) -> np.ndarray:
    from structpred.data.datasets import DataError, read_image
    try:
        return read_image(path)
    except DataError:
        if not gray:
            raise
    import imageio.v3 as iio
    from skimage import color
    img = np.asarray(iio.imread(path))
    return color.rgb2gray(img[..., :3]) * 255.0


def default_tracking_uri() -> str:
    import os

    from structpred.training.config import project_root
    return os.environ.get("STRUCTPRED_MLFLOW_URI",
                          f"sqlite:///{project_root()}/mlruns/mlflow.db")


def main(argv=None) -> int:
    args = parse_args(argv)
    import imageio.v3 as iio

    from structpred.data import DataError, make_task
    from structpred.data.noise import noise_rng
    from structpred.losses import psnr
    from structpred.tracking.model_io import ModelFileError, load_model
    try:
        trained = load_model(args.model, tracking_uri=args.tracking_uri or default_tracking_uri())
    except (FileNotFoundError, OSError, ModelFileError) as exc:
        print(f"error: model: {exc}", file=sys.stderr)
        return 2
    task = make_task(getattr(trained.model, "task", None))   # the task the model was trained for
    if not task.identity:
        print(f"model task: {task.describe()}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(args.images):
        try:
            x = _read(Path(name), args.gray)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        clean = None
        if args.add_noise is not None:
            clean, x = x, task.degrade(x, args.add_noise, noise_rng(args.seed, "user", i))
            iio.imwrite(out / f"{Path(name).stem}_noisy.png",
                        np.clip(np.round(x), 0, 255).astype(np.uint8))
        y = trained.denoise(x)
        dst = out / f"{Path(name).stem}_denoised.png"
        iio.imwrite(dst, np.clip(np.round(y), 0, 255).astype(np.uint8))
        extra = "" if clean is None else (f" (PSNR {psnr(x, clean):.2f} -> "
                                          f"{psnr(y, clean):.2f} dB)")
        print(f"{name} -> {dst}{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
