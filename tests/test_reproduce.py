"""The reproduction path (issue 12): small committed state, resume in another store, no lost
evaluation work, shipped models by name, the table command (a smoke version of the whole)."""
from __future__ import annotations

import csv
import pickle

import mlflow
import numpy as np
import pytest

import structpred as sp
from structpred import reproduce
from structpred.training.app import train
from structpred.training.checkpoint import load_checkpoint
from structpred.training.loop import TrainObjective
from structpred.training.optimizers import WarmStart
from train_helpers import DATA, compose_cfg, noisy_pairs

REPRO = ["+experiment=reproduce_foe24x5_s25", "+debug=fast", "model.num_filters=4",
         "model.filter_size=3", "val_every=1"]


class Stop(Exception):
    pass


def _pairs(n=5, shape=(14, 13)):
    return noisy_pairs(n, shape, sigma=15.0)


def test_interrupted_evaluation_keeps_finished_images(tmp_path):
    """Killed after 3 of 5 images, the evaluation at the same theta reuses those 3 and ends
    where an undisturbed one ends (same sums in the same order)."""
    model = sp.make_model("foe", num_filters=3, filter_size=3, boundary="symmetric")
    theta = model.init_params(sigma=15)
    pairs = _pairs()
    solver, grad = sp.LBFGS(gtol=1e-6), sp.ImplicitGradient()
    ref, _ = TrainObjective(model, solver, grad, pairs)(theta, None, (None,) * 5)

    seen = []

    def stop_after_three():
        seen.append(1)
        if len(seen) == 3:
            raise Stop
    part = tmp_path / "partial"
    fun = TrainObjective(model, solver, grad, pairs, on_image=stop_after_three, partial_dir=part)
    with pytest.raises(Stop):
        fun(theta, None, (None,) * 5)
    kept = sorted(part.glob("*.pkl"))
    assert len(kept) >= 3                   # every finished image (threads may finish more)
    again = TrainObjective(model, solver, grad, pairs, partial_dir=part)
    res, warm = again(theta, None, (None,) * 5)
    assert again.reused == len(kept)
    assert res.loss == ref.loss
    np.testing.assert_array_equal(res.grad, ref.grad)
    assert warm[0].y.shape == model.extend(pairs[0][0]).shape   # warm starts on the domain
    # another theta: the files of the old one are dropped
    TrainObjective(model, solver, grad, pairs[:1], partial_dir=part)(theta * 1.01, None, (None,))
    assert len(list(part.glob("*.pkl"))) == 1
    f = next(part.glob("*.pkl"))
    item, w = pickle.loads(f.read_bytes())   # (slim result, warm start)
    assert isinstance(item, sp.PairResult) and item.y is None and isinstance(w, WarmStart)
    # a file of the earlier format (the whole PairResult) is still taken back
    full, _ = TrainObjective(model, solver, grad, pairs[:1])(theta * 1.01, None, (None,))
    f.write_bytes(pickle.dumps(full.items[0]))
    again = TrainObjective(model, solver, grad, pairs[:1], partial_dir=part)
    res, warm = again(theta * 1.01, None, (None,))
    assert again.reused == 1 and res.loss == full.loss
    np.testing.assert_array_equal(warm[0].u, full.items[0].adjoint.u)


