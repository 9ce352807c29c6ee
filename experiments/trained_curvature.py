"""Why trained FoE models are hard for the inner solve and the adjoint (issue 17): the
curvature of E_yy at trained parameters, measured on a 200x200 crop of BSD68 images.

Three sections, each printed as it runs (one thread; the figures are counts, so a loaded
machine only makes them slower):

* ``profile``: the L-BFGS run of the model's own solver stopped after k iterations, against a
  reference solve to ||grad E|| <= 1e-8: ||grad E||, E - E*, max |y - y*| (gray levels),
  PSNR - PSNR* (dB). A plateau of E - E* while ||grad E|| falls is a stationary point that
  is not the minimum the solve ends in.
* ``eigs``: the three smallest eigenvalues of E_yy (Lanczos, scipy ``eigsh``) at the
  iterate after ``--at`` iterations and at y*, and how localised the lowest eigenvector is
  (its squared mass on its 50 largest pixels).
* ``adjoint``: CG iterations on E_yy(y*) u = b (b standard normal, rtol 1e-6, scipy ``cg``)
  with no preconditioner, the Fourier symbol (what ``ImplicitGradient`` uses), the exact
  diagonal of E_yy (Jacobi; probed with (2m-1)^2 Hessian-vector products), the Fourier
  preconditioner scaled by that diagonal relative to the quadratic part's, and (``--pairs
  M``) the inverse-Hessian approximation of the inner L-BFGS's last M pairs with the Fourier
  preconditioner as its H0 (Morales & Nocedal 2000, "automatic preconditioning by limited
  memory quasi-Newton updating"; the pairs are recovered by re-running the deterministic
  solve to each of its last M + 1 iterations).

    python experiments/trained_curvature.py --model foe-48x7-s25 --limit 2
    python experiments/trained_curvature.py --bench-case hard24
    python experiments/trained_curvature.py --bench-case hard24 --pairs 5,20
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np


def crop(a):
    return a[60:260, 100:300]


def reference_solver(trained):
    """The model's solver to ||grad E|| <= 1e-8: y* of every section (and the solve whose
    last pairs ``--pairs`` recovers)."""
    return dataclasses.replace(trained.solver, gtol=1e-8, maxiter=20000)


def profile(trained, energy, clean, steps):
    from structpred.losses import psnr
    ref = reference_solver(trained).minimize(energy)
    print(f"  reference: {ref.iterations} iterations ({ref.status.name}), E* = {ref.energy:.6f}")
    for k in steps:
        r = dataclasses.replace(trained.solver, maxiter=k).minimize(energy)
        print(f"  k {k:4d}: |grad E| {r.grad_norm:.3e}  E - E* {r.energy - ref.energy:.3e}  "
              f"max|y - y*| {np.abs(r.y - ref.y).max():.3g}  PSNR - PSNR* "
              f"{psnr(r.y, clean) - psnr(ref.y, clean):+.4f}", flush=True)
    return ref


def operator(energy, y):
    from scipy.sparse.linalg import LinearOperator
    H = energy.hessian(y)
    return H, LinearOperator((y.size, y.size), matvec=lambda v: H(v.reshape(y.shape)).ravel(),
                             dtype=np.float64)


def eigs(trained, energy, ref, at):
    from scipy.sparse.linalg import eigsh
    r = dataclasses.replace(trained.solver, maxiter=at).minimize(energy)
    for label, res in ((f"after {at} iterations", r), ("at y*", ref)):
        y = res.y_domain
        _, A = operator(energy, y)
        w, V = eigsh(A, k=3, which="SA", tol=1e-6, maxiter=3000)
        mass = float(np.sort(V[:, 0] ** 2)[::-1][:50].sum())
        print(f"  {label}: E {res.energy:.6f}, |grad E| {res.grad_norm:.2e}; smallest "
              f"eigenvalues {np.round(w, 5).tolist()}; lowest eigenvector's mass on 50 pixels "
              f"{mass:.2f}", flush=True)


def lbfgs_pairs(solver, energy, ref, m):
    """The last m (s, y) pairs of the deterministic solve that gave ``ref`` (those with
    s.y > 0, the ones L-BFGS keeps), flattened."""
    pts = []
    for k in range(ref.iterations - m, ref.iterations + 1):
        r = dataclasses.replace(solver, maxiter=k).minimize(energy)
        pts.append((r.y_domain.ravel().copy(), energy.energy_and_grad(r.y_domain)[1].ravel()))
    pairs = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(pts)]
    kept = [(s, y) for s, y in pairs if s @ y > 0]
    if not kept:
        raise RuntimeError(f"no pair with s.y > 0 among the last {m}: is ``solver`` the one "
                           f"that gave ref ({ref.iterations} iterations)?")
    return kept


def lbfgs_operator(pairs, M):
    """The two-loop recursion with H0 = gamma M (gamma = s.y / y.M y of the newest pair)."""
    s_, y_ = pairs[-1]
    gamma = (s_ @ y_) / (y_ @ M(y_))

    def apply(v):
        q, alphas = v.copy(), []
        for s, y in reversed(pairs):
            a = (s @ q) / (s @ y)
            alphas.append(a)
            q -= a * y
        r = gamma * M(q)
        for (s, y), a in zip(pairs, reversed(alphas)):
            r += s * (a - (y @ r) / (s @ y))
        return r
    return apply


def adjoint(filter_size, lam, energy, ref, rtol=1e-6, solver=None, pairs=()):
    from scipy.sparse.linalg import LinearOperator, cg

    from structpred.solvers.precond import fourier_preconditioner
    y = ref.y_domain
    sh, n = y.shape, y.size
    H, A = operator(energy, y)
    s = 2 * filter_size - 1                        # E_yy's band: probes s apart don't mix
    diag = np.zeros(sh)
    for a in range(s):
        for b in range(s):
            v = np.zeros(sh)
            v[a::s, b::s] = 1.0
            diag += H(v) * v
    S = energy.symbol
    M = fourier_preconditioner(S, sh)
    d0 = float(np.fft.irfft2(S, s=sh)[0, 0])       # the quadratic part's diagonal
    ratio = diag / d0                              # the curvature left by the experts' tails
    q = 1 / np.sqrt(np.clip(ratio, 0.02, 1.0))
    gamma = float(np.median(ratio))
    # the symbol with the prior's part scaled by the median curvature ratio (the data
    # part, the symbol's value at frequencies where every filter vanishes, is kept):
    # lam + gamma (S - lam)
    Mg = fourier_preconditioner(lam + gamma * (S - lam), sh)
    rhs = np.random.default_rng(0).standard_normal(n)
    ops = {"none": None,
           "Fourier": lambda v: M(v.reshape(sh)).ravel(),
           "Jacobi (exact diagonal)": lambda v: v / np.maximum(diag, 1e-3 * d0).ravel(),
           "diagonal-scaled Fourier": lambda v: (q * M(q * v.reshape(sh))).ravel(),
           f"Fourier, prior part x median ratio {gamma:.3f}":
               lambda v: Mg(v.reshape(sh)).ravel()}
    for m in pairs:
        kept = lbfgs_pairs(solver, energy, ref, m)
        ops[f"L-BFGS's last {m} pairs ({len(kept)} with s.y > 0), Fourier H0"] = \
            lbfgs_operator(kept, ops["Fourier"])
    for label, f in ops.items():
        count = [0]
        Mop = None if f is None else LinearOperator((n, n), matvec=f, dtype=np.float64)
        _, info = cg(A, rhs, rtol=rtol, maxiter=5000, M=Mop,
                     callback=lambda _, c=count: c.__setitem__(0, c[0] + 1))
        print(f"  CG, {label}: {count[0]} iterations (info {info})", flush=True)
    print(f"  diag(E_yy) / quadratic part's diagonal, quantiles 0/1/10/50/90/100 %: "
          f"{np.round(np.quantile(ratio, [0, .01, .1, .5, .9, 1]), 3).tolist()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="foe-48x7-s25")
    p.add_argument("--limit", type=int, default=1)
    p.add_argument("--sections", default="profile,eigs,adjoint")
    p.add_argument("--steps", default="10,25,50,100,150,200,250,300,350,400,450")
    p.add_argument("--at", type=int, default=300, help="eigs: the early-stopped iterate")
    p.add_argument("--bench-case", default=None, help="instead of a shipped model: the "
                   "adjoint section on a case of experiments/iteration_counts.py (hard24, "
                   "hard48, ...; MAP to 1e-6, CG to 1e-8 as there)")
    p.add_argument("--pairs", default="", help="adjoint: also the L-BFGS-pairs "
                   "preconditioner with these memory sizes, e.g. 5,20")
    args = p.parse_args(argv)
    pairs = [int(a) for a in args.pairs.split(",") if a]
    import numba
    if args.bench_case:
        import os
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from iteration_counts import CASES, peer_case

        import structpred as sp
        numba.set_num_threads(1)
        K, m, fs, ls = CASES[args.bench_case]
        model, theta, x, _ = peer_case(180, K, m, fs, ls)
        energy = model.bind(x, theta, parallel=False)
        print(f"{args.bench_case}: {K}x{m}x{m}, 180x180", flush=True)
        solver = sp.LBFGS(gtol=1e-6)
        adjoint(m, model.weights(theta)[1], energy, solver.minimize(energy), rtol=1e-8,
                solver=solver, pairs=pairs)
        return

    import structpred as sp
    from structpred.reproduce import default_data_root, load_bsd68
    numba.set_num_threads(1)
    trained = sp.pretrained(args.model)
    lam = trained.model.weights(trained.theta)[1]
    names, clean, noisy = load_bsd68(default_data_root(), float(trained.meta["sigma"]),
                                     limit=args.limit)
    sections = args.sections.split(",")
    print(f"model {args.model} (lambda {lam:.4g}), solver gtol {trained.solver.gtol:g}, "
          f"200x200 crops")
    for name, x, t in zip(names, noisy, clean):
        print(name, flush=True)
        energy = trained.model.bind(crop(x), trained.theta, parallel=False)
        ref = (profile(trained, energy, crop(t), [int(k) for k in args.steps.split(",")])
               if "profile" in sections else
               reference_solver(trained).minimize(energy))
        if "eigs" in sections:
            eigs(trained, energy, ref, args.at)
        if "adjoint" in sections:
            adjoint(trained.model.filter_size, lam, energy, ref, solver=reference_solver(trained),
                    pairs=pairs)


if __name__ == "__main__":
    main()
