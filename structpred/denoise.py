"""Denoise your own image files with a trained model, a file, a folder or a glob at a time.

    python -m structpred.denoise MODEL INPUT [INPUT ...] [-o OUTDIR] [--add-noise SIGMA]
                                 [--gray] [--range LO,HI] [--overwrite]

MODEL is an MLflow run id, ``runs:/<id>``, a ``structpred_model.npz`` or a run folder. Each
INPUT is an image file, a folder (its image files, not recursive) or a glob pattern
(``'scans/*.tif'``). Pixel values and channels follow the rule of
:mod:`structpred.data.images` (README "Your own images"): uint8 and uint16 by their range,
floats in 0..1 or 0..255, ``--range LO,HI`` to say it; colour needs ``--gray``. Each image is
written as ``OUTDIR/<name>_denoised.<png|tif>`` in the input's bit depth and range (a TIFF
stays a TIFF; a JPEG becomes a lossless PNG). An existing output is never replaced without
``--overwrite``; two inputs with the same name (``a.png``, ``a.tif``) get their extension in
the output name (``a_png_denoised.png``, ``a_tif_denoised.tif``).

Every file is processed; each failure is one line on stderr; a summary (ok / failed, time per
image) ends the run. Exit status: 0 all done, 2 the model could not be loaded or any file
failed.

``--add-noise SIGMA`` first degrades a clean image as the model was trained to undo (its task,
stored in the model file: noise only, or the inpainting mask, or the blur, then Gaussian noise
of seed ``--seed``, SIGMA on the 0..255 scale), writes it as ``<name>_noisy.<ext>`` and
reports the PSNR against the clean image. Without it, each INPUT is the observation itself
(for an inpainting model the pixels outside the model's mask are ignored and restored).
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: images with more pixels than this get a note "large image, solving" when there is no bar
LARGE_IMAGE = 256 * 256
#: a solve running longer than this (seconds) shows its inner progress: iteration,
#: ||grad E|| against the tolerance, ETA (bar postfix, or a line every INNER_EVERY seconds)
INNER_AFTER = 2.0
INNER_INTERVAL = 0.5        #: how often the inner progress is read (seconds)
INNER_EVERY = 10.0          #: seconds between two inner progress lines without a bar


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m structpred.denoise",
        description="Denoise image files with a trained structpred model.",
        epilog="Pixel values: uint8 0..255, uint16 0..65535, float 0..1 or 0..255 by their "
               "values, other integers if within 0..255; --range LO,HI says it instead. "
               "See README 'Your own images'.")
    p.add_argument("model", help="pretrained:NAME (a shipped model, e.g. pretrained:foe-24x5-s25), "
                   "an MLflow run id, runs:/<id>, structpred_model.npz or a run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their images) or glob patterns")
    p.add_argument("-o", "--out", default="denoised", help="output folder (default: denoised)")
    p.add_argument("--add-noise", type=float, default=None, metavar="SIGMA",
                   help="degrade the image first with the model's task (mask or blur, if any) "
                        "and N(0, SIGMA^2) noise on the 0..255 scale (to try a model on a "
                        "clean image)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --add-noise")
    p.add_argument("--gray", action="store_true",
                   help="convert colour images to gray (luminance); without it colour is an "
                        "error")
    p.add_argument("--range", default=None, metavar="LO,HI",
                   help="the input's pixel range (e.g. 0,1 or 0,4095) instead of the rule by "
                        "dtype; LO maps to black and HI to white")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: never; such a file fails)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show the progress bar (default: only on a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store to find a run id in (default: STRUCTPRED_MLFLOW_URI or "
                        "<project root>/mlruns/mlflow.db)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- inputs
@dataclass
class Job:
    """One input file and what becomes of it."""

    source: Path
    index: int = 0                      # the noise stream of --add-noise
    tag: str = ""                       # extra name part when two inputs share a stem
    error: str | None = None
    written: list = field(default_factory=list)
    seconds: float = 0.0


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(items) -> tuple[list[Path], list[str]]:
    """Files named by ``items`` (files, folders, glob patterns), in order and without
    duplicates, and one error line per item that names nothing."""
    from structpred.data.images import IMAGE_SUFFIXES
    files, errors, seen = [], [], set()

    def add(p: Path):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                           and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{p}: folder without image files ({', '.join(IMAGE_SUFFIXES)})")
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        elif _is_glob(item):
            found = sorted(Path(q) for q in glob.glob(item) if Path(q).is_file())
            if not found:
                errors.append(f"{item}: no file matches this pattern")
            for q in found:
                add(q)
        else:
            errors.append(f"{p}: no such file or folder")
    return files, errors


def plan_names(files) -> list[Job]:
    """A job per file; files that share a stem get their extension in the output name, and a
    file whose output name would still equal an earlier one's fails (nothing is overwritten
    by another input of the same run)."""
    from collections import Counter
    stems = Counter(f.stem for f in files)
    jobs, names = [], {}
    for i, f in enumerate(files):
        job = Job(source=f, index=i, tag=f"_{f.suffix.lower().lstrip('.')}" if stems[f.stem] > 1 else "")
        key = f.stem + job.tag
        if key in names:
            job.error = (f"{f}: same output name as {names[key]}; give them separate -o "
                         "folders or rename one")
        else:
            names[key] = f
        jobs.append(job)
    return jobs


# ---------------------------------------------------------------------------- progress
def _inner_progress(bar):
    """The inner solve's progress (:class:`structpred.solvers.monitor.InnerProgress`) of an
    image solved for more than :data:`INNER_AFTER` seconds: the bar's postfix (iteration,
    ||grad E|| against the tolerance, elapsed time and ETA), or, with no bar, the same as a
    line every :data:`INNER_EVERY` seconds."""
    from structpred.solvers.monitor import InnerProgress, bar_reporter, line_reporter
    if bar is not None and not bar.disable:
        report = bar_reporter(bar)
    else:
        report = line_reporter(lambda line: print(line, flush=True), every=INNER_EVERY)
    return InnerProgress(report, after=INNER_AFTER, interval=INNER_INTERVAL)


def _bar(total: int, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; a stripped install still works
        return None
    return tqdm(total=total, desc="images", unit="img", file=sys.stderr,
                disable=(None if enabled is None else not enabled), leave=False)


# ---------------------------------------------------------------------------- one image
def _psnr_text(x, y, clean) -> str:
    from structpred.losses import psnr
    if clean is None:
        return ""
    before = psnr(x, clean)
    after = psnr(y, clean)
    if np.isinf(before):
        # --add-noise 0 with a denoising model: the input is the clean image itself
        return (f"; no noise was added (--add-noise 0), so the input is the clean image; "
                f"denoised vs input: PSNR {after:.2f} dB")
    return f"; PSNR against the clean input: noisy {before:.2f} dB -> denoised {after:.2f} dB"


def run_job(job: Job, trained, task, args, out: Path, value_range, monitor=None) -> str:
    """Denoise one file; returns the report line. Raises DataError/ValueError/OSError."""
    from structpred.data.images import CLI_HINTS, encode, read_image_file, write_bytes
    from structpred.data.noise import noise_rng
    x, info = read_image_file(job.source, value_range=value_range, gray=args.gray,
                              hints=CLI_HINTS)
    for note in info.notes:
        print(f"note: {job.source}: {note}", flush=True)
    need = trained.model.min_image_shape()
    if x.shape[0] < need[0] or x.shape[1] < need[1]:
        raise ValueError(f"{job.source}: image of shape {x.shape} is smaller than the model's "
                         f"filter ({need[0]}x{need[1]})")
    stem = job.source.stem + job.tag
    dst = out / f"{stem}_denoised{info.suffix}"
    targets = [dst]
    if args.add_noise is not None:
        targets.append(out / f"{stem}_noisy{info.suffix}")
    for t in targets:
        if t.exists() and not args.overwrite:
            raise FileExistsError(f"{job.source}: {t} exists; not overwritten (use "
                                  "--overwrite, or another -o folder)")
    out.mkdir(parents=True, exist_ok=True)       # only once there is something to write
    clean = None
    if args.add_noise is not None:
        clean, x = x, task.degrade(x, args.add_noise,
                                   noise_rng(args.seed, "user", job.index))
        job.written.append(write_bytes(targets[1], encode(x, info), overwrite=args.overwrite))
    y = trained.denoise255(x, monitor=monitor)
    job.written.insert(0, write_bytes(dst, encode(y, info), overwrite=args.overwrite))
    return f"{job.source} ({info.describe()}) -> {dst}{_psnr_text(x, y, clean)}"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    from structpred.data import DataError, make_task
    from structpred.data.images import parse_range
    from structpred.tracking.model_io import ModelFileError, load_model

    try:
        value_range = parse_range(args.range, "--range")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.add_noise is not None and not (np.isfinite(args.add_noise) and args.add_noise >= 0):
        print(f"error: --add-noise: must be a finite SIGMA >= 0, got {args.add_noise}",
              file=sys.stderr)
        return 2
    try:
        from structpred.configs import default_tracking_uri
        trained = load_model(args.model, tracking_uri=args.tracking_uri or default_tracking_uri())
    except (FileNotFoundError, OSError, ModelFileError) as exc:
        print(f"error: model: {exc}", file=sys.stderr)
        return 2
    files, missing = expand_inputs(args.inputs)
    for line in missing:
        print(f"error: {line}", file=sys.stderr)
    jobs = plan_names(files)
    task = make_task(getattr(trained.model, "task", None))   # the task the model was trained for
    if not task.identity:
        print(f"model task: {task.describe()}", flush=True)
    out = Path(args.out)
    todo = [j for j in jobs if j.error is None]
    refused = len(jobs) - len(todo) + len(missing)   # counted as failed in the summary
    if todo:
        print(f"{len(todo)} image(s) -> {out}/"
              + (f" ({refused} input(s) refused before starting, see the errors)"
                 if refused else ""), flush=True)
    bar = _bar(len(jobs), args.progress)
    inner = _inner_progress(bar)
    start = time.perf_counter()
    for job in jobs:
        if job.error is None:
            t0 = time.perf_counter()
            try:
                if (bar is None or bar.disable) and np.prod(_shape_hint(job.source)) > LARGE_IMAGE:
                    print(f"{job.source.name}: large image, solving (this can take minutes) "
                          "...", flush=True)
                with inner.track(job.source.name) as monitor:
                    line = run_job(job, trained, task, args, out, value_range, monitor)
                job.seconds = time.perf_counter() - t0
                _say(bar, f"{line} [{job.seconds:.1f} s]")
            except (DataError, ValueError, OSError) as exc:
                job.seconds = time.perf_counter() - t0
                job.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if str(job.source) not in job.error:
                    job.error = f"{job.source}: {job.error}"
        if job.error is not None:
            _say(bar, f"error: {job.error}", err=True)
        if bar is not None:
            bar.update(1)
    inner.close()
    if bar is not None:
        bar.close()
    ok = [j for j in jobs if j.error is None]
    failed = len(jobs) - len(ok) + len(missing)
    total = time.perf_counter() - start
    times = ", ".join(f"{j.source.name} {j.seconds:.1f} s" for j in ok)
    print(f"summary: {len(ok)} ok, {failed} failed, {total:.1f} s"
          + (f" (per image: {times})" if ok else ""), flush=True)
    return 0 if failed == 0 and ok else 2


def _shape_hint(path: Path) -> tuple[int, int]:
    """(H, W) from the file header when cheap to get, else (0, 0)."""
    try:
        import imageio.v3 as iio
        shape = iio.improps(path).shape
        return tuple(shape[:2]) if len(shape) >= 2 else (0, 0)
    except Exception:
        return (0, 0)


def _say(bar, text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    if bar is not None and not bar.disable:
        bar.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


if __name__ == "__main__":
    sys.exit(main())
