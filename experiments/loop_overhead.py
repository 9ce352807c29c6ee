"""The inner L-BFGS loop's cost beyond its energy evaluations (issue 17).

On the hard cases (180x180, filter scale 1, lam scale 25: bench_engine's peer case): one
energy-gradient evaluation timed in a tight loop; the MAP solve with the Fourier
preconditioner and without it, to the same iteration budget; "overhead" = (solve time -
evaluations x evaluation time) / iterations; then MAP + implicit gradient. To compare two
versions of the loop, run it from two checkouts alternately (the structpred it imports is
printed):

    PYTHONPATH=<checkout> python <checkout>/experiments/loop_overhead.py [--repeats 3]

Measured in session 13 (quiet machine, Zen 3, medians of 3, alternated): the overhead per
iteration with the preconditioner fell from 1.8-2.1 ms (object-mode FFT, two FFT pairs per
iteration) to 0.1-0.8 ms (jitted FFT, one pair) on hard 24x5x5, and from 4.9 to 2.1-2.5 ms
on hard 48x7x7.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as B

import structpred as sp
from structpred.kernels.threads import engine_threads


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("structpred from", sp.__file__)
    for label, K, m, iters in [("hard 24x5x5", 24, 5, 390), ("hard 48x7x7", 48, 7, 541)]:
        model, theta, x, t = B.peer_case(180, K, m, 1.0, 25.0)
        energy = model.bind(x, theta)
        fg, fargs = energy.kernel
        y = x.ravel().copy()
        g = np.empty_like(y)
        out = []
        with engine_threads():
            ev = B.median_time(lambda: fg(y, g, fargs), 100, warm=20)
            out.append(f"{label}: eval {ev * 1e3:.2f} ms")
            for pre in ("fft", None):
                s = sp.LBFGS(gtol=1e-6, preconditioner=pre, maxiter=iters)
                r = s.minimize(energy)
                tm = B.median_time(lambda: s.minimize(energy), args.repeats, warm=0)
                out.append(f"L-BFGS preconditioner {pre}: {r.iterations} it / {r.n_evals} evals "
                           f"{tm:.3f} s, overhead {(tm - r.n_evals * ev) / r.iterations * 1e3:.2f}"
                           " ms/it")
        solver, grad = sp.LBFGS(gtol=1e-6), sp.ImplicitGradient(rtol=1e-8)
        r = sp.loss_and_grad(model, theta, x, t, solver=solver, gradient=grad)
        tl = B.median_time(lambda: sp.loss_and_grad(model, theta, x, t, solver=solver,
                                                    gradient=grad), args.repeats, warm=0)
        out.append(f"MAP + gradient {tl:.3f} s, loss {r.loss:.6f}")
        print("; ".join(out), flush=True)


if __name__ == "__main__":
    main()
