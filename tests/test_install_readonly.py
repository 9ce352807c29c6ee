"""A read-only install (package folder and HOME not writable, e.g. a shared lab install or a
container): ``import structpred`` must work, with Numba's cache moved to a writable folder
(or off), said in one line. Numba's ``cache=True`` otherwise fails at import with "cannot
cache function ...: no locator available".

Tests run as root here, and root ignores permission bits: the import then runs as the user
``nobody`` (``setpriv``). As another user, permission bits are enough."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETPRIV = shutil.which("setpriv")


def _as_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]


@pytest.fixture(scope="module")
def readonly_install():
    """A read-only copy of the package, a read-only HOME and a writable TMPDIR, in a folder
    the unprivileged user can traverse (pytest's tmp_path is private to root)."""
    if os.geteuid() == 0 and SETPRIV is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    probe = subprocess.run(_as_user([sys.executable, "-c", "import numba, mlflow"]),
                           capture_output=True, env={"PATH": os.environ.get("PATH", ""),
                                                     "HOME": "/nonexistent"})
    if probe.returncode != 0:
        pytest.skip("the interpreter is not usable by an unprivileged user here")
    base = Path(tempfile.mkdtemp(prefix="structpred-ro-"))
    os.chmod(base, 0o755)
    pkg, home, tmp = base / "pkg", base / "home", base / "tmp"
    shutil.copytree(ROOT / "structpred", pkg / "structpred",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home.mkdir()
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    for d, _, files in os.walk(base):
        if Path(d) == tmp:
            continue
        for f in files:
            os.chmod(Path(d) / f, 0o444)
        os.chmod(d, 0o555)
    yield base
    for d, _, _ in os.walk(base):
        os.chmod(d, 0o755)
    shutil.rmtree(base, ignore_errors=True)


def _import(base: Path, tmpdir: Path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(base / "home"),
           "TMPDIR": str(tmpdir), "PYTHONPATH": str(base / "pkg")}
    code = ("import structpred, numba; from structpred import _numba_cache as c; "
            "print('CACHE', numba.config.CACHE_DIR or '-'); print('NOTE', c.NOTE)")
    return subprocess.run(_as_user([sys.executable, "-c", code]), cwd=base, env=env,
                           capture_output=True, text=True, timeout=120)


def test_readonly_install_imports_with_cache_in_a_writable_folder(readonly_install):
    res = _import(readonly_install, readonly_install / "tmp")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no locator available" not in res.stderr
    uid = 65534 if os.geteuid() == 0 else os.getuid()     # nobody, or this user
    cache = readonly_install / "tmp" / f"structpred-numba-{uid}"
    assert f"CACHE {cache}" in res.stdout
    notes = [line for line in res.stderr.splitlines() if "not writable" in line]
    assert len(notes) == 1 and "NUMBA_CACHE_DIR" in notes[0]


def test_no_writable_folder_at_all_turns_the_disk_cache_off(monkeypatch, tmp_path):
    """No writable folder anywhere (tempfile falls back to /tmp, so simulated): Numba's disk
    cache is off, ``cache=True`` functions still compile, and one line says so."""
    import numba
    from numba.core import dispatcher

    from structpred import _numba_cache
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(dispatcher.Dispatcher, "enable_caching",
                        dispatcher.Dispatcher.enable_caching)   # restored after the test
    monkeypatch.setattr(_numba_cache, "writable", lambda folder: False)
    note = _numba_cache.configure(str(tmp_path))
    assert "compiled in every process" in note and "NUMBA_CACHE_DIR" not in os.environ

    @numba.njit(cache=True)
    def twice(x):
        return 2 * x
    from numba.core.caching import NullCache
    assert twice(21) == 42 and isinstance(twice._cache, NullCache)   # caching left off


def test_writable_install_changes_nothing(monkeypatch):
    from structpred import _numba_cache
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert _numba_cache.configure() is None and "NUMBA_CACHE_DIR" not in os.environ
