"""The inner solve on Train400 images at the benchmark's hard-case scales (issue 17a): FoE
24x5x5 (or --K/--m), basis "free", DCT filters times 1 (unit norm), lam = 25/sigma^2, noise
sigma 25 (numpy default_rng(index), index 0-based), MAP from y0 = x to ||grad E|| <= 1e-6.
Prints per image the status, iterations, evaluations and final ||grad E||, and the worst image.

    python experiments/hard_train400.py --count 16
    python experiments/hard_train400.py --count 400 --solver "dict(history=10)"
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import structpred as sp  # noqa: E402
from structpred.data.datasets import read_image  # noqa: E402

DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "train400"))
SIGMA = 25.0


def image_case(path, index, K=24, m=5, filter_scale=1.0, lam_scale=25.0):
    t = read_image(path)
    x = t + SIGMA * np.random.default_rng(index).normal(size=t.shape)
    model = sp.make_model("foe", num_filters=K, filter_size=m, basis="free")
    theta = model.init_params(sigma=SIGMA, filter_scale=filter_scale, lam_scale=lam_scale)
    return model, theta, x, t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--K", type=int, default=24)
    p.add_argument("--m", type=int, default=5)
    p.add_argument("--solver", default="{}", help="LBFGS keyword arguments (a Python dict)")
    a = p.parse_args()
    paths = sorted(glob.glob(os.path.join(DATA, "*.png")))[a.start:a.start + a.count]
    solver = sp.LBFGS(gtol=1e-6, **eval(a.solver))
    print(solver, f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows, t0 = [], time.perf_counter()
    for i, path in enumerate(paths, start=a.start):
        model, theta, x, _ = image_case(path, i, a.K, a.m)
        r = solver.minimize(model, x, theta)
        rows.append((r.grad_norm, r.iterations, os.path.basename(path), r))
        print(f"{os.path.basename(path)} {x.shape} {r.status.name} it {r.iterations} "
              f"evals {r.n_evals} |g| {r.grad_norm:.2e} E {r.energy:.10e}", flush=True)
    bad = [r for r in rows if not r[3].converged]
    worst_g = max(rows, key=lambda r: r[0])
    worst_it = max(rows, key=lambda r: r[1])
    print(f"{len(rows)} images, {len(bad)} not converged; worst |g| {worst_g[0]:.2e} "
          f"({worst_g[2]}); most iterations {worst_it[1]} ({worst_it[2]}); total it "
          f"{sum(r[1] for r in rows)}, evals {sum(r[3].n_evals for r in rows)}; "
          f"{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
