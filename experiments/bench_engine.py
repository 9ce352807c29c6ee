"""Engine benchmark: structpred's FoE kernels, MAP solve and implicit gradient, side by side with
the JAX + jaxopt peer (../shared/peer) when its venv is installed. Prints one table.

Test case (the peer's, ../shared/peer/README.md): train400/test_001.png centre 180x180, noise
sigma 25 (numpy default_rng(0)), DCT filters times 1/sigma (alpha = 1, lam = 4/sigma^2), MAP from
y0 = x to ||grad_y E||_2 <= 1e-6, adjoint CG to 1e-8 relative; the hard cases are (24, 5) and
(48, 7) with filter scale 1 and lam scale 25. Deterministic work counts (iterations,
evaluations, HVPs) of the same cases, with any solver options: experiments/iteration_counts.py. Filters use basis="free" so that dL/dtheta is dL/dF, the
peer's gradient, compared entry by entry.

    python experiments/bench_engine.py                  # everything (~10-15 min on 2 cores)
    python experiments/bench_engine.py --no-peer --quick
    python experiments/bench_engine.py --sections trained --trained experiments/reproduce/foe-24x5-s25/last.npz

Figures are medians; the machine is shared, so the load (uptime) is printed with the table.
GFLOP/s count 4 K m^2 N flops per energy-gradient evaluation and per Hessian-vector product
(a correlation and its adjoint), the peer's convention; "% of matmul" is relative to the
best float64 matmul rate (numpy, 2 threads) measured in the same run, at its start and end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PEER_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "peer"))
PEER_PY = os.path.expanduser("~/.cache/structpred-peer-venv/bin/python")
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "train400"))
SIGMA = 25.0

import numba  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import structpred as sp  # noqa: E402
from structpred.kernels.threads import engine_threads  # noqa: E402

ROWS: list[tuple[str, str, str]] = []     # (figure, structpred, peer / note)


def row(name, ours, peer=""):
    ROWS.append((name, ours, peer))
    print(f"  {with_peak(name)}: {with_peak(ours)}  {with_peak(peer)}", flush=True)


# Rates are written as a share of the matmul rate only when a row is printed: the progress
# lines use the rate measured at the start, the final table the best one of the whole run
# (the start and the end of a run measured 87 and 118 GFLOP/s on the same quiet machine).
PEAK = {"gflops": None}
_PCT = re.compile(r"<pct (\S+)>")


def pct(gflops):
    return f"<pct {gflops!r}>"


def with_peak(text):
    return _PCT.sub(lambda mt: f"{100 * float(mt[1]) / PEAK['gflops']:.0f}%", text)


def load():
    return os.getloadavg()[0]


def median_time(fn, repeats, warm=1):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# ------------------------------------------------------------------------------ case
def read_image(path):
    import imageio.v3 as iio
    return np.asarray(iio.imread(path), dtype=np.float64)


def peer_case(size, K, m, filter_scale=1.0 / SIGMA, lam_scale=4.0, shape=None):
    """The peer's image/noise/parameters (foe_case.py, re-implemented so that structpred never
    imports the peer); ``shape`` other than (size, size) reflect-pads the image (scaling runs)."""
    im = read_image(os.path.join(DATA, "test_001.png"))
    h, w = im.shape
    i, j = (h - size) // 2, (w - size) // 2
    t = im[i:i + size, j:j + size].copy()
    if shape is not None and shape != t.shape:
        ph, pw = max(0, shape[0] - size), max(0, shape[1] - size)
        t = np.pad(t, ((0, ph), (0, pw)), mode="symmetric")[:shape[0], :shape[1]].copy()
    x = t + SIGMA * np.random.default_rng(0).normal(size=t.shape)
    model = sp.make_model("foe", num_filters=K, filter_size=m, basis="free")
    theta = model.init_params(sigma=SIGMA, filter_scale=filter_scale, lam_scale=lam_scale)
    return model, theta, x, t


# ------------------------------------------------------------------------------ peer
def peer_available():
    return os.path.exists(PEER_PY) and os.path.exists(os.path.join(PEER_DIR, "jax_foe.py"))


def run_peer(K, m, tol, repeats, filter_scale, lam_scale, size=180):
    cmd = [PEER_PY, os.path.join(PEER_DIR, "jax_foe.py"), "--size", str(size), "--filters",
           str(K), "--ksize", str(m), "--tol", str(tol), "--repeats", str(repeats),
           "--filter-scale", repr(filter_scale), "--lam-scale", repr(lam_scale)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def peer_gradient(K, m, tol, filter_scale, lam_scale, size=180):
    """The peer's loss and full gradient (one extra subprocess, its own loss_and_grad)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g.npz")
        code = textwrap.dedent(f"""
            import sys, numpy as np
            sys.path.insert(0, {PEER_DIR!r})
            import foe_case, jax_foe
            x, t, w = foe_case.make_case({size}, {K}, {m}, filter_scale={filter_scale!r},
                                         lam_scale={lam_scale!r})
            loss, g, info = jax_foe.loss_and_grad(x, t, w, {tol!r}, 1e-8)
            np.savez({path!r}, g=np.concatenate([np.ravel(a) for a in g]), loss=loss)
        """)
        subprocess.run([PEER_PY, "-c", code], capture_output=True, text=True, check=True)
        z = np.load(path)
        return float(z["loss"]), z["g"]


