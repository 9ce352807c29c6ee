"""The kernel cache folder: list its generated modules (current or stale) and clean it.

Command line (``python -m structpred.kernels``)::

    python -m structpred.kernels list                  # folder, modules, size, date, state
    python -m structpred.kernels clean --stale-only    # remove the stale ones
    python -m structpred.kernels clean                 # remove every generated module

A generated module (:mod:`structpred.kernels.codegen`) is a file ``<stem>_<digest>.py``
in :func:`~structpred.kernels.codegen.cache_dir`; Numba keeps its compiled code next to it
(``__pycache__``, or under ``$NUMBA_CACHE_DIR``), counted and removed with it. A module is
*current* if this version of structpred would generate it (same template, same
dependencies), *stale* otherwise: it is never loaded again, only takes disk space (an edit of
a kernel file or an upgrade leaves the old modules behind). Cleaning leaves the kernels a
running process has loaded working; a removed module that is needed again is regenerated
and compiled on first use (seconds to a minute per module on 2 cores).
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field

from structpred.kernels import codegen

#: a generated module's file: ``<stem>_<12 hex digits>.py``
_MODULE = re.compile(r"^(structpred_\w+?)_([0-9a-f]{12})\.py$")
_FB_SIZE = re.compile(r"^structpred_fb_m(\d+)$")
USAGE = "usage: python -m structpred.kernels {list | clean [--stale-only]}"


@dataclass
class Entry:
    """One generated module of the cache folder."""

    name: str                   #: module name (the file's stem)
    path: str                   #: the module's source file
    stale: bool                 #: not what this version generates (never loaded again)
    compiled: list[str] = field(default_factory=list)   #: Numba's files for it

    @property
    def size(self) -> int:
        """Bytes on disk: the source and its compiled code."""
        return sum(_size(p) for p in [self.path] + self.compiled)

    @property
    def mtime(self) -> float:
        """When it was last written or compiled (seconds since the epoch)."""
        return max([_mtime(p) for p in [self.path] + self.compiled])


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def compiled_dirs(folder: str) -> list[str]:
    """Where Numba keeps the compiled code of the modules in ``folder``: ``__pycache__``
    beside them, and the folder Numba derives from theirs under ``$NUMBA_CACHE_DIR``."""
    out = [os.path.join(folder, "__pycache__")]
    from numba.core import config
    if config.CACHE_DIR:
        try:
            from numba.core.caching import _CacheLocator
            sub = _CacheLocator.get_suitable_cache_subpath(os.path.join(folder, "m.py"))
            out.append(os.path.join(config.CACHE_DIR, sub))
        except (ImportError, AttributeError):  # pragma: no cover - a Numba without this
            pass                                # private helper: __pycache__ only
    return out


def current_names(names) -> set[str]:
    """Of the module names ``names``, the names this version generates for the same
    kernels: the filter-bank module of every filter size seen, and the L-BFGS loops bound to
    their energy-gradient kernels."""
    from structpred.kernels import filterbank
    from structpred.solvers.lbfgs import loop_module_name
    sizes = set()
    for name in names:
        mt = _MODULE.match(name + ".py")
        size = _FB_SIZE.match(mt.group(1)) if mt else None
        if size:
            sizes.add(int(size.group(1)))
    fb = {filterbank.module_name(m) for m in sizes}
    loops = {loop_module_name(n, k) for n in fb for k in filterbank.ENERGY_KERNELS}
    return fb | loops


def entries(folder: str | None = None) -> list[Entry]:
    """The generated modules in ``folder`` (default: the kernel cache folder), by name."""
    folder = folder or codegen.cache_dir()
    try:
        files = sorted(f for f in os.listdir(folder) if _MODULE.match(f))
    except OSError:
        return []
    names = [f[:-3] for f in files]
    current = current_names(names)
    out = {n: Entry(n, os.path.join(folder, n + ".py"), n not in current) for n in names}
    for stem, path in _compiled_files(folder):
        owner = out.get(stem)
        if owner is not None:
            owner.compiled.append(path)
    return list(out.values())


def _compiled_files(folder: str):
    """``(module stem, path)`` of every file in the folder's Numba cache folders."""
    for d in compiled_dirs(folder):
        try:
            listing = os.listdir(d)
        except OSError:
            continue
        for f in listing:
            yield f.split(".", 1)[0], os.path.join(d, f)


def orphans(folder: str | None = None) -> list[str]:
    """Compiled files of generated modules whose source is gone (left by a removed module)."""
    folder = folder or codegen.cache_dir()
    names = {e.name for e in entries(folder)}
    return sorted(path for stem, path in _compiled_files(folder)
                  if _MODULE.match(stem + ".py") and stem not in names)


def clean(folder: str | None = None, *, stale_only: bool = False) -> tuple[list[str], int]:
    """Remove the generated modules of ``folder`` (only the stale ones with ``stale_only``)
    with their compiled code, and compiled files left without a module. Returns the names of
    the modules removed and the bytes freed."""
    removed, freed = [], 0
    for e in entries(folder):
        if stale_only and not e.stale:
            continue
        freed += e.size
        for p in e.compiled + [e.path]:
            _remove(p)
        removed.append(e.name)
    for p in orphans(folder):
        freed += _size(p)
        _remove(p)
    return removed, freed


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:     # another process cleaned it first
        pass


def _mib(n):
    return f"{n / 2 ** 20:.1f} MiB"


def _list(out) -> int:
    folder = codegen.cache_dir()
    es = entries(folder)
    print(f"kernel cache folder: {folder} (compiled code in "
          f"{' and '.join(d for d in compiled_dirs(folder))})", file=out)
    if not es:
        print("no generated modules", file=out)
        return 0
    w = max(len(e.name) for e in es)
    print(f"{'module':<{w}}  {'size':>9}  {'modified':<16}  state", file=out)
    for e in es:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        print(f"{e.name:<{w}}  {_mib(e.size):>9}  {when:<16}  "
              f"{'stale' if e.stale else 'current'}", file=out)
    stale = [e for e in es if e.stale]
    line = (f"{len(es)} modules, {_mib(sum(e.size for e in es))}; {len(stale)} stale "
            f"({_mib(sum(e.size for e in stale))})")
    if stale:
        line += ": python -m structpred.kernels clean --stale-only removes them"
    print(line, file=out)
    return 0


def main(argv=None, out=None) -> int:
    """The command line; returns the exit status (2: bad usage, said in one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if argv in (["-h"], ["--help"]):
        print(USAGE, file=out)
        print(__doc__.split("\n\n", 1)[1].split("\n\n", 1)[1], file=out)
        return 0
    if argv == ["list"]:
        return _list(out)
    if argv and argv[0] == "clean" and argv[1:] in ([], ["--stale-only"]):
        folder = codegen.cache_dir()
        removed, freed = clean(folder, stale_only=bool(argv[1:]))
        print(f"removed {len(removed)} {'stale ' if argv[1:] else ''}generated modules "
              f"({_mib(freed)}) from {folder}", file=out)
        return 0
    got = " ".join(argv) if argv else "no command"
    print(f"{USAGE} (got: {got})", file=sys.stderr)
    return 2
