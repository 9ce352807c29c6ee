"""The paper-reproduction table: BSD68 PSNR of the shipped models beside the published ones.

Two commands::

    # evaluate every shipped model (structpred/shipped/) on all 68 BSD68 images, write
    # table.md, table.csv, per_image.csv, per_image.png and filters-<name>.png, and record
    # each model's BSD68 PSNR in its metadata (sp.pretrained(NAME).meta["bsd68_psnr"])
    # (each evaluation's per-image rows are kept in OUT/results/ under a digest of the
    # model, solver and images, and reused while those are unchanged: --fresh redoes all)
    python -m structpred.reproduce table [--out experiments/reproduce/table] [--limit N]
           [--models NAME ...] [--rounded] [--also-valid foe-48x7-s25] [--no-mlflow]
           [--fresh]

    # ship a training run's checkpoint (or model file) as the pretrained model NAME,
    # with its provenance (protocol, hours, the commits that trained it) in its metadata
    python -m structpred.reproduce ship NAME CHECKPOINT [--protocol TEXT]

Noise follows the published convention (``../shared/data/README.md``): clean + sigma N(0, 1)
in 0..255, not rounded (``--rounded``: the 8-bit regime), from a fixed seed per image
(:func:`structpred.data.noise.noise_rng`, the same noise as ``structpred.evaluate``); PSNR
= 10 log10(255^2 / MSE) in dB, averaged over the images. Images are denoised one per
thread with single-threaded kernels (both cores busy). ``--also-valid NAME`` adds the row
of NAME's parameters under the 'valid' boundary (no padding), to show what the boundary
handling is worth.

Errors (unknown model, missing data folder, bad option) are one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger("structpred.reproduce")

SIGMAS = (15, 25, 50)
#: published BSD68 PSNR (dB), unrounded noise (../shared/data/README.md)
PUBLISHED = {
    "BM3D": {15: 31.07, 25: 28.57, 50: 25.62},
    "FoE 24x5x5, Gao & Roth 2012 (sampling)": {15: 30.99, 25: 28.40, 50: 25.35},
    "opt-MRF 48x7x7, Chen et al. 2013 (bilevel)": {15: 31.18, 25: 28.66, 50: 25.70},
}
#: the yardstick each of our models is held to (issue 12)
YARDSTICK = {"foe-48x7": "opt-MRF 48x7x7, Chen et al. 2013 (bilevel)",
             "foe-24x5": "FoE 24x5x5, Gao & Roth 2012 (sampling)"}


class UsageError(Exception):
    """A bad option or missing input: one line, exit 2."""


def _family(name: str) -> tuple[str, int]:
    """("foe-48x7", 25) of "foe-48x7-s25" (or of a label "foe-48x7-s25 (valid)")."""
    stem, _, s = name.split(" ")[0].rpartition("-s")
    return stem, int(s)


def default_data_root() -> Path:
    """The apps' ``paths.data_dir`` (``$STRUCTPRED_DATA``, else ``../shared/data`` beside the
    checkout the command runs in, else ``./data``)."""
    from structpred.configs import default_data_dir
    return Path(default_data_dir())


def load_bsd68(root: Path, sigma: float, *, limit=None, rounded=False, seed=0):
    """(names, clean, noisy) of BSD68 with the evaluation noise (split "test", seed 0)."""
    from structpred.data import DataError
    from structpred.data.datasets import load_split
    try:
        ds = load_split("test", {"path": str(Path(root) / "bsd68"), "glob": "*.png",
                                 "limit": limit}, sigma=sigma, seed=seed, rounded=rounded)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    return ds.names, ds.clean, ds.noisy


def denoise_batch(trained, images, threads: int | None = None, progress=None, inner=None,
                  names=None):
    """``argmin_y E`` of every image, one image per thread (single-threaded kernels).
    ``inner``: an :class:`structpred.solvers.monitor.InnerProgress` that watches each solve
    (labelled by ``names``)."""
    import numba

    threads = numba.get_num_threads() if threads is None else int(threads)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]

    def one(i):
        # one image per thread: serial kernels; one at a time: row-parallel kernels
        energy = trained.model.bind(images[i], trained.theta, parallel=threads <= 1)
        if inner is None:
            r = trained.solver.minimize(energy)
        else:
            with inner.track(names[i]) as monitor:
                r = trained.solver.minimize(energy, monitor=monitor)
        if progress is not None:
            progress()
        return r
    if threads <= 1:
        return [one(i) for i in range(len(images))]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(images))))


def evaluation_key(trained, names, clean, noisy) -> str:
    """sha256 of everything an evaluation's numbers depend on: the model (its config and
    parameters), the solver and its tolerances, and the images (names, clean and noisy
    pixels, so the noise seed and rounding are in it). Not the engine's code: a commit that
    changes the solver's last bits keeps the key (the cache records the commit it ran at)."""
    import hashlib
    import json
    from dataclasses import asdict
    h = hashlib.sha256()
    h.update(json.dumps({"model": [trained.model.name, trained.model.config()],
                         "solver": [type(trained.solver).__name__, asdict(trained.solver)],
                         "images": list(names)}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(trained.theta, dtype=np.float64).tobytes())
    for a in (*clean, *noisy):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


def _cache_file(cache_dir: Path, label: str, rounded: bool, n: int) -> Path:
    slug = label.replace(" (valid)", "-valid").replace(" ", "_")
    return Path(cache_dir) / f"{slug}{'-rounded' if rounded else ''}-{n}.json"


def evaluate_model(name, trained, root, *, limit=None, rounded=False, threads=None,
                   cache_dir=None, fresh=False):
    """Per-image PSNR (dB) of ``trained`` on BSD68 at its training sigma, and timing:
    ``(sigma, rows, seconds, reused)``.

    With ``cache_dir``, the rows are kept there as JSON under the :func:`evaluation_key`
    (one file per model label, rounding and image count) and reused when the key matches
    (``fresh``: evaluate anyway): regenerating the table after one model changed then
    evaluates only that model."""
    import json

    from tqdm import tqdm

    from structpred.losses import psnr
    from structpred.provenance import code_commit
    from structpred.solvers.monitor import InnerProgress, bar_reporter
    sigma = float(trained.meta.get("sigma", _family(name)[1]))
    names, clean, noisy = load_bsd68(root, sigma, limit=limit, rounded=rounded)
    cache = key = None
    if cache_dir is not None:
        cache, key = _cache_file(cache_dir, name, rounded, len(names)), \
            evaluation_key(trained, names, clean, noisy)
        if not fresh and cache.is_file():
            try:
                got = json.loads(cache.read_text())
            except (OSError, ValueError):
                got = {}
            if got.get("key") == key:
                log.info("%s: reusing the evaluation of %s (commit %s; --fresh to redo)",
                         name, cache, got.get("commit"))
                return sigma, got["rows"], float(got["seconds"]), True
    t0 = time.perf_counter()
    with tqdm(total=len(noisy), desc=name, unit="img", file=sys.stderr) as bar, \
            InnerProgress(bar_reporter(bar), after=2.0) as inner:
        # the bar's postfix: each image solved for more than 2 s (iteration, |grad E|, ETA)
        results = denoise_batch(trained, noisy, threads, progress=bar.update, inner=inner,
                                names=names)
    seconds = time.perf_counter() - t0
    rows = [dict(image=n, psnr_noisy=psnr(x, t), psnr=psnr(r.y, t), iterations=r.iterations,
                 converged=bool(r.converged)) for n, x, t, r in zip(names, noisy, clean,
                                                                      results)]
    if cache is not None:
        from structpred.fileio import write_atomic
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"key": key, "model": name, "sigma": sigma,
                                        "rounded": bool(rounded), "seconds": seconds,
                                        "commit": code_commit(), "rows": rows},
                                       indent=1).encode())
    return sigma, rows, seconds, False


