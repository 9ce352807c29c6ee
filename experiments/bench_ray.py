"""executor=local vs executor=ray on this machine, in the same run: one outer iteration of the
training objective (batch loss + gradient over Train400 images, FoE 24x5x5, sigma 25, warm
starts from the previous iteration), Ray's overhead, the bytes an iteration moves, and the
per-image compute that the scaling estimate in README "Scaling out" is made from.

    python experiments/bench_ray.py                      # 64 whole 180x180 images, 3 repeats
    python experiments/bench_ray.py --images 16 --crop 64 --repeats 2   # a quick look

Protocol: the model, inner solver and gradient of +experiment=reproduce_foe24x5_s25; the
first evaluation (theta0, cold) gives each executor its warm starts; the timed evaluation is
at theta1 = theta0 - a g0 (|theta1 - theta0| = 1% of |theta0|), warm-started from theta0's
solutions, as one outer iteration of training is. It is repeated, local and Ray alternating
(the machine is shared: alternating spreads the load alike), and the medians are compared.
Local: threads.numba images at a time, one per thread; Ray: a local instance with the same
cores, one actor per core. The loss and gradient of the two are checked equal.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(images: int, crop):
    from hydra import compose, initialize_config_dir

    from structpred.data import load_splits
    from structpred.training import config as C
    C.register_resolvers()
    over = ["+experiment=reproduce_foe24x5_s25", f"data.train.limit={images}",
            f"data.train.crop={'null' if crop is None else crop}", "tracking.enabled=false"]
    with initialize_config_dir(config_dir=os.path.join(ROOT, "structpred", "configs"),
                               version_base="1.3"):
        cfg = compose(config_name="train", overrides=over)
    print(C.set_threads(cfg), flush=True)
    model, solver, gradient = C.build_model(cfg), C.build_solver(cfg), C.build_gradient(cfg)
    theta0 = C.init_params(model, cfg)
    train = load_splits(cfg.data, min_shape=model.min_image_shape(), splits=("train",))["train"]
    return cfg, model, solver, gradient, theta0, train.pairs(), over


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--crop", type=int, default=None, help="crop size (default: whole images)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    import numba
    import ray

    from structpred.training.executors import LocalExecutor, RayExecutor
    cfg, model, solver, gradient, theta0, pairs, over = build(args.images, args.crop)
    n = len(pairs)
    print(f"{n} images {pairs[0][0].shape}, {model.name} {model.num_params} parameters, "
          f"{args.cpus} CPUs, numba threads {numba.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t
    local = LocalExecutor(model, solver, gradient, pairs)
    t = time.perf_counter()
    remote = RayExecutor(model, solver, gradient, pairs, num_actors=args.cpus,
                         cpus_per_actor=1)
    remote.pids()   # the actors are up (their processes import structpred, load kernels)
    t_actors = time.perf_counter() - t
    print(f"ray.init {t_init:.1f} s, {remote.num_actors} actors up in {t_actors:.1f} s",
          flush=True)

    none = (None,) * n
    t = time.perf_counter()
    r0, w_local = local(theta0, None, none)
    t_cold_local = time.perf_counter() - t
    t = time.perf_counter()
    q0, w_ray = remote(theta0, None, none)
    t_cold_ray = time.perf_counter() - t
    assert q0.loss == r0.loss and np.array_equal(q0.grad, r0.grad)
    print(f"cold evaluation at theta0: local {t_cold_local:.1f} s, ray {t_cold_ray:.1f} s",
          flush=True)
    g = r0.grad
    theta1 = theta0 - 0.01 * np.linalg.norm(theta0) / np.linalg.norm(g) * g

    times = {"local": [], "ray": []}
    for rep in range(args.repeats):
        for name, fun, warm in (("local", local, w_local), ("ray", remote, w_ray)):
            t = time.perf_counter()
            res, _ = fun(theta1, None, warm)
            times[name].append(time.perf_counter() - t)
            if name == "local":
                ref = res
            else:
                assert res.loss == ref.loss and np.array_equal(res.grad, ref.grad)
            print(f"  repeat {rep}: {name} {times[name][-1]:.2f} s", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    inner = np.array([it.solve.iterations for it in ref.items])
    adj = np.array([it.adjoint.iterations for it in ref.items])
    slim = pickle.dumps(res.items, protocol=pickle.HIGHEST_PROTOCOL)
    out = {
        "command": "python experiments/bench_ray.py " + " ".join(argv or sys.argv[1:]),
        "config": over, "images": n, "image_shape": list(pairs[0][0].shape),
        "num_params": int(model.num_params), "cpus": args.cpus,
        "numba_threads": numba.get_num_threads(), "actors": remote.num_actors,
        "load_1min": os.getloadavg()[0],
        "ray_init_s": t_init, "actors_up_s": t_actors,
        "cold_local_s": t_cold_local, "cold_ray_s": t_cold_ray,
        "warm_local_s": times["local"], "warm_ray_s": times["ray"],
        "median_local_s": med["local"], "median_ray_s": med["ray"],
        "ray_over_local": med["ray"] / med["local"],
        "identical": True,
        # per outer iteration: theta out (one object, read by every actor), back: the
        # images' losses, gradients and diagnostics (no images)
        "bytes_theta_out": int(theta1.nbytes),
        "bytes_back_total": len(slim), "bytes_back_per_image": len(slim) / n,
        "bytes_warm_per_image_kept_on_node": int(np.mean(
            [2 * np.prod(model.extend(x).shape) * 8 for x, _ in pairs])),
        # per-image compute (CPU seconds: the local run keeps every core busy)
        "cpu_s_per_image_warm": med["local"] * numba.get_num_threads() / n,
        "cpu_s_per_image_cold": t_cold_local * numba.get_num_threads() / n,
        "inner_iters_warm": {"min": int(inner.min()), "median": float(np.median(inner)),
                             "max": int(inner.max())},
        "adjoint_iters_warm": {"min": int(adj.min()), "median": float(np.median(adj)),
                               "max": int(adj.max())},
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    remote.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
