"""How loose may the MAP solve of an *evaluation* be? PSNR and iterations against the inner
tolerance (absolute ||grad_y E||_2) for a shipped model on the first BSD68 images (issue 12:
one model on all 68 images in at most 15 minutes).

The reference is a solve to ``--ref`` (default 1e-6); for each tolerance it prints the
PSNR (dB), its distance to the reference's, the largest pixel change max|y - y_ref| (0..255
gray levels) and the iterations, one image at a time on one thread (the table runs one
image per thread), so the counts are exact and the times are only indicative on a loaded
machine.

    python experiments/eval_tolerance.py --model foe-48x7-s25 --limit 4 --gtol 1e-1 1e-2 1e-3 1e-4
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="foe-48x7-s25")
    p.add_argument("--limit", type=int, default=4, help="first N BSD68 images (sorted)")
    p.add_argument("--gtol", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4])
    p.add_argument("--ref", type=float, default=1e-6, help="the reference solve's gtol")
    args = p.parse_args(argv)

    import numba

    import structpred as sp
    from structpred.losses import psnr
    from structpred.reproduce import default_data_root, load_bsd68
    numba.set_num_threads(1)
    trained = sp.pretrained(args.model)
    names, clean, noisy = load_bsd68(default_data_root(), float(trained.meta["sigma"]),
                                     limit=args.limit)
    print(f"model {args.model}, training solver gtol {trained.solver.gtol:g}; reference gtol "
          f"{args.ref:g}")
    print("| image | gtol | PSNR (dB) | - reference (dB) | max abs(y - y_ref) | iterations | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals = {g: [0, 0.0, 0.0] for g in args.gtol}
    for n, x, t in zip(names, noisy, clean):
        energy = trained.model.bind(x, trained.theta, parallel=False)
        ref = dataclasses.replace(trained.solver, gtol=args.ref, maxiter=20000).minimize(energy)
        p_ref = psnr(ref.y, t)
        for g in args.gtol:
            t0 = time.perf_counter()
            r = dataclasses.replace(trained.solver, gtol=g).minimize(energy)
            s = time.perf_counter() - t0
            d = psnr(r.y, t) - p_ref
            totals[g][0] += r.iterations
            totals[g][1] = max(totals[g][1], abs(d))
            totals[g][2] += s
            print(f"| {n} | {g:g} | {psnr(r.y, t):.4f} | {d:+.5f} | "
                  f"{np.abs(r.y - ref.y).max():.3g} | {r.iterations} | {s:.1f} |")
        print(f"| {n} | {args.ref:g} (reference) | {p_ref:.4f} | | | {ref.iterations} | |")
    print("\n| gtol | iterations (sum) | worst abs(PSNR - reference) (dB) | seconds (sum) |")
    print("| --- | --- | --- | --- |")
    for g, (it, worst, s) in totals.items():
        print(f"| {g:g} | {it} | {worst:.5f} | {s:.1f} |")


if __name__ == "__main__":
    main()
