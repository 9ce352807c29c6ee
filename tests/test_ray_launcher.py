"""hydra/launcher=ray (structpred/configs/hydra/launcher/ray.yaml): sweeps as Ray tasks
through Hydra's own launcher plugin. The plugin (hydra-ray-launcher, extra ``ray-launcher``) pins cloudpickle
2.2.1, which conflicts with joblib >= 1.5 (the joblib launcher of the test extra): the sweep
test runs where the plugin is installed, which .ci/run does in a venv of its own (README
"Scaling out")."""
from __future__ import annotations

import importlib.util

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from train_helpers import CONFIGS, run_cli

FAST = ["+experiment=denoise", "+debug=fast"]


def test_ray_launcher_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=ray"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address is None and launcher.ray.remote.num_cpus == 1
    assert set(launcher.ray.init.runtime_env.env_vars) == {"STRUCTPRED_PARENT_RUN_ID",
                                                          "STRUCTPRED_SWEEP_KEYS"}


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="optional: pip install -e '.[ray-launcher]' (its cloudpickle pin "
                           "conflicts with joblib's: .ci/run runs it in a venv of its own)")
def test_ray_launcher_sweep_makes_parent_with_children(tmp_path):
    """Two jobs as Ray tasks on a local Ray instance: the same MLflow parent/children layout
    as a joblib sweep (children named after their swept value, the parent's summary)."""
    store = tmp_path / "store"
    res = run_cli("structpred.train", ["-m", "hydra/launcher=ray",
                                       "hydra.launcher.ray.init.num_cpus=2", *FAST,
                                       "model.num_filters=4,8", "optimizer.max_iter=1"],
                  tmp_path, store, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("structpred.sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert "RayLauncher" in parent.data.tags["structpred.launcher"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [
        "debug-denoise-foe4x3-s25 model.num_filters=4",
        "debug-denoise-foe8x3-s25 model.num_filters=8"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.data.params == {"sweep.model.num_filters": "4,8", "sweep.jobs": "2"}
    m = parent.data.metrics
    assert (m["sweep/jobs"], m["sweep/finished"], m["sweep/failed"]) == (2, 2, 0)
    # each job had remote.num_cpus = 1 Numba thread
    logs = sorted((tmp_path / "outputs").rglob("train.log"))
    assert len(logs) == 2 and all("numba threads: 1," in p.read_text() for p in logs)
