"""The layers import downwards only: the engine (models, kernels, solvers, gradients) imports
neither the training nor the tracking layer, and tracking does not import training (the
errors and the atomic file writer they share live below both: ``structpred/errors.py``,
``structpred/fileio.py``). Checked twice: what an import actually loads (a fresh process,
``sys.modules``) and every import statement in the source, the lazy ones inside functions
included."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "structpred"
ENGINE = ("models", "kernels", "solvers", "gradients")

#: package -> the packages it must never import
FORBIDDEN = {**{e: ("structpred.training", "structpred.tracking") for e in ENGINE},
             "tracking": ("structpred.training",)}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (the package uses absolute
    imports only; a relative one is reported so that this check cannot miss it)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}")
                                            for a in node.names]
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_reaches_up(package):
    bad = []
    for f in sorted((PKG / package).rglob("*.py")):
        for line, mod in _imports(f):
            if mod.startswith(FORBIDDEN[package] + (".",)):
                bad.append(f"{f.relative_to(ROOT)}:{line}: {mod}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def _loaded_after(code: str) -> list[str]:
    """The structpred modules loaded in a fresh interpreter after running ``code``."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules " \
        "if m.startswith('structpred'))))"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_tracking_and_the_engine_loads_no_higher_layer():
    tracking = [f"structpred.tracking.{p.stem}" for p in sorted((PKG / "tracking").glob("*.py"))
                if p.stem != "__init__"]
    engine = [f"structpred.{e}" for e in ENGINE]
    loaded = _loaded_after("\n".join(f"import {m}" for m in engine + tracking))
    assert set(tracking) <= set(loaded)                     # the probe did import them
    assert not [m for m in loaded if m.startswith("structpred.training")], loaded


def test_importing_the_engine_loads_neither_training_nor_tracking():
    loaded = _loaded_after("import structpred\n" +
                           "\n".join(f"import structpred.{e}" for e in ENGINE))
    assert not [m for m in loaded if m.startswith(("structpred.training",
                                                  "structpred.tracking"))], loaded
