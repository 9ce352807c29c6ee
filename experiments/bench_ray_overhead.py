"""Ray dispatch overhead per evaluation: 64 tiny images (8x8, FoE 3x3x3), 2 actors,
warm-started evaluations; the compute is about a millisecond per image, so the time is
mostly Ray's (the local executor's time beside it).

    python experiments/bench_ray_overhead.py
"""
import os
import statistics
import sys
import time

import numpy as np
import ray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import structpred as sp
from structpred.training.executors import LocalExecutor, RayExecutor

rng = np.random.default_rng(0)
pairs = []
for _ in range(64):
    t = rng.uniform(50, 200, size=(8, 8)); pairs.append((t + 25 * rng.normal(size=(8, 8)), t))
model = sp.make_model("foe", num_filters=3, filter_size=3, boundary="symmetric")
theta = model.init_params(sigma=25)
solver, grad = sp.LBFGS(gtol=1e-4), sp.ImplicitGradient()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
loc = LocalExecutor(model, solver, grad, pairs)
ex = RayExecutor(model, solver, grad, pairs, num_actors=2)
_, w = ex(theta, None, (None,) * 64)
_, wl = loc(theta, None, (None,) * 64)
tr, tl = [], []
for k in range(7):
    th = theta * (1 + 0.001 * (k + 1))
    t0 = time.perf_counter(); ex(th, None, w); tr.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); loc(th, None, wl); tl.append(time.perf_counter() - t0)
print(f"ray median {statistics.median(tr)*1e3:.0f} ms per evaluation of 64 images "
      f"({statistics.median(tr)/64*1e3:.2f} ms per image); local {statistics.median(tl)*1e3:.0f} ms")
ex.close(); ray.shutdown()