# ---------------------------------------------------------------------------- figures
def matmul_peak(repeats=10):
    """GFLOP/s of numpy's 2000^3 matmul with 1 and 2 BLAS threads, best of ``repeats``: the
    peak the machine reaches, which a median under passing load would understate."""
    A = np.random.default_rng(0).normal(size=(2000, 2000))
    out = {}
    for nt in (1, 2):
        with threadpool_limits(nt):
            A @ A
            t = min(median_time(lambda: A @ A, 1, warm=0) for _ in range(repeats))
        out[nt] = 2 * 2000 ** 3 / t / 1e9
    return out


def kernel_rates(model, theta, x, repeats):
    """One energy-gradient evaluation and one E_yy v, as the engine runs them (BLAS held to
    one thread: its spinning threads would otherwise compete with the kernels' threads)."""
    fg, args = model.objective(x, theta)
    y = x.ravel().copy()
    g = np.empty_like(y)
    hvp = model.hessian(x, x, theta)
    v = np.random.default_rng(1).normal(size=x.shape)
    with engine_threads():
        # warm-up of 5: the first passes after a pause (a subprocess, a new shape) run
        # slower while the threads wake up (90x90 measured at 2-4x its steady cost)
        te = median_time(lambda: fg(y, g, args), repeats, warm=5)
        th = median_time(lambda: hvp(v), repeats, warm=5)
    flops = 4 * model.num_filters * model.filter_size ** 2 * x.size
    return te, th, flops


def ours_loss_grad(model, theta, x, t, solver, gradient):
    return sp.loss_and_grad(model, theta, x, t, solver=solver, gradient=gradient)


