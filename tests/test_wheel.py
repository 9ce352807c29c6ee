"""The package as a user installs it: a wheel (``pip install .``, not ``-e``) carries the Hydra
configs, and ``python -m structpred.train`` runs from a folder outside the checkout, writing
its outputs there and nothing into site-packages.

Before the configs were package data, that wheel held no YAML file and the command failed
with "Primary config directory not found"."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "structpred" / "configs"


def _setuptools_ok() -> bool:
    """Whether this interpreter can build the wheel itself (no build environment to fetch)."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68   # pyproject's build requirement


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's package files (a build in place would
    leave build/ and structpred.egg-info in the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src, out = base / "src", base / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "structpred", src / "structpred",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(out)]
    if _setuptools_ok():
        cmd.insert(4, "--no-build-isolation")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("structpred-*.whl")
    return whl


def test_wheel_ships_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {"structpred/" + p.relative_to(ROOT / "structpred").as_posix()
               for p in CONFIG_DIR.rglob("*.yaml")}
    assert len(configs) > 30 and "structpred/configs/train.yaml" in configs
    assert not configs - names, sorted(configs - names)
    assert "structpred/configs/__init__.py" in names   # pkg://structpred.configs needs it


def _files(folder: Path) -> dict:
    """{relative path: (size, mtime)} of the files under ``folder``, outside ``__pycache__``
    (Python's bytecode and Numba's kernel cache go there beside the modules, as for any
    installed package; a read-only install moves Numba's elsewhere, test_install_readonly)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_installed_wheel_trains_outside_the_checkout(wheel, tmp_path):
    """A fresh venv with only the wheel (its dependencies are this interpreter's, by a .pth
    file, so nothing is downloaded); ``python -m structpred.train +debug=fast`` in an empty
    folder outside the checkout finishes, writes its run folder and MLflow store there, and
    changes nothing in site-packages. Not marked slow: 24 s here (venv and install 3 s,
    training 21 s, 2 loaded cores), the wheel's build 6 s more."""
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    lib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True,
                              check=True).stdout.strip())
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install",
                          "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # the dependencies: this interpreter's site-packages, after the venv's own (so the
    # wheel's structpred is the one imported; a .pth line adds a folder without running
    # the .pth files in it, e.g. an editable install's finder)
    (lib / "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("STRUCTPRED_", "MLFLOW_"))}
    where = subprocess.run([str(py), "-c", "import structpred; print(structpred.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(lib), where.stdout
    before = _files(lib)
    installed = time.perf_counter() - t0

    res = subprocess.run([str(py), "-m", "structpred.train", "+debug=fast"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Primary config directory not found" not in res.stderr
    assert "held-out images" in res.stdout
    assert list(work.glob("outputs/train/runs/*/structpred_model.npz"))
    assert (work / "mlruns" / "mlflow.db").is_file()
    assert _files(lib) == before, "the run wrote into site-packages"
    print(f"venv and wheel install {installed:.1f} s, training "
          f"{time.perf_counter() - t0 - installed:.1f} s")
