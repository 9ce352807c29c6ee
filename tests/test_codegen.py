"""Generated modules: the inner solver is cached on disk per kernel, stale caches cannot happen,
and a user's own kernel (not generated) still gets a working solver."""
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import structpred as sp
from structpred.kernels import codegen, filterbank
from structpred.models.base import EnergyModel
from structpred.solvers.lbfgs import loop_for
from structpred.solvers.result import Status

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
model.hessian(r.y, x, theta)(x)                  # a kernel taking a namedtuple (HvpArgs)
hv = model.kernels().hvp.stats
print(int(r.status), sum(stats.cache_hits.values()), sum(stats.cache_misses.values()),
      sum(hv.cache_hits.values()), sum(hv.cache_misses.values()))
"""


def test_solver_loop_is_cached_across_processes(tmp_path):
    env = dict(os.environ, STRUCTPRED_KERNEL_DIR=str(tmp_path), PYTHONPATH=ROOT)
    runs = [subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "0", "1", "0", "1"]     # converged; compiled (cache misses)
    assert runs[1] == ["0", "1", "0", "1", "0"]     # converged; loaded from the disk cache
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
    # the loop's status is a Status member, not a bare integer (a plain tuple as args)
    out = loop(model.objective(x, np.zeros(1))[1], np.zeros(12), 1e-10, 0.0, 2, 10, 1e-4, 0.9,
               30, np.zeros((0, 0)), np.zeros(0))
    assert type(out[-1]) is Status and out[-1] == Status.MAXITER


@pytest.mark.parametrize("template", [filterbank.TEMPLATE, "structpred.solvers._lbfgs_template"])
def test_templates_are_modules_and_render_checks_placeholders(template):
    importlib.import_module(template)           # a real module: imports, lints
    with open(codegen.template_path(template)) as fh:
        names = re.findall(r"#\s*codegen:\s*(\w+)\s*$", fh.read(), flags=re.MULTILINE)
    assert names
    src = codegen.render(template, {n: f"{n} = 0" for n in names})
    compile(src, template, "exec")
    assert "codegen:" not in src and src.startswith("# Generated from ")
    with pytest.raises(ValueError, match=names[-1]):       # a placeholder left unbound
        codegen.render(template, {n: "" for n in names[:-1]})
    with pytest.raises(ValueError, match="no placeholder for .'typo'"):
        codegen.render(template, {**{n: "" for n in names}, "typo": "x = 1"})


def test_rendered_filterbank_source_is_the_template_with_unrolled_bodies():
    src = filterbank.generate_source(5)
    assert "\nM = 5\n" in src and "template stub" not in src
    assert "            o3[j] = " in src      # the 4-filter tile of corr_rows, unrolled
    assert "c2_4 * r2[j + 4]" in src          # the 3-filter tile of adj_row (m = 5)


# ---------------------------------------------------------------- the cache command
def _kernels_cli(folder, *argv):
    env = dict(os.environ, STRUCTPRED_KERNEL_DIR=str(folder), PYTHONPATH=ROOT)
    env.pop("NUMBA_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "structpred.kernels", *argv], env=env,
                          capture_output=True, text=True, check=False)


def _fake_cache(folder):
    """A cache folder with current and stale modules (their files only: nothing compiled),
    Numba's files for some, an orphaned compiled file and a file that is not ours."""
    from structpred.kernels import filterbank
    from structpred.solvers.lbfgs import loop_module_name
    fb3 = filterbank.module_name(3)
    names = {"current": [fb3, loop_module_name(fb3, "energy_grad_serial")],
             "stale": ["structpred_fb_m3_0123456789ab", "structpred_fb_m5_0123456789ab",
                       loop_module_name("structpred_fb_m3_0123456789ab", "energy_grad")]}
    pyc = folder / "__pycache__"
    pyc.mkdir(parents=True)
    for n in names["current"] + names["stale"]:
        (folder / f"{n}.py").write_text("# generated\n")
        (pyc / f"{n}.energy_grad-12.py311.nbi").write_bytes(b"x" * 1000)
    (pyc / "structpred_fb_m7_0123456789ab.hvp-3.py311.1.nbc").write_bytes(b"x")  # orphan
    (folder / "notes.txt").write_text("not a generated module\n")
    return names


def test_cache_command_lists_and_cleans_stale_modules(tmp_path):
    names = _fake_cache(tmp_path)
    r = _kernels_cli(tmp_path, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"kernel cache folder: {tmp_path} ")
    state = {ln.split()[0]: ln.split()[-1] for ln in lines[2:-1]}
    assert state == {**{n: "current" for n in names["current"]},
                     **{n: "stale" for n in names["stale"]}}
    assert lines[-1].startswith("5 modules,") and "3 stale" in lines[-1]

    r = _kernels_cli(tmp_path, "clean", "--stale-only")
    assert r.returncode == 0 and r.stdout.startswith("removed 3 stale generated modules")
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([f"{n}.py" for n in names["current"]]
                          + [f"{n}.energy_grad-12.py311.nbi" for n in names["current"]]
                          + ["notes.txt"])               # stale, their code and the orphan gone

    r = _kernels_cli(tmp_path, "clean")
    assert r.returncode == 0 and r.stdout.startswith("removed 2 generated modules")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["notes.txt"]
    r = _kernels_cli(tmp_path, "list")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "no generated modules"


def test_cache_command_bad_usage_is_one_line_and_exit_2(tmp_path):
    for argv in ([], ["purge"], ["clean", "--stale"], ["list", "--stale-only"]):
        r = _kernels_cli(tmp_path, *argv)
        assert r.returncode == 2 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1
        assert r.stderr.startswith("usage: python -m structpred.kernels")
