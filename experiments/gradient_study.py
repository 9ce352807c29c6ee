"""How the unrolled and truncated gradients approach the implicit one, and what they cost.

On one model and one image, for a sweep of step counts T, this compares with the implicit
gradient (tight inner solve and adjoint solve, the reference):

* ``unrolled``: the exact gradient of the loss of the T-th heavy-ball iterate started at
  the noisy image (checkpointed reverse sweep, the default spacing ceil(sqrt(2T)));
* ``unrolled, store all``: the same gradient with every iterate stored (checkpoint_every=1),
  to show the memory that checkpointing saves and the recomputation it costs;
* ``truncated``: ``--forward`` heavy-ball iterations forward, back-propagation through only
  the last K = T of them.

For each: cosine similarity and relative error ``||g - g_implicit|| / ||g_implicit||``,
wall time (best of ``--repeat``), peak memory of NumPy allocations during the call
(tracemalloc, a separate run), and the number of images held for the backward sweep.
Prints a table, writes it as CSV, and saves a four-panel PNG.

Usage::

    python experiments/gradient_study.py --threads 1         # FoE 8x3x3, camera 64x64
    python experiments/gradient_study.py --size 96 --steps 1 2 5 10 20 50 100 200 500
"""
from __future__ import annotations

import argparse
import csv
import time
import tracemalloc
from pathlib import Path

import numpy as np

