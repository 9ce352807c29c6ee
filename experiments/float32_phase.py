"""Issue 17's last untried direction, measured: a float32 first phase of the MAP solve.

Two figures, both alternated in one process (medians; pause other work on the machine):

* ``--passes``: the generated filter-bank passes of E_yy v (``scaled_pass`` +
  ``adjoint_pass``) on 180x180, float64 against float32 arrays (Numba compiles a float32
  specialisation of the same generated module), 1 and 2 Numba threads.
* default: the hard cases' MAP solve (iteration_counts.py's hard24 / hard48, ||grad E|| <=
  1e-6) from y0 = x, against a two-phase solve: the L-BFGS loop (state in float64) on a
  float32 energy-gradient (the same generated kernel called with float32 arrays; the
  penalty's row sums and the energy stay float64) down to ``||grad E|| <= g1``, then the
  float64 solve from there.

    python experiments/float32_phase.py --passes
    python experiments/float32_phase.py --cases hard24,hard48 --g1 1,0.1 --repeats 3

Prototype only (not an engine feature): the float32 kernel is a wrapper bound in memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from numba import njit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import structpred as sp  # noqa: E402
from structpred.kernels.filterbank import kernels_for  # noqa: E402
from structpred.solvers.lbfgs import _NO_MONITOR, loop_for  # noqa: E402
from bench_engine import peer_case  # noqa: E402
from iteration_counts import CASES  # noqa: E402


def passes(threads):
    import numba
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for K, m in ((24, 5), (48, 7)):
        mod = kernels_for(m)
        H = W = 180
        Hv, Wv = H - m + 1, W - m + 1
        for dt in (np.float64, np.float32):
            F = rng.standard_normal((K, m, m)).astype(dt)
            Ff = F[:, ::-1, ::-1].copy()
            D = rng.random((K, Hv, Wv)).astype(dt)
            Sp = np.zeros((K, H + m - 1, W + m - 1), dt)
            v = rng.standard_normal((H, W)).astype(dt)
            out = np.empty((H, W), dt)
            z = np.zeros((H, W), dt)
            drow = np.zeros(H, dt)
            mod.scaled_pass(v, F, D, Sp)
            mod.adjoint_pass(Sp, Ff, v, z, dt(0.1), out, drow)
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                mod.scaled_pass(v, F, D, Sp)
                mod.adjoint_pass(Sp, Ff, v, z, dt(0.1), out, drow)
                ts.append(time.perf_counter() - t0)
            print(f"{K}x{m}x{m} E_yy v, {np.dtype(dt).name}, {threads} thread(s): "
                  f"{np.median(ts) * 1e3:.2f} ms", flush=True)


def fg32_for(m):
    """An energy-gradient kernel for the float64 L-BFGS loop that runs the generated
    kernel on float32 copies (``args = (EnergyArgs in float32, y32, g32)``)."""
    eg = kernels_for(m).energy_grad

    @njit(nogil=True)
    def fg32(y_flat, g_flat, a):
        args32, y32, g32 = a
        for i in range(y_flat.size):
            y32[i] = y_flat[i]
        e = eg(y32, g32, args32)
        for i in range(g_flat.size):
            g_flat[i] = g32[i]
        return e
    return fg32


def to32(args):
    d = args._asdict()
    for k in ("x", "F", "Ff", "alpha", "Rp"):
        d[k] = np.ascontiguousarray(d[k], np.float32)
    d["lam"] = np.float32(d["lam"])
    d["scale"] = np.float32(d["scale"])
    return type(args)(**d)


def two_phase(cases, g1s, repeats):
    solver = sp.LBFGS(gtol=1e-6)
    for name in cases:
        K, m, fs, ls = CASES[name]
        model, theta, x, t = peer_case(180, K, m, fs, ls)
        energy = model.bind(x, theta)
        _, args = energy.kernel
        pinv = solver._inverse_symbol(energy)
        a32 = (to32(args), np.empty(x.size, np.float32), np.empty(x.size, np.float32))
        loop32 = loop_for(fg32_for(m))

        def run(g1):
            y0 = energy.start(None).ravel().copy()
            t0 = time.perf_counter()
            it1 = nev1 = 0
            gn1, st1 = float("nan"), "-"
            if g1 > 0:
                y0, _, gn1, it1, nev1, st1 = loop32(a32, y0, g1, 0.0, 5000, solver.history,
                                                   solver.c1, solver.c2,
                                                   solver.max_linesearch, pinv, _NO_MONITOR)
                st1 = sp.Status(st1).name
            t1 = time.perf_counter()
            r = solver.minimize(energy, y0=y0.reshape(energy.shape))
            t2 = time.perf_counter()
            return dict(it1=it1, nev1=nev1, gn1=gn1, st1=st1, t1=t1 - t0, it2=r.iterations,
                        nev2=r.n_evals, st2=r.status.name, t2=t2 - t1, E=r.energy)

        variants = [0.0] + g1s
        for g1 in variants:
            run(g1)                      # compile, warm
        res = {g1: [] for g1 in variants}
        for _ in range(repeats):
            for g1 in variants:
                res[g1].append(run(g1))
        for g1 in variants:
            r = res[g1][-1]
            tot = np.median([q["t1"] + q["t2"] for q in res[g1]])
            head = "float64 only" if g1 == 0 else (
                f"float32 to {g1:g}: {r['it1']} it / {r['nev1']} evals ({r['st1']}, "
                f"|g| {r['gn1']:.2e}), {r['t1']:.2f} s; then")
            print(f"{name} {head} float64 {r['it2']} it / {r['nev2']} evals ({r['st2']}), "
                  f"{r['t2']:.2f} s; total median {tot:.2f} s; E {r['E']:.6f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--passes", action="store_true")
    p.add_argument("--cases", default="hard24,hard48")
    p.add_argument("--g1", default="1,0.1")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}")
    if a.passes:
        for th in (1, 2):
            passes(th)
    else:
        two_phase(a.cases.split(","), [float(v) for v in a.g1.split(",")], a.repeats)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
