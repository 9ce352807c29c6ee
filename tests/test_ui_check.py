"""The MLflow UI in a real browser (issue 15): ``experiments/ui_check.py`` builds a store
(a debug training run, a 2-job sweep, an evaluation), serves it with ``mlflow ui`` and checks
the pages in Chromium. About 2 minutes on 2 cores: marked slow (``python -m pytest -m slow
tests/test_ui_check.py``)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import ROOT

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                    reason="playwright is not installed (pip install playwright; no browser "
                           "download needed, it drives /usr/bin/chromium)")
def test_mlflow_ui_shows_what_a_researcher_needs(tmp_path):
    shots = tmp_path / "shots"
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "ui_check.py"), str(shots),
                        "--store", str(tmp_path / "store")], capture_output=True, text=True,
                       timeout=1500, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "0 failed" in r.stdout
    assert len(list(shots.glob("*.png"))) >= 7
