"""Deterministic work counts of the MAP solve and the implicit gradient, per benchmark case:
L-BFGS iterations and energy-gradient evaluations, adjoint iterations and Hessian-vector
products (HVPs), the loss, and the median wall time (noisy on a shared machine; the counts are
the primary figure).

    python experiments/iteration_counts.py                  # all cases, current defaults
    python experiments/iteration_counts.py --cases hard24 --repeats 1
    python experiments/iteration_counts.py --gradient "dict(preconditioner=None)"
    python experiments/iteration_counts.py --alternate --cases hard24,hard48 --repeats 3

Cases (bench_engine.py's: train400/test_001.png centre 180x180, sigma 25, basis "free", MAP
from y0 = x to ||grad E|| <= 1e-6, adjoint to 1e-8 relative): 8x3x3, 24x5x5, 48x7x7 at the
default scales (filter scale 1/sigma, lam scale 4) and the hard 24x5x5, 48x7x7 (filter
scale 1, lam scale 25).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import structpred as sp  # noqa: E402
from structpred.models.energy import bind  # noqa: E402
from bench_engine import SIGMA, peer_case  # noqa: E402

CASES = {
    "8x3x3": (8, 3, 1 / SIGMA, 4.0),
    "24x5x5": (24, 5, 1 / SIGMA, 4.0),
    "48x7x7": (48, 7, 1 / SIGMA, 4.0),
    "hard24": (24, 5, 1.0, 25.0),
    "hard48": (48, 7, 1.0, 25.0),
}


class CountingModel:
    """Wraps a model: counts Hessian-vector products of every ``hessian`` it hands out."""

    def __init__(self, model):
        self._m = model
        self.hvps = 0

    def __getattr__(self, name):
        return getattr(self._m, name)

    def hessian(self, *a, **k):
        h = self._m.hessian(*a, **k)

        def counted(v):
            self.hvps += 1
            return h(v)
        return counted


def run_case(name, solver, gradient, repeats):
    K, m, fs, ls = CASES[name]
    model, theta, x, t = peer_case(180, K, m, fs, ls)
    cm = CountingModel(model)
    loss = sp.MSELoss()
    energy = model.bind(x, theta)
    res = solver.minimize(energy)
    g, info = gradient.grad(bind(cm, x, theta), res, loss.grad(res.y, t))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        energy = model.bind(x, theta)
        r2 = solver.minimize(energy)
        gradient.grad(energy, r2, loss.grad(r2.y, t))
        ts.append(time.perf_counter() - t0)
    return dict(case=name, it=res.iterations, evals=res.n_evals, gnorm=res.grad_norm,
                status=res.status.name, cg=info.iterations, hvps=cm.hvps, method=info.method,
                res=info.residual, loss=loss.value(res.y, t), g=g,
                time=float(np.median(ts)) if ts else float("nan"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--solver", default="{}", help="LBFGS keyword arguments (a Python dict)")
    p.add_argument("--gradient", default="{}", help="ImplicitGradient keyword arguments")
    p.add_argument("--alternate", action="store_true",
                   help="time preconditioner None vs 'fft' alternated, per case")
    a = p.parse_args()
    if a.alternate:
        for name in a.cases.split(","):
            print(name, alternated(name, a.repeats), f"load {os.getloadavg()[0]:.2f}",
                  flush=True)
        return
    solver = sp.LBFGS(gtol=1e-6, **eval(a.solver))
    gradient = sp.ImplicitGradient(rtol=1e-8, **eval(a.gradient))
    print(f"{solver}\n{gradient}\nload {os.getloadavg()[0]:.2f}")
    print("| case | L-BFGS it | energy evals | ||g|| | status | adjoint it | HVPs | method "
          "| loss | MAP+grad median s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.cases.split(","):
        r = run_case(name, solver, gradient, a.repeats)
        print(f"| {name} | {r['it']} | {r['evals']} | {r['gnorm']:.1e} | {r['status']} | "
              f"{r['cg']} | {r['hvps']} | {r['method']} | {r['loss']:.8f} | {r['time']:.3f} |",
              flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")



def alternated(name, repeats):
    """Median MAP + implicit gradient time with and without the Fourier preconditioner,
    alternated in one process (a shared machine's load then hits both alike)."""
    K, m, fs, ls = CASES[name]
    model, theta, x, t = peer_case(180, K, m, fs, ls)
    loss = sp.MSELoss()
    configs = {"none": (sp.LBFGS(gtol=1e-6, preconditioner=None),
                        sp.ImplicitGradient(rtol=1e-8, preconditioner=None)),
               "fft": (sp.LBFGS(gtol=1e-6, preconditioner="fft"),
                       sp.ImplicitGradient(rtol=1e-8, preconditioner="fft"))}
    ts = {k: [] for k in configs}
    for rep in range(repeats + 1):
        for k, (solver, gradient) in configs.items():
            t0 = time.perf_counter()
            energy = model.bind(x, theta)
            r = solver.minimize(energy)
            gradient.grad(energy, r, loss.grad(r.y, t))
            if rep:                                   # the first round compiles
                ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


if __name__ == "__main__":
    main()
