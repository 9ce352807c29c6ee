"""Task models (inpaint, deblur) through ``evaluate`` and ``denoise``: the task comes from the
model file, and asking for another one is a one-line error (exit 2)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from structpred.data.datasets import load_split
from structpred.data.tasks import Task, task_for_model
from structpred.losses import psnr
from structpred.tracking.model_io import read_model_file
from structpred.training.app import guarded, train
from train_helpers import CONFIGS, compose_cfg, run_cli

INPAINT = {"name": "inpaint", "missing": 0.5, "mask_seed": 0}
TEST = ["data.test.limit=1", "data.test.crop=32", "data.test.crops_per_image=1", "data.sigma=5",
        "save_images=false"]


# ----------------------------------------------------------------- task_for_model
def test_task_for_model_defaults_to_the_model_task_and_rejects_another():
    inp = Task(**INPAINT)
    assert task_for_model(inp) == inp
    assert task_for_model(inp, "inpaint") == inp                       # same name: fine
    assert task_for_model(inp, {"name": "inpaint", "mask_seed": 0}) == inp
    assert task_for_model(inp, {"blur_sigma": 3.0}) == inp             # ignored by inpaint
    with pytest.raises(ValueError, match=r"trained for inpaint \(missing=0.5, mask_seed=0\) "
                                         r"but data.task asks for denoise; leave data.task out"):
        task_for_model(inp, "denoise", source="data.task")
    with pytest.raises(ValueError, match=r"asks for missing=0.3"):
        task_for_model(inp, {"name": "inpaint", "missing": 0.3})
    with pytest.raises(ValueError, match=r"trained for denoise but the task asks for inpaint"):
        task_for_model(None, "inpaint")
    blur = Task("deblur", blur_sigma=1.6, blur_size=7)
    with pytest.raises(ValueError, match=r"deblur \(blur_sigma=1.6, blur_size=7\).*blur_size=5"):
        task_for_model(blur, {"name": "deblur", "blur_size": 5})
    with pytest.raises(ValueError, match="unknown task keys"):
        task_for_model(blur, {"name": "deblur", "kernel": 3})


# ------------------------------------------------------------- a trained inpaint model
@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory):
    """A tiny inpainting model trained through the app (one outer iteration)."""
    tmp = tmp_path_factory.mktemp("inpaint")
    train(compose_cfg(["+experiment=inpaint", "+debug=fast", "optimizer.max_iter=1",
                       "val_every=0", "tracking.enabled=false"], tmp))
    path = tmp / "structpred_model.npz"
    assert read_model_file(path).model.task == Task(**INPAINT)
    return path


def compose_eval(overrides, out):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[
            *overrides, f"paths.output_dir={out}", "tracking.enabled=false"])


def _expected(model_file, task):
    """(psnr noisy, psnr restored) of the test crop degraded with ``task``."""
    cfg = compose_eval([f"model_ref={model_file}", *TEST], "unused")
    split = load_split("test", cfg.data.test, sigma=5.0, seed=int(cfg.data.seed), task=task)
    trained = read_model_file(model_file)
    return [(psnr(x, t), psnr(trained.denoise(x), t)) for x, t in zip(split.noisy, split.clean)]


def test_evaluate_cli_takes_the_task_from_the_model_file(inpaint_model, tmp_path):
    res = run_cli("structpred.evaluate", [f"model_ref={inpaint_model}", *TEST,
                                          "tracking.enabled=false",
                                          f"paths.output_dir={tmp_path}/ev"], tmp_path, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "task inpaint (missing=0.5, mask_seed=0)" in res.stdout
    rows = [r for r in csv.DictReader(open(tmp_path / "ev" / "psnr.csv")) if r["image"] != "mean"]
    want = _expected(inpaint_model, INPAINT)
    assert len(rows) == len(want) == 1
    # half of the pixels are zero in the observation: far below the ~34 dB of noise 5 alone
    assert float(rows[0]["psnr_noisy"]) == pytest.approx(want[0][0], abs=1e-4)
    assert want[0][0] < 15
    assert float(rows[0]["psnr_denoised"]) == pytest.approx(want[0][1], abs=1e-4)
    denoise_only = _expected(inpaint_model, None)[0][0]
    assert abs(float(rows[0]["psnr_noisy"]) - denoise_only) > 10


def test_evaluate_with_the_same_task_given_explicitly_agrees(inpaint_model, tmp_path):
    from structpred.evaluate import evaluate
    cfg = compose_eval([f"model_ref={inpaint_model}", *TEST, "+data.task=inpaint"], tmp_path)
    mean = evaluate(cfg)
    assert mean == pytest.approx(_expected(inpaint_model, INPAINT)[0][1], abs=1e-9)
    assert cfg.data.task.name == "inpaint" and cfg.data.task.missing == 0.5


@pytest.mark.parametrize("override,asked", [
    ("+data.task=denoise", "asks for denoise"),
    ("+data.task={name: deblur}", "asks for deblur"),
    ("+data.task={name: inpaint, missing: 0.25}", "asks for missing=0.25"),
    ("+data.task={name: inpaint, mask_seed: 3}", "asks for mask_seed=3"),
])
def test_evaluate_with_another_task_is_one_line_exit_2(inpaint_model, tmp_path, capsys,
                                                        override, asked):
    from structpred.evaluate import evaluate
    cfg = compose_eval([f"model_ref={inpaint_model}", *TEST, override], tmp_path)
    with pytest.raises(SystemExit) as exc:
        guarded(evaluate, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: data.task: the model was trained for inpaint "
                             "(missing=0.5, mask_seed=0) but data.task " + asked), err
    assert not (tmp_path / "psnr.csv").exists()


def test_evaluate_cli_mismatch_has_no_traceback(inpaint_model, tmp_path):
    res = run_cli("structpred.evaluate", [f"model_ref={inpaint_model}", *TEST,
                                          "+data.task=denoise", "tracking.enabled=false",
                                          f"paths.output_dir={tmp_path}/ev"], tmp_path, tmp_path,
                  timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: data.task: the model was trained "
                                                   "for inpaint")


def test_denoise_cli_degrades_with_the_model_task(inpaint_model, tmp_path, capsys):
    import imageio.v3 as iio
    from skimage import data

    from structpred.denoise import main as denoise_main
    clean = data.camera()[100:140, 100:140]
    iio.imwrite(tmp_path / "mine.png", clean)
    assert denoise_main([str(inpaint_model), str(tmp_path / "mine.png"), "-o",
                         str(tmp_path / "den"), "--add-noise", "5"]) == 0
    out = capsys.readouterr().out
    assert "model task: inpaint (missing=0.5, mask_seed=0)" in out
    noisy = iio.imread(tmp_path / "den" / "mine_noisy.png")
    mask = Task(**INPAINT).mask(clean.shape)
    assert np.all(noisy[mask == 0] == 0)               # the model's mask was applied
    assert np.mean(noisy[mask == 1] > 0) > 0.9
    restored = iio.imread(tmp_path / "den" / "mine_denoised.png").astype(float)
    assert psnr(restored, clean.astype(float)) > psnr(noisy.astype(float), clean.astype(float)) + 10


def test_evaluate_warns_when_the_noise_differs_from_training(inpaint_model, tmp_path, caplog):
    from structpred.evaluate import evaluate
    sigma5 = [a for a in TEST if not a.startswith("data.sigma")]
    with caplog.at_level("WARNING", logger="structpred.evaluate"):
        evaluate(compose_eval([f"model_ref={inpaint_model}", *sigma5, "data.sigma=25"],
                              tmp_path / "a"))
    assert "trained at sigma 5 but is evaluated at data.sigma=25" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="structpred.evaluate"):
        evaluate(compose_eval([f"model_ref={inpaint_model}", *TEST], tmp_path / "b"))
    assert "trained at sigma" not in caplog.text