def case_figures(label, K, m, fs, ls, args, peer_ok):
    model, theta, x, t = peer_case(180, K, m, fs, ls)
    solver = sp.LBFGS(gtol=args.tol)
    gradient = sp.ImplicitGradient(rtol=1e-8)
    hard = fs != 1.0 / SIGMA
    reps = args.repeats_hard if hard else args.repeats
    r = ours_loss_grad(model, theta, x, t, solver, gradient)           # warm-up (compile)
    te, th, flops = kernel_rates(model, theta, x, 30 if not hard else 10)
    tmap = median_time(lambda: solver.minimize(model, x, theta), reps, warm=0)
    t_ours = [median_time(lambda: ours_loss_grad(model, theta, x, t, solver, gradient), reps,
                          warm=0)]
    peer = None
    if peer_ok:
        peer = run_peer(K, m, args.tol, reps, fs, ls)
        t_ours.append(median_time(lambda: ours_loss_grad(model, theta, x, t, solver, gradient),
                                  reps, warm=0))
    tl = float(np.median(t_ours))
    s = r.solve
    row(f"{label} E+grad eval", f"{te * 1e3:.2f} ms, {flops / te / 1e9:.1f} GFLOP/s "
        f"({pct(flops / te / 1e9)} of matmul)",
        "" if peer is None else f"{peer['eval_ms']:.2f} ms, "
        f"{peer['flops_per_eval'] / peer['eval_ms'] / 1e6:.1f} GFLOP/s "
        f"({pct(peer['flops_per_eval'] / peer['eval_ms'] / 1e6)})")
    row(f"{label} Hessian-vector product", f"{th * 1e3:.2f} ms, {flops / th / 1e9:.1f} GFLOP/s "
        f"({pct(flops / th / 1e9)} of matmul)")
    row(f"{label} MAP solve to {args.tol:g}",
        f"{tmap:.3f} s: {s.iterations} it / {s.n_evals} evals, |g| {s.grad_norm:.1e}, "
        f"{s.status.name}")
    ours_txt = (f"{tl:.3f} s, loss {r.loss:.6f}, CG {r.adjoint.iterations}")
    peer_txt = ""
    if peer is not None:
        ploss, pg = peer_gradient(K, m, args.tol, fs, ls)
        gdiff = float(np.linalg.norm(r.grad - pg) / np.linalg.norm(pg))
        ldiff = abs(r.loss - ploss) / abs(ploss)
        peer_txt = (f"{peer['median_s']:.3f} s ({peer['lbfgs_iters']} it / "
                    f"{peer['fun_evals']} evals, CG {peer['cg_iters']}), loss "
                    f"{peer['loss']:.6f}; speed-up {peer['median_s'] / tl:.1f}x, "
                    f"loss rel diff {ldiff:.1e}, grad rel diff {gdiff:.1e}")
    row(f"{label} MAP + implicit gradient", ours_txt, peer_txt)
    return model, theta


def scaling_figures(args):
    K, m = 48, 7
    for shape in [(90, 90), (180, 180), (360, 360), (481, 321)]:
        model, theta, x, t = peer_case(180, K, m, shape=shape)
        te, th, flops = kernel_rates(model, theta, x, 40)
        row(f"scaling 48x7x7 {shape[0]}x{shape[1]}",
            f"eval {te * 1e3:.2f} ms = {te / x.size * 1e9:.0f} ns/pixel "
            f"({flops / te / 1e9:.1f} GFLOP/s); HVP {th / x.size * 1e9:.0f} ns/pixel")


def train_pairs(n, size=None):
    files = sorted(f for f in os.listdir(DATA) if f.endswith(".png"))[:n]
    rng = np.random.default_rng(123)
    pairs = []
    for f in files:
        t = read_image(os.path.join(DATA, f))
        if size is not None:
            t = t[:size, :size].copy()
        pairs.append((t + SIGMA * rng.normal(size=t.shape), t))
    return pairs


def thread_figures(args):
    K, m = args.train_filters, args.train_ksize
    model = sp.make_model("foe", num_filters=K, filter_size=m)
    theta = model.init_params(sigma=SIGMA)
    pairs = train_pairs(args.batch)
    solver = sp.LBFGS(gtol=args.tol)
    nmax = numba.config.NUMBA_NUM_THREADS
    res = {}
    for nt in sorted({1, min(2, nmax)}):
        numba.set_num_threads(nt)
        sp.batch_loss_and_grad(model, theta, pairs[:1], solver=solver, threads=1)
        res[nt] = median_time(lambda: sp.batch_loss_and_grad(model, theta, pairs, solver=solver,
                                                             threads=1),
                              args.repeats_batch, warm=0)
    numba.set_num_threads(nmax)
    txt = ", ".join(f"{nt} thread{'s' * (nt > 1)} {t:.2f} s" for nt, t in res.items())
    if len(res) > 1:
        txt += f"; speed-up {res[1] / res[2]:.2f}x"
    row(f"batch loss+grad, {len(pairs)} images {K}x{m}x{m}, images in turn (threads=1), "
        "parallel kernels", txt)
    # the default: one image per thread, single-threaded kernels (batch_loss_and_grad threads=2)
    nt = max(1, min(2, nmax))
    sp.batch_loss_and_grad(model, theta, pairs[:2], solver=solver, threads=nt)
    tt = median_time(lambda: sp.batch_loss_and_grad(model, theta, pairs, solver=solver,
                                                    threads=nt), args.repeats_batch, warm=0)
    row(f"batch loss+grad, {len(pairs)} images {K}x{m}x{m}, threads over images (threads={nt})",
        f"{tt:.2f} s; speed-up over 1 thread {res[1] / tt:.2f}x")
    # BLAS threads (numpy, used by the CG vector updates) against Numba threads
    item = pairs[0]
    out = []
    for blas in (1, 2):
        with threadpool_limits(blas):
            tt = median_time(lambda: sp.loss_and_grad(model, theta, *item, solver=solver),
                             args.repeats_batch)
        out.append(f"BLAS {blas} thread{'s' * (blas > 1)} {tt:.3f} s")
    row("one loss+grad, Numba 2 threads, BLAS threads", "; ".join(out))


