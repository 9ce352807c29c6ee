"""Generated Numba modules, written to a cache folder so that Numba's on-disk cache works.

Two things in the engine are compiled from generated source: the filter-bank kernels (one
module per filter size, :mod:`structpred.kernels.filterbank`) and the inner solver bound to
one energy kernel (:mod:`structpred.solvers.lbfgs`). Numba caches a compiled function next
to its source file and keys the cache on that file only, so a generated module is written
to a file whose name carries a digest of its source *and of every file it depends on*:
editing a dependency gives a new file, hence a recompilation, never a stale cache.

Folder: ``$STRUCTPRED_KERNEL_DIR``, else ``$XDG_CACHE_HOME/structpred/kernels`` (default
``~/.cache/structpred/kernels``), else the system temporary folder; with no writable folder
the module is compiled from memory (correct, but compiled again in every process).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import types
from collections.abc import Iterable

#: set in every generated module: its kernels may be imported by name from other generated
#: modules (their dependencies are covered by the digest in the module's name)
MARKER = "STRUCTPRED_GENERATED"

_MODULES: dict[str, types.ModuleType] = {}
_LOCK = threading.RLock()


def cache_dir() -> str:
    return os.environ.get("STRUCTPRED_KERNEL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "structpred", "kernels")


def module_name(stem: str, source: str, depends_on: Iterable[str] = ()) -> str:
    """``stem_<digest>``: the digest covers ``source`` and the files in ``depends_on``."""
    h = hashlib.sha1(source.encode())
    for path in depends_on:
        with open(path, "rb") as fh:
            h.update(fh.read())
    return f"{stem}_{h.hexdigest()[:12]}"


def _write(name: str, source: str) -> str | None:
    """Path of the module file (written once, atomically); None if no folder is writable."""
    for d in (cache_dir(), os.path.join(tempfile.gettempdir(), "structpred-kernels")):
        try:
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, name + ".py")
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w") as fh:
                    fh.write(source)
                os.replace(tmp, path)
            return path
        except OSError:
            continue
    return None


def load(stem: str, source: str, depends_on: Iterable[str] = ()) -> types.ModuleType:
    """Import generated ``source`` as the module ``module_name(stem, source, depends_on)``
    (once per process; thread-safe). It is registered in ``sys.modules``, so other generated
    modules can import from it by name."""
    name = module_name(stem, source, depends_on)
    mod = _MODULES.get(name)
    if mod is not None:
        return mod
    with _LOCK:
        mod = _MODULES.get(name)
        if mod is not None:
            return mod
        path = _write(name, source)
        if path is None:
            mod = in_memory(name, source)
            sys.modules[name] = mod
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod          # before running it, as an import would
            spec.loader.exec_module(mod)
        setattr(mod, MARKER, True)
        _MODULES[name] = mod
        return mod


def in_memory(name: str, source: str, namespace: dict | None = None) -> types.ModuleType:
    """Run ``source`` as a module without a file (Numba cannot cache it): for sources bound
    to objects (``namespace``) that cannot be imported by name."""
    mod = types.ModuleType(name)
    mod.__dict__.update(namespace or {})
    exec(compile(source.replace("cache=True", "cache=False"), name, "exec"), mod.__dict__)
    return mod