def test_committed_state_resumes_in_another_store_and_ships_by_name(tmp_path, monkeypatch,
                                                                     capsys):
    """The whole path in small: train 2 outer iterations (symmetric boundary, no warm starts
    in the checkpoint), resume the committed state against a store that never saw the run (a
    new run linked by a tag, the curve replayed), ship it, load it by name, write the table."""
    ck = tmp_path / "state"
    store1, store2 = tmp_path / "store1", tmp_path / "store2"
    train(compose_cfg(REPRO + [f"checkpoint.dir={ck}"], tmp_path / "a", store=store1))
    state_file = ck / "last.npz"
    assert state_file.stat().st_size < 200_000          # theta + L-BFGS memory, no images
    _, state, meta = load_checkpoint(state_file)
    assert state.iteration == 2 and all(w is None for w in state.warm)
    assert meta["config"]["model"]["boundary"] == "symmetric"
    old_run = meta["run_id"]

    train(compose_cfg(REPRO + [f"checkpoint.dir={ck}", "optimizer.max_iter=3",
                               f"resume={state_file}"], tmp_path / "b", store=store2))
    mlflow.set_tracking_uri(f"sqlite:///{store2}/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["structpred.resumed_from"] == old_run
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs[0].info.run_id,
                                                                     "train/loss")]
    assert sorted(set(steps)) == [0, 1, 2, 3]            # the replayed curve and the new step
    _, state, _ = load_checkpoint(state_file)
    assert state.iteration == 3

    # ship it and load it by name
    monkeypatch.setenv("STRUCTPRED_PRETRAINED_DIR", str(tmp_path / "shipped"))
    (tmp_path / "shipped").mkdir()
    assert reproduce.main(["ship", "foe-24x5-s25", str(state_file)]) == 0
    # a shipped model is never replaced by accident
    assert reproduce.main(["ship", "foe-24x5-s25", str(state_file)]) == 2
    assert "--force to replace it" in capsys.readouterr().err
    assert reproduce.main(["ship", "foe-24x5-s25", str(state_file), "--force"]) == 0
    trained = sp.pretrained("foe-24x5-s25")
    assert trained.model.boundary == "symmetric" and trained.meta["iterations"] == 3
    assert trained.meta["sigma"] == 25.0
    # the commit that trained it (one segment: both processes ran the same code), the protocol
    from structpred.provenance import code_commit
    assert meta["commits"] == [[0, code_commit()]]
    assert trained.meta["commit"] == code_commit()
    assert "boundary symmetric" in trained.meta["protocol"]
    assert "3 outer iterations" in trained.meta["protocol"]
    np.testing.assert_array_equal(trained.theta, state.theta)
    from structpred.tracking.model_io import load_model
    assert load_model("pretrained:foe-24x5-s25").model.config() == trained.model.config()
    with pytest.raises(FileNotFoundError, match="available: foe-24x5-s25"):
        sp.pretrained("foe-48x7-s25")

    # the sigma-50 experiment fine-tunes from it, lambda rescaled by (25/50)^2
    from structpred.training import config as C
    cfg = compose_cfg(["+experiment=reproduce_foe24x5_s50", "+debug=fast",
                       "model.num_filters=4", "model.filter_size=3"], tmp_path / "c")
    model = C.build_model(cfg)
    theta0 = C.init_params(model, cfg)
    expected = trained.theta.copy()
    expected[model.param_slices()["log_lambda"]] += 2 * np.log(25 / 50)
    np.testing.assert_allclose(theta0, expected, rtol=0, atol=1e-14)
    bad = compose_cfg(["+experiment=reproduce_foe24x5_s50", "+debug=fast",
                       "init.from=pretrained:foe-48x7-s25"], tmp_path / "d")
    with pytest.raises(C.ConfigError, match="init.from"):
        C.init_params(C.build_model(bad), bad)

    # a full, unrounded table records the measured PSNR in the shipped file
    reproduce._record_psnr("foe-24x5-s25", trained, 27.5, 68)
    again = sp.pretrained("foe-24x5-s25")
    assert again.meta["bsd68_psnr"] == 27.5 and again.meta["commit"] == trained.meta["commit"]
    np.testing.assert_array_equal(again.theta, trained.theta)

    # the table on 2 BSD68 images, with the 'valid' row, logged to MLflow
    out = tmp_path / "table"
    uri = f"sqlite:///{tmp_path}/store3/mlflow.db"
    assert reproduce.main(["table", "--out", str(out), "--limit", "2", "--data", str(DATA),
                           "--also-valid", "foe-24x5-s25", "--tracking-uri", uri]) == 0
    rows = list(csv.DictReader(open(out / "table.csv")))
    ours = {r["method"]: r for r in rows if r["source"] == "structpred"}
    assert set(ours) == {"foe-24x5-s25", "foe-24x5-s25 (valid)"}
    assert 20 < float(ours["foe-24x5-s25"]["sigma25"]) < 35
    assert "BM3D" in (out / "table.md").read_text()
    for f in ("per_image.csv", "per_image.png", "filters-foe-24x5-s25.png"):
        assert (out / f).is_file()
    mlflow.set_tracking_uri(uri)
    logged = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {r.data.params["model"] for r in logged} == set(ours)
    assert all("eval/bsd68_s25/psnr" in r.data.metrics for r in logged)

    # a second table reuses the kept evaluations (nothing new logged); a model whose
    # parameters changed is evaluated again
    first = (out / "per_image.csv").read_text()
    assert sorted(p.name for p in (out / "results").iterdir()) == [
        "foe-24x5-s25-2.json", "foe-24x5-s25-valid-2.json"]
    assert reproduce.main(["table", "--out", str(out), "--limit", "2", "--data", str(DATA),
                           "--also-valid", "foe-24x5-s25", "--tracking-uri", uri]) == 0
    assert (out / "per_image.csv").read_text() == first
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 2
    import dataclasses
    kw = dict(limit=2, cache_dir=out / "results")
    assert reproduce.evaluate_model("foe-24x5-s25", again, DATA, **kw)[3]
    assert not reproduce.evaluate_model("foe-24x5-s25", again, DATA, fresh=True, **kw)[3]
    moved = dataclasses.replace(again, theta=again.theta * (1 + 1e-12))
    assert not reproduce.evaluate_model("foe-24x5-s25", moved, DATA, **kw)[3]


def test_reproduce_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STRUCTPRED_PRETRAINED_DIR", str(tmp_path))
    assert reproduce.main(["table", "--out", str(tmp_path / "t"), "--no-mlflow"]) == 2
    assert reproduce.main(["table", "--models", "nope", "--no-mlflow", "--out",
                           str(tmp_path / "t"), "--data", str(DATA)]) == 2
    assert reproduce.main(["ship", "foe-24x5-s25", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