def training_figure(args):
    from scipy.optimize import minimize
    K, m = args.train_filters, args.train_ksize
    model = sp.make_model("foe", num_filters=K, filter_size=m)
    theta0 = model.init_params(sigma=SIGMA)
    pairs = train_pairs(args.train_images)
    solver = sp.LBFGS(gtol=args.tol)
    out = {}
    for warm in (True, False):
        state = {"prev": None, "evals": 0, "inner": 0}

        def fun(th):
            prev = state["prev"]
            b = sp.batch_loss_and_grad(model, th, pairs, solver=solver,
                                       warm=prev.items if (warm and prev is not None) else None)
            state["prev"] = b
            state["evals"] += 1
            state["inner"] += sum(r.solve.iterations for r in b.items)
            return b.loss, b.grad
        t0 = time.perf_counter()
        res = minimize(fun, theta0, method="L-BFGS-B", jac=True,
                       options=dict(maxiter=args.train_iters))
        out[warm] = (time.perf_counter() - t0, res.nit, state["evals"], state["inner"], res.fun)
    w, c = out[True], out[False]
    row(f"training: {args.train_iters} outer L-BFGS its, {len(pairs)} Train400 images "
        f"{K}x{m}x{m}",
        f"warm {w[0]:.1f} s ({w[2]} evals, {w[3]} inner its, loss {w[4]:.4f}); "
        f"cold {c[0]:.1f} s ({c[2]} evals, {c[3]} inner its, loss {c[4]:.4f}); "
        f"warm/cold {w[0] / c[0]:.2f}")


def trained_figure(args):
    """Issue 17's training-level figure: one outer iteration (batch loss + gradient, cold) over
    Train400 images at parameters of a real training run (the committed checkpoint of the
    foe-24x5-s25 reproduction), with the run's own solver and gradient settings, without and
    with the Fourier preconditioning (the change that cut the iterations), alternated."""
    import dataclasses

    from omegaconf import OmegaConf

    from structpred.training import config as C
    from structpred.training.checkpoint import load_checkpoint
    _, state, meta = load_checkpoint(args.trained)
    cfg = OmegaConf.create(meta["config"])
    model = C.build_model(cfg)
    solver, gradient = C.build_pair(cfg)
    pairs = train_pairs(args.train_images)
    variants = {}
    for pre in (None, "auto"):
        variants[pre] = (dataclasses.replace(solver, preconditioner=pre),
                         dataclasses.replace(gradient, preconditioner=pre))
    times = {pre: [] for pre in variants}
    counts = {}
    sp.batch_loss_and_grad(model, state.theta, pairs[:2], solver=solver, gradient=gradient,
                           threads=2)   # compile
    for _ in range(args.repeats_batch):
        for pre, (s, g) in variants.items():
            t0 = time.perf_counter()
            b = sp.batch_loss_and_grad(model, state.theta, pairs, solver=s, gradient=g,
                                       threads=2)
            times[pre].append(time.perf_counter() - t0)
            counts[pre] = (sum(r.solve.iterations for r in b.items),
                           sum(r.solve.n_evals for r in b.items),
                           sum(r.adjoint.iterations for r in b.items), b.loss)
    med = {pre: float(np.median(t)) for pre, t in times.items()}
    name = os.path.splitext(os.path.basename(args.trained))[0]
    for pre in variants:
        it, ev, cg, loss = counts[pre]
        row(f"trained {name} it {state.iteration}: one outer iteration, {len(pairs)} Train400 "
            f"images, preconditioner {pre}",
            f"{med[pre]:.2f} s: inner {it} it / {ev} evals, CG {cg} (sums), loss {loss:.6f}",
            "" if pre is None else f"speed-up over no preconditioner {med[None] / med[pre]:.2f}x")