import structpred as sp
from structpred.solvers import estimate_lipschitz


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="foe", choices=["foe", "gmrf"])
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--filter-size", type=int, default=3)
    p.add_argument("--prior-scale", type=float, default=3.0,
                   help="multiply the initial experts' weights alpha (3: best PSNR here)")
    p.add_argument("--size", type=int, default=64, help="side of the camera crop")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level")
    p.add_argument("--steps", type=int, nargs="+",
                   default=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000])
    p.add_argument("--forward", type=int, default=None,
                   help="forward steps of the truncated gradient (default: max of --steps)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    p.add_argument("--out", type=Path, default=Path("experiments/out"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="Numba threads (1 gives steadier timings on a shared machine)")
    return p.parse_args(argv)


def make_problem(args):
    """The model, its parameters, and one (noisy, clean) camera crop."""
    from skimage import data
    s = args.size
    clean = data.camera().astype(float)[200:200 + s, 200:200 + s]
    noisy = clean + args.sigma * np.random.default_rng(args.seed).normal(size=clean.shape)
    model = sp.make_model(args.model, num_filters=args.filters, filter_size=args.filter_size)
    theta = model.init_params(sigma=args.sigma)
    theta[model.param_slices()["log_alpha"]] += np.log(args.prior_scale)
    return model, theta, noisy, clean


def measure(fn, repeat):
    """(result, best wall time in s, peak traced memory in MiB) of ``fn()``."""
    fn()                                    # compile and warm caches outside the timings
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return out, best, peak / 2 ** 20


def compare(g, ref):
    cos = float(np.vdot(g, ref) / (np.linalg.norm(g) * np.linalg.norm(ref)))
    return cos, float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def condition(model, theta, noisy, y):
    """(largest, smallest) eigenvalue of E_yy at y: power iteration, then on L I - E_yy."""
    lip = estimate_lipschitz(model.bind(noisy, theta), y, iterations=200)
    hvp = model.hessian(y, noisy, theta)
    v = np.random.default_rng(1).normal(size=y.shape)
    mu = lip
    for _ in range(1000):
        w = lip * v - hvp(v)
        mu = lip - np.linalg.norm(w) / np.linalg.norm(v)
        v = w / np.linalg.norm(w)
    return lip, mu


def run(args):
    model, theta, noisy, clean = make_problem(args)
    pair = lambda g, solver=None: sp.loss_and_grad(model, theta, noisy, clean,  # noqa: E731
                                                   gradient=g, solver=solver)
    tight = sp.LBFGS(gtol=1e-10, maxiter=10000)
    ref, t_ref, m_ref = measure(lambda: pair(sp.ImplicitGradient(rtol=1e-10), tight),
                                args.repeat)
    lip, mu = condition(model, theta, noisy, ref.y)
    print(f"{model!r} on a {args.size}x{args.size} camera crop, sigma={args.sigma}; "
          f"E_yy at y*: L={lip:.3g}, mu={mu:.3g}, kappa={lip / mu:.1f}")
    print(f"implicit: PSNR {ref.psnr:.2f} dB, {ref.solve.iterations} L-BFGS iterations, "
          f"{ref.adjoint.iterations} CG iterations, {t_ref * 1e3:.1f} ms, {m_ref:.2f} MiB")
    forward = args.forward or max(args.steps)
    strategies = {
        "unrolled": lambda T: sp.UnrolledGradient(steps=T, momentum=args.momentum),
        "unrolled, store all": lambda T: sp.UnrolledGradient(steps=T, momentum=args.momentum,
                                                             checkpoint_every=1),
        "truncated": lambda T: sp.TruncatedGradient(steps=forward, truncate=min(T, forward),
                                                    momentum=args.momentum),
    }
    rows = [dict(method="implicit", T=0, cosine=1.0, rel_error=0.0, psnr=ref.psnr,
                 time_ms=t_ref * 1e3, peak_mib=m_ref, images=0, grad_evals=ref.solve.n_evals,
                 hvps=ref.adjoint.iterations)]
    for name, build in strategies.items():
        for T in args.steps:
            res, t, mem = measure(lambda: pair(build(T)), args.repeat)
            cos, rel = compare(res.grad, ref.grad)
            rows.append(dict(method=name, T=T, cosine=cos, rel_error=rel, psnr=res.psnr,
                             time_ms=t * 1e3, peak_mib=mem, images=res.adjoint.stored_images,
                             grad_evals=res.adjoint.grad_evals, hvps=res.adjoint.hvps))
    return rows, forward


def print_table(rows):
    head = (f"{'method':<20} {'T/K':>5} {'cosine':>10} {'rel.err':>9} {'PSNR':>6} "
            f"{'time ms':>8} {'peak MiB':>9} {'images':>6} {'g-evals':>7} {'hvps':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['method']:<20} {r['T']:>5} {r['cosine']:>10.6f} {r['rel_error']:>9.2e} "
              f"{r['psnr']:>6.2f} {r['time_ms']:>8.1f} {r['peak_mib']:>9.2f} {r['images']:>6} "
              f"{r['grad_evals']:>7} {r['hvps']:>5}")


def plot(rows, forward, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ref = rows[0]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    styles = {"unrolled": ("o-", "C0"), "unrolled, store all": ("s--", "C1"),
              "truncated": ("^-", "C2")}
    for name, (style, color) in styles.items():
        rs = [r for r in rows if r["method"] == name]
        T = [r["T"] for r in rs]
        label = f"truncated (forward {forward})" if name == "truncated" else name
        if name != "unrolled, store all":   # the same gradient as "unrolled"
            axes[0].semilogx(T, [r["cosine"] for r in rs], style, color=color, label=label)
            axes[1].loglog(T, [max(r["rel_error"], 1e-16) for r in rs], style, color=color,
                           label=label)
        axes[2].loglog(T, [r["time_ms"] for r in rs], style, color=color, label=label)
        axes[3].loglog(T, [r["peak_mib"] for r in rs], style, color=color, label=label)
    for ax, key in zip(axes[2:], ("time_ms", "peak_mib")):
        ax.axhline(ref[key], color="k", lw=1, ls=":", label="implicit")
    axes[0].set(xlabel="T (unrolled) / K (truncated)", ylabel="cosine with implicit",
                ylim=(-1.05, 1.05), title="gradient direction")
    axes[1].set(xlabel="T (unrolled) / K (truncated)", ylabel="relative error vs implicit",
                title="gradient error")
    axes[2].set(xlabel="T / K", ylabel="wall time (ms)", title="time per loss + gradient")
    axes[3].set(xlabel="T / K", ylabel="peak NumPy memory (MiB)", title="memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        import numba
        numba.set_num_threads(args.threads)
    rows, forward = run(args)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gradient_study.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, forward, args.out / "gradient_study.png")
    print(f"wrote {args.out / 'gradient_study.csv'} and {args.out / 'gradient_study.png'}")


if __name__ == "__main__":
    main()
