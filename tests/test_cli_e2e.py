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
    res = run_cli("structpred.train", FAST + ["tracking.log_model=true",
                                              "tracking.register_model=e2e-foe"], tmp, store)
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
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [0, 1, 2]
    for key in ("val/psnr", "train/psnr", "train/grad_norm", "solver/iters_mean",
                "solver/iters_max", "adjoint/iters_mean", "adjoint/residual_max",
                "outer/evals", "time/elapsed_s"):
        assert client.get_metric_history(run.info.run_id, key), key
    # grouped for the MLflow UI: every key is <group>/<name>
    assert {k.split("/")[0] for k in run.data.metrics} == {
        "train", "val", "test", "solver", "adjoint", "outer", "time"}
    assert run.data.metrics["test/psnr"] > run.data.metrics["test/psnr_noisy"]


def test_run_reads_well_in_the_ui(trained):
    """Name from the model, size, noise and debug mode; hyperparameters as params, paths as
    tags; the experiment is a model-training one; the per-iteration lines in train.log."""
    tmp, store, run = trained
    assert run.info.run_name == "debug-denoise-foe8x3-s25"
    assert run.data.tags["structpred.debug"] == "true"
    params, tags = run.data.params, run.data.tags
    assert not [k for k in params if k.startswith(("paths.", "tracking.", "checkpoint."))]
    assert {"data.sigma", "model.filter_size", "solver.gtol", "optimizer.max_iter"} <= set(params)
    assert tags["config.paths.output_dir"] and tags["config.tracking.uri"].startswith("sqlite")
    assert tags["config.checkpoint.dir"].endswith("checkpoints")
    exp = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    log = next((tmp / "outputs").rglob("train.log")).read_text()
    for it in (0, 1, 2):
        assert f"iter {it}/2: loss " in log, it
    assert "val PSNR" in log.split("iter 0/2")[1].splitlines()[0]
    assert "ETA" in log.split("iter 1/2")[1].splitlines()[0]


def test_model_registered_when_asked(trained):
    tmp, store, run = trained
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'e2e-foe'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert versions[0].tags["sigma"] == "25" and versions[0].tags["debug"] == "true"
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
    assert len(rows) == 5 and rows[-1]["image"] == "mean"
    assert all(float(r["psnr_denoised"]) > float(r["psnr_noisy"]) for r in rows)
    assert float(rows[-1]["psnr_denoised"]) == pytest.approx(
        np.mean([float(r["psnr_denoised"]) for r in rows[:-1]]), abs=1e-3)
    assert all(0 < float(r["ssim_denoised"]) <= 1 for r in rows)
    assert len(list((tmp / "ev" / "images").glob("*_denoised.png"))) == 4
    ev = mlflow.search_runs(experiment_names=["structpred"], output_format="list",
                            filter_string="tags.`structpred.task` = 'evaluate'")
    assert len(ev) == 1 and ev[0].info.status == "FINISHED"
    m = ev[0].data.metrics
    assert {"eval/skimage_s25/psnr", "eval/skimage_s25/psnr_noisy", "eval/skimage_s25/ssim",
            "eval/skimage_s25/images"} <= set(m) and "test_psnr" not in m
    assert m["eval/skimage_s25/images"] == 4
    # linked to the model's run; the name says it is a subset (2 of the 3 test photographs)
    assert ev[0].data.tags["structpred.model_run_id"] == run.info.run_id
    assert ev[0].data.tags["mlflow.parentRunId"] == run.info.run_id
    assert ev[0].info.run_name == "eval-skimage-s25 debug-denoise-foe8x3-s25 (2 of 3 images)"

    import imageio.v3 as iio
    from skimage import data
    iio.imwrite(tmp / "mine.png", data.camera()[:48, :48])
    res = run_cli("structpred.denoise", [run.info.run_id, str(tmp / "mine.png"), "-o",
                                         str(tmp / "den"), "--add-noise", "25"], tmp, store)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp / "den" / "mine_denoised.png").is_file()
    assert "Downloading artifacts" not in res.stderr    # MLflow's progress bars are off


def test_joblib_sweep_makes_parent_with_children_and_summary(tmp_path):
    """hydra/launcher=joblib (structpred/configs/hydra/launcher/joblib.yaml): two jobs in worker
    processes, children named after their swept value, a parent with the sweep's params,
    counts and best child."""
    store = tmp_path / "store"
    res = run_cli("structpred.train", ["-m", "hydra/launcher=joblib", *FAST,
                                       "model.num_filters=4,8", "optimizer.max_iter=1"],
                  tmp_path, store)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "validated against ConfigStore schema" not in res.stderr
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("structpred.sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model.num_filters"] for r in children) == ["4", "8"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.info.run_name for r in children) == [
        "debug-denoise-foe4x3-s25 model.num_filters=4",
        "debug-denoise-foe8x3-s25 model.num_filters=8"]
    assert parent.data.params == {"sweep.model.num_filters": "4,8", "sweep.jobs": "2"}
    assert "JoblibLauncher" in parent.data.tags["structpred.launcher"]
    m = parent.data.metrics
    assert (m["sweep/jobs"], m["sweep/finished"], m["sweep/failed"]) == (2, 2, 0)
    best = max(children, key=lambda r: r.data.metrics["val/psnr"])
    assert parent.data.tags["structpred.best_run_id"] == best.info.run_id
    assert m["sweep/best_val_psnr"] == best.data.metrics["val/psnr"]
    # each job had half the cores (threads.numba=null: cores / n_jobs)
    logs = sorted((tmp_path / "outputs").rglob("train.log"))
    assert len(logs) == 2 and all("numba threads: " in p.read_text() for p in logs)


def test_sweep_with_a_failing_job_runs_the_others_and_ends_the_parent(tmp_path):
    """Job 0 stops through the robustness policy (exit 3): it is recorded FAILED, job 1
    still runs, the parent ends FAILED with the count, and the sweep exits 3."""
    store = tmp_path / "store"
    res = run_cli("structpred.train", ["-m", *FAST, "solver.maxiter=1,2000",
                                       "trainer.max_unconverged_fraction=0",
                                       "optimizer.max_iter=1"], tmp_path, store)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "1 of 2 sweep jobs failed" in res.stderr
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("structpred.sweep") == "parent")
    children = {r.data.params["solver.maxiter"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children["1"].info.status == "FAILED" and children["2000"].info.status == "FINISHED"
    assert "did not converge" in children["1"].data.tags["structpred.stop_reason"]
    assert parent.info.status == "FAILED"
    assert (parent.data.metrics["sweep/failed"], parent.data.metrics["sweep/finished"]) == (1, 1)
    assert parent.data.tags["structpred.best_run_id"] == children["2000"].info.run_id


def test_sweep_with_a_bad_value_stops_before_anything_runs(tmp_path):
    store = tmp_path / "store"
    res = run_cli("structpred.train", ["-m", *FAST, "data.sigma=-5,15"], tmp_path, store)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert err == ["error: sweep job #0 (data.sigma=-5): data.sigma: must be > 0, got -5; "
                   "nothing was run"]
    assert not (store / "mlflow.db").exists()      # no parent run left RUNNING
