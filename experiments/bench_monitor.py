"""Overhead of watching an inner solve (issue 14): one BSD68 image (481x321) denoised with the
reproduction's FoE 24x5x5 (sigma 25, its checkpoint in experiments/reproduce/), its own inner
solver, with and without a :class:`structpred.solvers.monitor.SolveMonitor` read by an
:class:`InnerProgress` thread every 0.5 s (as ``denoise`` does), alternated, median of N.

    python experiments/bench_monitor.py [--repeats 5] [--image test001] [--gtol G]
        [--variants off,on,buffer,thread] [--crop SIZE] [--pause-while FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image", default="test001")
    ap.add_argument("--checkpoint", default=str(ROOT / "experiments/reproduce/foe-24x5-s25/last.npz"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/bsd68"))
    ap.add_argument("--gtol", type=float, default=None, help="override the checkpoint's solver gtol")
    ap.add_argument("--variants", default="off,on",
                    help="comma-separated, first the baseline: off (no monitor), on (monitor + "
                         "polling thread), buffer (monitor, no thread), thread (thread only)")
    ap.add_argument("--crop", type=int, default=None, help="a centred SIZE x SIZE crop")
    ap.add_argument("--pause-while", default=None, metavar="FILE",
                    help="before each solve, wait while FILE exists (a shared machine's "
                         "'quiet, measuring' flag)")
    args = ap.parse_args(argv)

    import dataclasses

    import imageio.v3 as iio
    from omegaconf import OmegaConf

    from structpred.data.noise import noise_rng
    from structpred.solvers.monitor import InnerProgress, SolveMonitor
    from structpred.training import config as C
    from structpred.training.checkpoint import load_latest

    _, _, state, ck, _ = load_latest(Path(args.checkpoint), with_extra=True)
    cfg = OmegaConf.create(ck["config"])
    model, solver = C.build_model(cfg), C.build_solver(cfg)
    if args.gtol is not None:
        solver = dataclasses.replace(solver, gtol=args.gtol)
    clean = iio.imread(Path(args.data) / f"{args.image}.png").astype(np.float64)
    if args.crop:
        i, j = (clean.shape[0] - args.crop) // 2, (clean.shape[1] - args.crop) // 2
        clean = clean[i:i + args.crop, j:j + args.crop]
    sigma = float(cfg.data.sigma)
    noisy = clean + sigma * noise_rng(0, "test", 0).normal(size=clean.shape)
    energy = model.bind(noisy, state.theta)
    print(f"{args.image} {clean.shape}, {model!r}, sigma {sigma:g}, {solver}", flush=True)
    solver.minimize(model.bind(noisy[:40, :40], state.theta))     # load/compile first

    lines = []
    modes = args.variants.split(",")
    times = {m: [] for m in modes}
    cpu = {m: [] for m in modes}        # process CPU seconds (all threads, the poller's too)
    ref = None
    with InnerProgress(lines.append, after=0.0, interval=0.5) as progress:
        for k in range(args.repeats):
            for mode in (modes if k % 2 == 0 else modes[::-1]):
                while args.pause_while and Path(args.pause_while).exists():
                    time.sleep(20)
                t0, c0 = time.perf_counter(), time.process_time()
                if mode == "on":            # the monitor, read by the polling thread
                    with progress.track(args.image) as m:
                        r = solver.minimize(energy, monitor=m)
                elif mode == "buffer":      # the monitor written, nobody reading it
                    r = solver.minimize(energy, monitor=SolveMonitor())
                elif mode == "thread":      # the polling thread, on a monitor the solve ignores
                    with progress.track(args.image):
                        r = solver.minimize(energy)
                else:
                    r = solver.minimize(energy)
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
                if ref is None:
                    ref = r
                assert np.array_equal(r.y, ref.y) and r.iterations == ref.iterations
                print(f"  {mode:6s} {times[mode][-1]:.3f} s, CPU {cpu[mode][-1]:.3f} s "
                      f"({r.message})", flush=True)
    base = modes[0]
    print(f"{clean.shape[0]}x{clean.shape[1]}, {ref.iterations} iterations, {ref.n_evals} "
          f"evaluations; results identical bit for bit; load average (1 min) at the end "
          f"{os.getloadavg()[0]:.1f}; medians of {args.repeats}, alternated:", flush=True)
    for mode in modes:
        w, c = statistics.median(times[mode]), statistics.median(cpu[mode])
        w0, c0 = statistics.median(times[base]), statistics.median(cpu[base])
        # each repeat's modes ran back to back: their ratio cancels slow drifts of the load
        pair = statistics.median(a / b for a, b in zip(times[mode], times[base]))
        print(f"  {mode:6s} wall {w:.3f} s ({100 * (w / w0 - 1):+.2f}%), CPU {c:.3f} s "
              f"({100 * (c / c0 - 1):+.2f}%), median ratio to {base} within a repeat "
              f"{pair:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
