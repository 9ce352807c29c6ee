"""Issue 17's "Newton-CG / truncated Newton" direction, measured against the inner L-BFGS.

A truncated (inexact) Newton method for the MAP solve y* = argmin_y E(y): at each iterate, the
Newton system E_yy d = -grad E is solved approximately by conjugate gradients on the engine's
Hessian-vector products (``BoundEnergy.hessian``), preconditioned by the same Fourier symbol
as the L-BFGS and the adjoint (``structpred/solvers/precond.py``), to the forcing tolerance
||r|| <= min(0.5, sqrt(||g||)) ||g|| (Nocedal & Wright, Numerical Optimization, 2nd ed.,
Algorithm 7.1); on negative curvature (the Student-t energy is not convex) the CG stops and
takes its last direction (or -g on the first step). A backtracking Armijo line search
(c1 = 1e-4) from the unit step. Stops at ||grad E||_2 <= gtol, like the L-BFGS.

The work is counted in the engine's units: energy-gradient evaluations, Hessian-vector
products (each costs about one energy-gradient evaluation: bench_engine's "E+grad eval" and
"Hessian-vector product" rows), curvature passes (one per Newton step, about one
evaluation), and preconditioner applications (two FFTs each). Wall times are alternated
medians in one process (the machine is shared: read the ratios).

    python experiments/newton_cg.py                    # hard 24x5x5 and 48x7x7, trained 24x5x5
    python experiments/newton_cg.py --cases hard24 --repeats 1

The result (kept in the README's performance notes): see the table this prints.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_engine as B  # the peer's case, re-implemented there

import structpred as sp
from structpred.kernels.threads import engine_threads
from structpred.solvers.precond import fourier_preconditioner, select_symbol


def newton_cg(energy, *, gtol=1e-6, maxiter=500, max_cg=200, precondition=True):
    """Truncated Newton from y0 = x (see the module docstring); returns (y, counts)."""
    y = energy.start()
    n = {"it": 0, "fg": 0, "hvp": 0, "curv": 0, "prec": 0, "neg": 0}
    S = select_symbol(energy, "fft" if precondition else None, 1.0)
    M = fourier_preconditioner(S, energy.shape) if S is not None else (lambda v: v)
    f, g = energy.energy_and_grad(y)
    n["fg"] += 1
    gn = float(np.linalg.norm(g))
    while gn > gtol and n["it"] < maxiter:
        H = energy.hessian(y)
        n["curv"] += 1
        # preconditioned CG on H d = -g, forcing term eta = min(0.5, sqrt(|g|))
        tol = min(0.5, np.sqrt(gn)) * gn
        d = np.zeros_like(y)
        r = -g.copy()
        z = M(r)
        n["prec"] += S is not None
        p = z.copy()
        rz = float(np.vdot(r, z))
        for _ in range(max_cg):
            Hp = H(p)
            n["hvp"] += 1
            pHp = float(np.vdot(p, Hp))
            if pHp <= 0:                       # negative curvature: stop here
                n["neg"] += 1
                if not d.any():
                    d = -g.copy()
                break
            a = rz / pHp
            d += a * p
            r -= a * Hp
            if np.linalg.norm(r) <= tol:
                break
            z = M(r)
            n["prec"] += S is not None
            rz_new = float(np.vdot(r, z))
            p = z + (rz_new / rz) * p
            rz = rz_new
        # backtracking Armijo line search from the unit (Newton) step
        slope = float(np.vdot(g, d))
        if slope >= 0:
            d, slope = -g, -gn * gn
        t = 1.0
        while True:
            f_new, g_new = energy.energy_and_grad(y + t * d)
            n["fg"] += 1
            if f_new <= f + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        y = y + t * d
        f, g = f_new, g_new
        gn = float(np.linalg.norm(g))
        n["it"] += 1
    n["gnorm"] = gn
    n["f"] = f
    return y, n


def run_case(label, model, theta, x, t, args):
    energy = model.bind(x, theta)
    lb = sp.LBFGS(gtol=args.tol, maxiter=20000)
    with engine_threads():
        r = lb.minimize(energy)                # warm-up (compiles)
        newton_cg(energy, gtol=args.tol, maxiter=2)
        tl, tn = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = lb.minimize(energy)
            tl.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            yn, n = newton_cg(energy, gtol=args.tol, max_cg=args.max_cg)
            tn.append(time.perf_counter() - t0)
    ml, mn = float(np.median(tl)), float(np.median(tn))
    loss_l = sp.MSELoss().value(r.y, t)
    loss_n = sp.MSELoss().value(energy.crop(yn), t)
    print(f"| {label} | L-BFGS (preconditioner auto) | {r.iterations} it / {r.n_evals} evals "
          f"| {r.n_evals} | {ml:.2f} s | {r.grad_norm:.1e} | {r.energy:.6f} | {loss_l:.6f} |")
    work = n["fg"] + n["hvp"] + n["curv"]
    print(f"| {label} | truncated Newton-CG (Fourier-preconditioned CG) | {n['it']} it, "
          f"{n['fg']} evals, {n['hvp']} HVPs, {n['curv']} curvature passes, {n['prec']} "
          f"preconditioner solves, {n['neg']} negative-curvature stops | {work} | {mn:.2f} s "
          f"({ml / mn:.2f}x L-BFGS) | {n['gnorm']:.1e} | {n['f']:.6f} | {loss_n:.6f} |",
          flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-cg", type=int, default=200)
    p.add_argument("--cases", default="hard24,hard48,trained")
    p.add_argument("--trained", default=os.path.join(os.path.dirname(HERE), "experiments", "out",
                                                       "trained-foe24x5-s25-it51.npz"))
    args = p.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}; 180x180, MAP to ||grad E|| <= {args.tol:g}; "
          f"median of {args.repeats}, alternated")
    print("| case | solver | iterations | kernel passes (evals + HVPs + curvature) | wall | "
          "final ||grad E|| | E(y) | loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = args.cases.split(",")
    if "hard24" in cases:
        run_case("hard 24x5x5", *B.peer_case(180, 24, 5, 1.0, 25.0), args)
    if "hard48" in cases:
        run_case("hard 48x7x7", *B.peer_case(180, 48, 7, 1.0, 25.0), args)
    if "trained" in cases:
        from omegaconf import OmegaConf

        from structpred.training import config as C
        from structpred.training.checkpoint import load_checkpoint
        _, state, meta = load_checkpoint(args.trained)
        model = C.build_model(OmegaConf.create(meta["config"]))
        clean, noisy = B.train_pairs(1)[0][1], B.train_pairs(1)[0][0]
        run_case(f"trained 24x5x5 (it {state.iteration}), Train400 test_001",
                 model, state.theta, noisy, clean, args)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
