"""End to end: the real CLI in subprocesses against a temporary MLflow sqlite store."""
from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest

from structpred.tracking.model_io import load_model
from train_helpers import run_cli

FAST = ["+experiment=denoise", "+debug=fast"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fast training run through the CLI; returns (tmp, store, run)."""
    tmp = tmp_path_factory.mktemp("e2e")
    store = tmp / "store"
    res = run_cli("structpred.train", FAST, tmp, store)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out images" in res.stdout and "trained" in res.stdout
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    assert len(runs) == 1
    return tmp, store, runs[0]


def test_run_is_finished_with_metrics_and_artifacts(trained):
    tmp, store, run = trained
    assert run.info.status == "FINISHED"
    assert run.data.params["model.num_filters"] == "8"
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [0, 1, 2]
    for key in ("val_psnr", "grad_norm", "inner_iters_mean", "inner_iters_max",
                "adjoint_iters_mean", "adjoint_residual_max", "wall_time"):
        assert client.get_metric_history(run.info.run_id, key), key
    assert run.data.metrics["test_psnr"] > run.data.metrics["test_psnr_noisy"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "final_model", "checkpoints"} <= arts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/filters.png", "plots/comparison.png", "plots/curves.png"}


def test_logged_model_loads_and_denoises(trained):
    tmp, store, run = trained
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(50, 200, 20), (20, 1))
    noisy = clean + 25 * rng.standard_normal(clean.shape)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    y = pyfunc.predict(noisy)
    assert y.shape == noisy.shape and np.mean((y - clean) ** 2) < np.mean((noisy - clean) ** 2)
    direct = load_model(run.info.run_id).denoise(noisy)
    np.testing.assert_allclose(direct, y)
    pair = pyfunc.predict([noisy, noisy[:16, :18]])      # a list of images of different shapes
    assert [p.shape for p in pair] == [(20, 20), (16, 18)]
    np.testing.assert_allclose(pair[0], y)


def test_evaluate_and_denoise_cli(trained):
    tmp, store, run = trained
    res = run_cli("structpred.evaluate", [f"model_ref={run.info.run_id}", "data.test.limit=2",
                                          "data.test.crop=32", f"paths.output_dir={tmp}/ev"],
                  tmp, store)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp / "ev" / "psnr.csv")))
    assert len(rows) == 4 and all(float(r["psnr_denoised"]) > float(r["psnr_noisy"])
                                  for r in rows)
    assert len(list((tmp / "ev" / "images").glob("*_denoised.png"))) == 4
    ev = mlflow.search_runs(experiment_names=["structpred"], output_format="list",
                            filter_string="tags.`structpred.task` = 'evaluate'")
    assert len(ev) == 1 and ev[0].info.status == "FINISHED" and "test_psnr" in ev[0].data.metrics

    import imageio.v3 as iio
    from skimage import data
    iio.imwrite(tmp / "mine.png", data.camera()[:48, :48])
    res = run_cli("structpred.denoise", [run.info.run_id, str(tmp / "mine.png"), "-o",
                                         str(tmp / "den"), "--add-noise", "25"], tmp, store)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp / "den" / "mine_denoised.png").is_file()


def test_multirun_makes_parent_with_children(tmp_path):
    store = tmp_path / "store"
    res = run_cli("structpred.train", ["-m", *FAST, "model.num_filters=4,8",
                                       "optimizer.max_iter=1", "tracking.log_model=false"],
                  tmp_path, store)
    assert res.returncode == 0, res.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("structpred.sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["model.num_filters"] for r in children) == ["4", "8"]
    assert all(r.info.status == "FINISHED" for r in children)
