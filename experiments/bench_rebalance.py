"""executor=ray with uneven images: one outer iteration with round-robin shards against the
shards of the cost-aware rebalance (same executor, same warm starts, same numbers).

    python experiments/bench_rebalance.py                        # a local 2-CPU Ray instance
    python experiments/bench_rebalance.py --address 127.0.0.1:PORT   # a running cluster

Protocol: the model, inner solver and gradient of +experiment=reproduce_foe24x5_s25 on
``--images`` Train400 images, the even ones whole (180x180), the odd ones cropped to
``--small`` pixels square (about 9x less work at 60): round robin over 2 actors then gives
actor 0 every whole image, the imbalance the rebalance is for (uneven inner-solve costs).
The first evaluation (theta0, cold) measures each image's cost; :meth:`RayExecutor.rebalance`
computes the balanced shards. The timed evaluation is at theta1 = 1.01 theta0, warm-started
from theta0's solutions, with the round-robin and the balanced shards alternating
(``--repeats`` each; medians); the loss and gradient are checked equal bit for bit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--small", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--address", default=None)
    args = ap.parse_args(argv)

    import ray
    from bench_ray import build

    from structpred.training.executors import RayExecutor
    _, model, solver, gradient, theta0, pairs, _ = build(args.images, None)
    s = args.small
    pairs = [p if i % 2 == 0 else (p[0][:s, :s].copy(), p[1][:s, :s].copy())
             for i, p in enumerate(pairs)]
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ex = RayExecutor(model, solver, gradient, pairs, num_actors=2, imbalance=1.1)
    print("actor nodes:", [n[:8] for n in ex.node_ids()], flush=True)
    _, w0 = ex(theta0, None, (None,) * len(pairs))
    rr = list(ex.shard_of)
    print("round robin: predicted actor work", [f"{x:.3g}" for x in ex.loads()])
    info = ex.rebalance()
    balanced = list(ex.shard_of)
    print("rebalance:", info, "; predicted actor work", [f"{x:.3g}" for x in ex.loads()])
    theta1 = theta0 * 1.01
    times = {"round robin": [], "balanced": []}
    ref = None
    for _ in range(args.repeats):
        for name, shards in (("round robin", rr), ("balanced", balanced)):
            ex.shard_of = list(shards)
            t0 = time.perf_counter()
            res, _ = ex(theta1, None, w0)
            times[name].append(time.perf_counter() - t0)
            busy = [sum(ex.seconds[i] for i in range(len(pairs)) if shards[i] == k)
                    for k in range(2)]
            print(f"  {name}: {times[name][-1]:.2f} s; actor busy (sum of its images' "
                  f"seconds) {busy[0]:.2f}, {busy[1]:.2f}", flush=True)
            if ref is None:
                ref = res
            assert res.loss == ref.loss and np.array_equal(res.grad, ref.grad)
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.2f} s ({', '.join(f'{x:.2f}' for x in t)})")
    print(f"speed-up {statistics.median(times['round robin']) / statistics.median(times['balanced']):.2f}; "
          f"loss and gradient identical in every repeat; load average {os.getloadavg()[0]:.1f}")
    ex.close()


if __name__ == "__main__":
    main()
