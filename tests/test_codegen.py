"""Generated modules: the inner solver is cached on disk per kernel, stale caches cannot happen,
and a user's own kernel (not generated) still gets a working solver."""
import os
import subprocess
import sys

import numpy as np
from numba import njit

import structpred as sp
from structpred.kernels import codegen
from structpred.models.base import EnergyModel
from structpred.solvers.lbfgs import loop_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import numpy as np, structpred as sp
from structpred.solvers.lbfgs import loop_for
model = sp.make_model("foe", num_filters=4, filter_size=3)
theta = model.init_params()
x = np.random.default_rng(0).normal(size=(20, 20)) * 20 + 128
r = sp.LBFGS().minimize(model, x, theta)
fg, _ = model.objective(x, theta)
stats = loop_for(fg).stats
print(int(r.status), sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_solver_loop_is_cached_across_processes(tmp_path):
    env = dict(os.environ, STRUCTPRED_KERNEL_DIR=str(tmp_path), PYTHONPATH=ROOT)
    runs = [subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "0", "1"]           # converged; compiled (a cache miss)
    assert runs[1] == ["0", "1", "0"]           # converged; loaded from the disk cache
    names = os.listdir(tmp_path)
    assert any(n.startswith("structpred_lbfgs_") for n in names)
    assert any(n.startswith("structpred_fb_m3_") for n in names)


def test_module_name_follows_dependencies(tmp_path):
    dep = tmp_path / "dep.py"
    dep.write_text("A = 1\n")
    n1 = codegen.module_name("stem", "source", [str(dep)])
    assert n1 == codegen.module_name("stem", "source", [str(dep)])
    dep.write_text("A = 2\n")                   # a changed dependency: a new module, new cache
    assert codegen.module_name("stem", "source", [str(dep)]) != n1
    assert codegen.module_name("stem", "source 2", [str(dep)]) != n1


@njit(nogil=True)
def _quadratic_fg(y, g, args):
    a, b = args
    e = 0.0
    for i in range(y.size):
        d = y[i] - b[i]
        g[i] = a[i] * d
        e += 0.5 * a[i] * d * d
    return e


class _Quadratic(EnergyModel):
    """E(y) = sum_i a_i/2 (y_i - x_i)^2 with a_i = exp(theta_0) (1 + i mod 3): a user's model
    whose kernel lives in an ordinary module."""

    def param_shapes(self):
        return {"log_a": (1,)}

    def init_params(self):
        return np.zeros(1)

    def objective(self, x, theta, *, serial=False):
        a = np.exp(theta[0]) * (1.0 + np.arange(x.size) % 3)
        return _quadratic_fg, (a, np.ascontiguousarray(x, dtype=np.float64).ravel())

    def hessian(self, y, x, theta, *, serial=False):
        raise NotImplementedError

    def mixed_product(self, y, x, theta, u, *, serial=False):
        raise NotImplementedError


def test_user_kernel_gets_an_in_memory_loop():
    model = _Quadratic()
    x = np.arange(12.0).reshape(3, 4)
    r = sp.LBFGS(gtol=1e-10).minimize(model, x, model.init_params(), y0=np.zeros_like(x))
    assert r.converged
    np.testing.assert_allclose(r.y, x, atol=1e-9)
    loop = loop_for(_quadratic_fg)
    assert loop is loop_for(_quadratic_fg)      # compiled once per process
    assert not getattr(sys.modules.get(loop.py_func.__module__), codegen.MARKER, False)