BUSY = "import time\nt=time.time()+{secs}\nwhile time.time()<t: pass\n"


def compete_figure(args):
    """Issue 17: the kernels with another busy process on the machine (a pure-Python loop, one
    core): one 24x5x5 energy-gradient evaluation and one MAP solve, with 1 and 2 Numba
    threads, quiet and with the competitor; medians and 90th percentiles."""
    model, theta, x, t = peer_case(180, 24, 5)
    fg, fargs = model.objective(x, theta)
    y = x.ravel().copy()
    g = np.empty_like(y)
    solver = sp.LBFGS(gtol=args.tol)
    nmax = numba.config.NUMBA_NUM_THREADS
    out = []
    for busy in (False, True):
        proc = (subprocess.Popen([sys.executable, "-c", BUSY.format(secs=600)])
                if busy else None)
        try:
            time.sleep(0.5 if busy else 0)
            for nt in sorted({1, min(2, nmax)}):
                numba.set_num_threads(nt)
                with engine_threads():
                    ts = []
                    for _ in range(5):
                        fg(y, g, fargs)
                    for _ in range(200):
                        t0 = time.perf_counter()
                        fg(y, g, fargs)
                        ts.append(time.perf_counter() - t0)
                tm = median_time(lambda: solver.minimize(model, x, theta), args.repeats)
                out.append((busy, nt, float(np.median(ts)), float(np.percentile(ts, 90)), tm))
        finally:
            numba.set_num_threads(nmax)
            if proc is not None:
                proc.kill()
                proc.wait()
    for busy, nt, med, p90, tm in out:
        row(f"24x5x5 with {'a competing busy process' if busy else 'no competing process'}, "
            f"{nt} Numba thread{'s' * (nt > 1)}",
            f"E+grad eval median {med * 1e3:.2f} ms (p90 {p90 * 1e3:.2f} ms); MAP solve {tm:.3f} s")


MEMORY_SNIPPET = """
import sys, tracemalloc, json
sys.path.insert(0, {root!r}); sys.argv = ['x']
import numpy as np
sys.path.insert(0, {here!r})
import bench_engine as b
import structpred as sp
model, theta, x, t = b.peer_case(180, 48, 7, shape=(481, 321))
s = sp.LBFGS(gtol={tol!r})
sp.loss_and_grad(model, theta, x[:40, :40], t[:40, :40], solver=s)     # compile
import gc; gc.collect()

def status_kb(key):
    with open("/proc/self/status") as fh:
        return int(next(l for l in fh if l.startswith(key)).split()[1])

# the high-water mark counts the compilation too: reset it (Linux >= 4.0), so that the
# peak is the loss+gradient's own
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status_kb("VmRSS:")
tracemalloc.start()
r = sp.loss_and_grad(model, theta, x, t, solver=s)
cur, peak = tracemalloc.get_traced_memory()
rss = status_kb("VmHWM:")
print(json.dumps(dict(base_kb=base, peak_kb=rss, numpy_peak=peak, image_bytes=x.nbytes,
                      its=r.solve.iterations)))
"""


