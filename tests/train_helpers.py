"""Helpers of the training-app tests: compose configs like the CLI does, run them in-process
against a temporary MLflow store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "structpred" / "configs"   # package data (structpred.configs.CONFIG_DIR)
DATA = ROOT.parent / "shared" / "data"
#: runnable experiments (a leading underscore marks a fragment other experiments include)
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")
                     if not p.stem.startswith("_"))


def compose_cfg(overrides, tmp: Path, config_name="train", store: Path | None = None,
                progress_key=True):
    """The config the CLI would build, with every output under ``tmp`` and MLflow in
    ``store`` (a folder; sqlite file inside). ``progress_key=False`` for configs without a
    ``progress`` key (``evaluate``)."""
    store = store or tmp
    # checkpoints under tmp too (the reproduction configs put them in the repository)
    given = any(o.startswith("checkpoint.dir=") for o in overrides)
    ckpt = [] if given or config_name != "train" else [f"checkpoint.dir={tmp}/checkpoints"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=[
            *overrides,
            *ckpt,
            f"paths.output_dir={tmp}",
            f"tracking.uri=sqlite:///{store}/mlflow.db",
            *(["progress=false"] if progress_key else []),
        ])


def run_cli(module, args, tmp: Path, store: Path, timeout=300, env_extra=None):
    """Run ``python -m module args`` with outputs under ``tmp`` and MLflow in ``store``."""
    env = dict(os.environ)
    env.update({"STRUCTPRED_ROOT": str(tmp), "STRUCTPRED_DATA": str(DATA),
                "STRUCTPRED_MLFLOW_URI": f"sqlite:///{store}/mlflow.db",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def noisy_pairs(n, shape, seed=0, sigma=25.0):
    """``n`` (noisy, clean) pairs of random images in 50..200 of ``shape`` (the small cases of
    the executor and reproduction tests)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.uniform(50, 200, size=shape)
        out.append((t + sigma * rng.normal(size=shape), t))
    return out
