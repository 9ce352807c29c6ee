"""Generated Numba modules: rendered from template modules, written to a cache folder so
that Numba's on-disk cache works.

Two things in the engine are compiled from generated source, both through this module: the
filter-bank kernels (one module per filter size; template
:mod:`structpred.kernels._filterbank_template`, bound by :mod:`structpred.kernels.filterbank`)
and the inner solver bound to one energy kernel (template
:mod:`structpred.solvers._lbfgs_template`, bound by :func:`structpred.solvers.lbfgs.loop_for`).

A template is a real, importable Python module (it can be linted and imported). A line that
ends with ``# codegen: NAME`` is a placeholder: :func:`render` replaces the whole line by
``replacements[NAME]``, indented like the line (several lines, or none); every other line is
copied as it is. A stub function's body is one such line, a constant is ``M = 3  # codegen:
M``. :func:`load` imports the rendered source as a module.

Numba caches a compiled function next to its source file and keys the cache on that file
only, so a generated module is written to a file whose name carries a digest of its source
*and of every file it depends on*: editing a template or a dependency gives a new file, hence
a recompilation, never a stale cache. ``python -m structpred.kernels list`` shows the folder
and which of its modules are stale; ``... clean [--stale-only]`` removes them.

Folder: ``$STRUCTPRED_KERNEL_DIR``, else ``$XDG_CACHE_HOME/structpred/kernels`` (default
``~/.cache/structpred/kernels``), else the system temporary folder; with no writable folder
the module is compiled from memory (correct, but compiled again in every process).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
import types
from collections.abc import Iterable, Mapping

#: set in every generated module: its kernels may be imported by name from other generated
#: modules (their dependencies are covered by the digest in the module's name)
MARKER = "STRUCTPRED_GENERATED"

_MODULES: dict[str, types.ModuleType] = {}
_LOCK = threading.RLock()


def cache_dir() -> str:
    return os.environ.get("STRUCTPRED_KERNEL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "structpred", "kernels")


_PLACEHOLDER = re.compile(r"^([ \t]*)\S.*#\s*codegen:\s*(\w+)[ \t]*$")


def template_path(template: str) -> str:
    """The file of the template module ``template`` (a dotted name), found without importing
    it."""
    spec = importlib.util.find_spec(template)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"no template module {template!r} (a .py file on the import path)")
    return spec.origin


def render(template: str, replacements: Mapping[str, str]) -> str:
    """The source of the template module ``template`` (dotted name) with each placeholder
    line (``... # codegen: NAME``) replaced by ``replacements[NAME]`` re-indented to the
    line's indentation (an empty string removes the line). Every placeholder must be given
    and every replacement must have a placeholder (ValueError otherwise). The result starts
    with a line saying it is generated."""
    with open(template_path(template)) as fh:
        lines = fh.read().splitlines()
    out = [f"# Generated from {template} by structpred.kernels.codegen.render; do not edit."]
    seen = set()
    for line in lines:
        mt = _PLACEHOLDER.match(line)
        if mt is None:
            out.append(line)
            continue
        indent, name = mt.groups()
        if name not in replacements:
            raise ValueError(f"template {template}: no replacement for placeholder {name!r}")
        seen.add(name)
        out.extend(indent + r if r.strip() else "" for r in replacements[name].splitlines())
    unused = sorted(set(replacements) - seen)
    if unused:
        raise ValueError(f"template {template}: no placeholder for {unused}")
    return "\n".join(out) + "\n"


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