def table(args) -> Path:
    """Evaluate the models, write the tables and figures, log to MLflow; returns the folder."""
    import dataclasses

    from structpred import shipped as reg
    from structpred.tracking import plots
    names = args.models or reg.available()
    if not names:
        raise UsageError(f"no shipped models in {reg.folder()}: train and ship one first "
                         "(python -m structpred.reproduce ship NAME CHECKPOINT)")
    root = Path(args.data) if args.data else default_data_root()
    if not (root / "bsd68").is_dir():
        raise UsageError(f"{root / 'bsd68'}: no such folder (--data or STRUCTPRED_DATA "
                         "points at the folder holding bsd68/)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ours, per_image, timing = {}, {}, {}
    jobs = [(n, False) for n in names] + [(n, True) for n in (args.also_valid or [])]
    for name, as_valid in jobs:
        try:
            trained = reg.pretrained(name)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        label = name
        if as_valid:
            from structpred.models import make_model
            cfg = {k: v for k, v in trained.model.config().items() if k not in ("boundary",
                                                                                 "pad")}
            trained = dataclasses.replace(trained, model=make_model(trained.model.name, **cfg))
            label = f"{name} (valid)"
        sigma, rows, seconds, reused = evaluate_model(
            label, trained, root, limit=args.limit, rounded=args.rounded,
            threads=args.threads, cache_dir=out / "results", fresh=args.fresh)
        mean = float(np.mean([r["psnr"] for r in rows]))
        ours[label] = (int(sigma), mean, trained.meta)
        per_image[label] = rows
        timing[label] = seconds
        log.info("%s: mean PSNR %.3f dB on %d images at sigma %g (%.0f s%s)", label, mean,
                 len(rows), sigma, seconds, ", reused" if reused else "")
        if not as_valid and args.limit is None and not args.rounded and args.record:
            _record_psnr(name, trained, mean, len(rows))
        if not as_valid and getattr(trained.model, "filter_size", 0) >= 3 and \
                hasattr(trained.model, "basis"):
            plots.plot_filters(trained.model, trained.theta, out / f"filters-{name}.png")
        if args.mlflow and not reused:
            _log_run(label, trained, sigma, rows, mean, seconds, args)
    n_images = len(next(iter(per_image.values())))
    md = _markdown(ours, timing, n_images, args.rounded)
    (out / "table.md").write_text(md)
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", *[f"sigma{s}" for s in SIGMAS], "source", "images"])
        for method, vals in PUBLISHED.items():
            w.writerow([method, *[f"{vals[s]:.2f}" for s in SIGMAS], "published", 68])
        for label, (sigma, mean, _) in ours.items():
            w.writerow([label, *[f"{mean:.4f}" if s == sigma else "" for s in SIGMAS],
                        "structpred", n_images])
    with open(out / "per_image.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "image", "psnr_noisy", "psnr", "inner_iterations", "converged"])
        for label, rows in per_image.items():
            for r in rows:
                w.writerow([label, r["image"], f"{r['psnr_noisy']:.4f}", f"{r['psnr']:.4f}",
                            r["iterations"], int(r["converged"])])
    _plot_per_image(per_image, out / "per_image.png")
    print(md, flush=True)
    print(f"written: {out}/table.md, table.csv, per_image.csv, per_image.png", flush=True)
    return out


def _record_psnr(name, trained, mean, n_images):
    """Write the measured BSD68 PSNR into the shipped model's metadata (the model file is
    rewritten atomically; its parameters are unchanged)."""
    from structpred import shipped as reg
    from structpred.tracking.model_io import save_model
    meta = dict(trained.meta, bsd68_psnr=round(mean, 4), bsd68_images=n_images,
                bsd68_noise="unrounded, seed 0")
    save_model(reg.path(name), trained.model, trained.theta, solver=trained.solver, meta=meta)


def _markdown(ours, timing, n_images, rounded) -> str:
    regime = "rounded to 8 bit" if rounded else "not rounded"
    lines = [f"BSD68 mean PSNR (dB), {n_images} images, noise {regime} (seed 0); "
             "published figures on all 68 images, unrounded.", "",
             "| method | sigma 15 | sigma 25 | sigma 50 | yardstick: distance (dB) | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for method, vals in PUBLISHED.items():
        lines.append(f"| {method} (published) | " + " | ".join(f"{vals[s]:.2f}" for s in SIGMAS)
                     + " | | |")
    for label, (sigma, mean, meta) in ours.items():
        cells = [f"**{mean:.2f}**" if s == sigma else "" for s in SIGMAS]
        fam = _family(label)[0]
        yard = YARDSTICK.get(fam)
        dist = (f"{mean - PUBLISHED[yard][sigma]:+.2f} vs {yard.split(',')[0]}"
                if yard and sigma in PUBLISHED[yard] else "report")
        lines.append(f"| structpred {label} | " + " | ".join(cells)
                     + f" | {dist} | {timing[label]:.0f} |")
    return "\n".join(lines) + "\n"


def _plot_per_image(per_image, path):
    from structpred.tracking.plots import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, rows in per_image.items():
        gain = [r["psnr"] - r["psnr_noisy"] for r in rows]
        ax.plot(range(1, len(rows) + 1), gain, marker=".", lw=0.8, label=label)
    ax.set_xlabel("BSD68 image")
    ax.set_ylabel("PSNR gain over the noisy image (dB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_run(label, trained, sigma, rows, mean, seconds, args):
    from structpred.tracking.mlflow_tracker import Tracker
    from structpred.configs import default_tracking_uri
    uri = args.tracking_uri or default_tracking_uri()
    tracker = Tracker({"uri": uri, "experiment": "structpred-reproduce", "enabled": True})
    tag = f"bsd68_s{int(sigma)}"
    tracker.start(run_name=f"table {label} on {len(rows)} BSD68 images",
                  tags={"structpred.task": "evaluate", "structpred.model_ref":
                        f"pretrained:{label.split(' ')[0]}"})
    tracker.log_params({"model": label, "images": len(rows), "sigma": sigma,
                        "rounded": bool(args.rounded)})
    tracker.log_metrics({f"eval/{tag}/psnr": mean, f"eval/{tag}/seconds": seconds}, 0)
    tracker.end("FINISHED")


def ship(args) -> Path:
    """Write the pretrained model NAME from a training checkpoint (or a model file)."""
    from structpred import shipped as reg
    from structpred.provenance import code_commit, describe_commits
    from structpred.tracking.model_io import ModelFileError, read_model_file, save_model
    from structpred.training.checkpoint import CheckpointError, load_latest
    src = Path(args.checkpoint)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    # refusals that depend on the arguments only: before the source is read
    if args.name not in reg.NAMES and not args.force:
        raise UsageError(f"{args.name}: not one of the reproduction's names {reg.NAMES} "
                         "(--force to ship it anyway)")
    dest = reg.folder() / f"{args.name}.npz"
    if dest.exists() and not args.force:
        try:
            old = read_model_file(dest).meta
            was = (f"{old.get('iterations')} outer iterations, BSD68 "
                   f"{old.get('bsd68_psnr', 'not measured')} dB")
        except ModelFileError:
            was = "not a readable model file"
        raise UsageError(f"{dest}: a shipped model of that name exists ({was}); --force to "
                         "replace it (its BSD68 figure is measured again by `table`)")
    meta = {}
    try:
        trained = read_model_file(src)
        model, theta, solver, meta = trained.model, trained.theta, trained.solver, \
            dict(trained.meta)
    except ModelFileError:
        try:
            _, _, state, ck, _ = load_latest(src, with_extra=True)
        except (FileNotFoundError, CheckpointError) as exc:
            raise UsageError(f"{src}: neither a model file nor a checkpoint ({exc})") from None
        from omegaconf import OmegaConf

        from structpred.training import config as C
        cfg = OmegaConf.create(ck["config"])
        model, solver, theta = C.build_model(cfg), C.build_solver(cfg), state.theta
        hist = ck.get("history", [])
        meta = {"sigma": float(cfg.data.sigma), "iterations": int(state.iteration),
                "hours": round(float(ck.get("elapsed", 0.0)) / 3600, 2),
                "training_data": _describe_data(cfg),
                "train_psnr": hist[-1].get("train_psnr") if hist else None,
                "val_psnr": next((h["val_psnr"] for h in reversed(hist) if "val_psnr" in h),
                                 None),
                "mlflow_run_id": ck.get("run_id"),
                "protocol": _describe_protocol(cfg, int(state.iteration))}
        if ck.get("commits"):
            meta["commit"] = describe_commits(ck["commits"])
    if "commit" not in meta:    # a checkpoint from before commits were recorded
        meta["commit"] = f"{code_commit()} (when shipped; the checkpoint records none)"
    meta.update({"name": args.name, "source": str(src)})
    if args.protocol:
        meta["protocol"] = args.protocol
    save_model(dest, model, theta, solver=solver, meta=meta)
    print(f"shipped {dest} ({model!r}, {meta.get('iterations')} outer iterations)")
    return dest


def _describe_protocol(cfg, iterations: int) -> str:
    """One line of what trained the model, from the checkpoint's resolved config."""
    sol, grad = cfg.solver, cfg.gradient
    parts = [_describe_data(cfg),
             f"boundary {cfg.model.get('boundary', 'valid')}",
             f"inner {sol.get('name', 'lbfgs')} gtol {sol.get('gtol')} (absolute)"
             + (f" rtol {sol.get('rtol')}" if sol.get("rtol") else ""),
             f"{grad.get('name', 'implicit')} gradient rtol {grad.get('rtol')}",
             f"outer {cfg.optimizer.get('name', '?')}, {iterations} outer iterations"]
    init = cfg.get("init", {}).get("from") if cfg.get("init") else None
    if init:
        parts.append(f"initialised from {init}")
    return "experiments/reproduce/README.md: " + ", ".join(str(p) for p in parts)


def _describe_data(cfg) -> str:
    tr = cfg.data.train
    crop = f"{tr.crop}x{tr.crop} crops" if tr.get("crop") else "whole images"
    return (f"{Path(str(tr.path)).name}[{tr.get('start', 0)}:+{tr.get('limit')}] {crop}, "
            f"sigma {cfg.data.sigma}, noise seed {cfg.data.seed}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m structpred.reproduce",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="evaluate the shipped models on BSD68, write the table")
    t.add_argument("--out", default="experiments/reproduce/table",
                   help="folder for table.md/.csv, per_image.csv/.png and the filter figures")
    t.add_argument("--models", nargs="*", help="names (default: every shipped model)")
    t.add_argument("--limit", type=int, default=None, help="first N images only")
    t.add_argument("--rounded", action="store_true", help="noisy images rounded to 8 bit")
    t.add_argument("--also-valid", nargs="*", default=[], help="also evaluate these models "
                   "under the 'valid' boundary")
    t.add_argument("--data", default=None, help="folder holding bsd68/ (default "
                   "$STRUCTPRED_DATA or ../shared/data)")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    t.add_argument("--no-record", dest="record", action="store_false",
                   help="do not write the measured PSNR into the shipped models' metadata "
                   "(written only for all images, unrounded)")
    t.add_argument("--tracking-uri", default=None)
    t.add_argument("--fresh", action="store_true", help="evaluate every model again, even "
                   "where OUT/results/ holds an evaluation with the same model, solver and "
                   "images")
    s = sub.add_parser("ship", help="ship a checkpoint or model file as a pretrained model")
    s.add_argument("name")
    s.add_argument("checkpoint")
    s.add_argument("--protocol", default=None)
    s.add_argument("--force", action="store_true",
                   help="replace a shipped model of the same name, or ship a name that is not "
                   "one of the reproduction's")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "table" and args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit must be a positive integer, got {args.limit}")
        (table if args.command == "table" else ship)(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