def memory_figure(args):
    code = MEMORY_SNIPPET.format(root=ROOT, here=os.path.dirname(os.path.abspath(__file__)),
                                 tol=args.tol)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    kmn = 48 * 49 * d["image_bytes"]
    row("memory, 48x7x7 loss+grad on 481x321",
        f"peak RSS +{(d['peak_kb'] - d['base_kb']) / 1024:.0f} MiB over the warmed-up process's "
        f"{d['base_kb'] / 1024:.0f} MiB "
        f"(numpy allocations peak {d['numpy_peak'] / 2 ** 20:.0f} MiB; K N = "
        f"{48 * d['image_bytes'] / 2 ** 20:.0f} MiB, K m^2 N = {kmn / 2 ** 20:.0f} MiB)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--repeats-hard", type=int, default=3)
    p.add_argument("--repeats-batch", type=int, default=3)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--quick", action="store_true", help="kernels and cases only")
    p.add_argument("--no-hard", action="store_true")
    p.add_argument("--sections", default="cases,scaling,threads,compete,memory,training,trained",
                   help="comma-separated subset of cases,scaling,threads,compete,memory,training,"
                        "trained")
    p.add_argument("--trained", default=os.path.join(ROOT, "experiments", "out",
                                                       "trained-foe24x5-s25-it51.npz"),
                   help="checkpoint of a real training run for the 'trained' section")
    p.add_argument("--batch", type=int, default=8, help="images in the thread-scaling batch")
    p.add_argument("--train-images", type=int, default=32)
    p.add_argument("--train-iters", type=int, default=20)
    p.add_argument("--train-filters", type=int, default=8)
    p.add_argument("--train-ksize", type=int, default=3)
    args = p.parse_args()

    peer_ok = peer_available() and not args.no_peer
    print(f"load before: {os.getloadavg()}; numba {numba.__version__}, "
          f"{numba.config.NUMBA_NUM_THREADS} threads, layer "
          f"{numba.config.THREADING_LAYER}; BLAS "
          f"{[(i['internal_api'], i['num_threads']) for i in threadpool_info()]}", flush=True)
    t_start = time.perf_counter()
    mm = matmul_peak()
    PEAK["gflops"] = mm[2]
    row("float64 matmul 2000^3 (numpy)", f"{mm[1]:.0f} GFLOP/s (1 thread), "
        f"{mm[2]:.0f} GFLOP/s (2 threads)")
    cases = [("8x3x3", 8, 3, 1 / SIGMA, 4.0), ("24x5x5", 24, 5, 1 / SIGMA, 4.0),
             ("48x7x7", 48, 7, 1 / SIGMA, 4.0)]
    if not args.no_hard:
        cases.append(("hard 24x5x5", 24, 5, 1.0, 25.0))
        cases.append(("hard 48x7x7", 48, 7, 1.0, 25.0))
    sections = set(args.sections.split(","))
    if "cases" in sections:
        for label, K, m, fs, ls in cases:
            case_figures(label, K, m, fs, ls, args, peer_ok)
    if not args.quick:
        for name, fn in [("scaling", lambda: scaling_figures(args)),
                         ("threads", lambda: thread_figures(args)),
                         ("compete", lambda: compete_figure(args)),
                         ("memory", lambda: memory_figure(args)),
                         ("training", lambda: training_figure(args)),
                         ("trained", lambda: trained_figure(args))]:
            if name in sections:
                fn()
    mm2 = matmul_peak()
    row("float64 matmul again (end of run)", f"{mm2[1]:.0f} / {mm2[2]:.0f} GFLOP/s (1 / 2 threads)")
    PEAK["gflops"] = max(mm[2], mm2[2])

    w0 = max(len(r[0]) for r in ROWS)
    w1 = max(len(with_peak(r[1])) for r in ROWS)
    print()
    print(f"structpred engine benchmark, 180x180 unless said, tol {args.tol:g}; "
          f"load (1 min) at the end {load():.2f}, run {time.perf_counter() - t_start:.0f} s; "
          f"% of matmul = of {PEAK['gflops']:.0f} GFLOP/s, the best 2-thread matmul rate of "
          f"the run")
    print(f"| {'figure':<{w0}} | {'structpred':<{w1}} | JAX + jaxopt peer |")
    print(f"| {'-' * w0} | {'-' * w1} | --- |")
    for a, b, c in ROWS:
        print(f"| {a:<{w0}} | {with_peak(b):<{w1}} | {with_peak(c)} |")


if __name__ == "__main__":
    main()
