"""``python -m structpred.denoise`` as a batch tool on a user's own files (generated here):
folders and globs, every file processed, one line per failure, a summary and the exit status,
outputs in the input's bit depth and range, nothing overwritten, a model that is not found."""
from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from structpred.losses import psnr
from structpred.tracking.model_io import read_model_file, save_model
from train_helpers import ROOT


def picture(h=40, w=48):
    """A clean gray picture with values in 0..1."""
    yy, xx = np.mgrid[0:h, 0:w]
    return 0.5 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 6.0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import structpred as sp
    model = sp.make_model("foe", num_filters=4, filter_size=3)
    path = tmp_path_factory.mktemp("model") / "structpred_model.npz"
    return save_model(path, model, model.init_params(sigma=15), solver=sp.LBFGS(),
                      meta={"sigma": 15.0})


def denoise(args, capsys):
    """Run the command in-process: (exit status, stdout lines, stderr lines)."""
    from structpred.denoise import main
    rc = main([str(a) for a in args] + ["--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


def cli(args, cwd, env_extra=None, timeout=180):
    """Run ``python -m structpred.denoise`` in a subprocess."""
    env = dict(os.environ)
    env.pop("STRUCTPRED_MLFLOW_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "structpred.denoise", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_float_tiff_in_0_1_comes_out_in_0_1_with_psnr_on_its_scale(model_file, tmp_path,
                                                                     capsys):
    g = picture().astype(np.float32)
    iio.imwrite(tmp_path / "micro.tif", g)
    rc, out, err = denoise([model_file, tmp_path / "micro.tif", "-o", tmp_path / "o",
                            "--add-noise", "15"], capsys)
    assert rc == 0, err
    assert any("micro.tif: float32 values in" in ln and "taken as 0..1" in ln for ln in out)
    y = iio.imread(tmp_path / "o" / "micro_denoised.tif")
    noisy = iio.imread(tmp_path / "o" / "micro_noisy.tif")
    assert y.dtype == np.float32 and noisy.dtype == np.float32
    assert 0.05 < y.mean() < 0.95 and y.std() > 0.1                 # not black: 0..1 kept
    want = psnr(y.astype(float) * 255, g.astype(float) * 255)
    before = psnr(noisy.astype(float) * 255, g.astype(float) * 255)
    assert want > before + 1                 # an untrained model, but it denoises
    line = next(ln for ln in out if ln.startswith(f"{tmp_path / 'micro.tif'} (") and " -> " in ln)
    assert f"noisy {before:.2f} dB -> denoised {want:.2f} dB" in line
    assert "(float32 L, 0..1)" in line


def test_16bit_png_in_gives_16bit_png_out(model_file, tmp_path, capsys):
    v = np.round(picture() * 65535).astype(np.uint16)
    iio.imwrite(tmp_path / "deep.png", v)
    rc, out, err = denoise([model_file, tmp_path / "deep.png", "-o", tmp_path / "o"], capsys)
    assert rc == 0, err
    y = iio.imread(tmp_path / "o" / "deep_denoised.png")
    assert y.dtype == np.uint16
    trained = read_model_file(model_file)
    want = np.clip(np.round(trained.denoise255(v / 257.0) * 257), 0, 65535)
    np.testing.assert_array_equal(y, want)
    assert len(np.unique(y)) > 256                                   # more than 8 bits


def test_folder_and_glob_every_file_with_one_line_per_failure(model_file, tmp_path, capsys):
    src = tmp_path / "scans"
    src.mkdir()
    v = np.round(picture() * 255).astype(np.uint8)
    iio.imwrite(src / "a.png", v)
    (src / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    iio.imwrite(src / "c.png", np.stack([v, v // 2, 255 - v], -1))     # colour, no --gray
    iio.imwrite(src / "d.tif", (picture() * 4000).astype(np.float32))  # unknown scale
    iio.imwrite(src / "e.png", v[:30])
    (src / "readme.txt").write_text("not an image")                    # not picked by folder
    rc, out, err = denoise([model_file, src, tmp_path / "none.png", str(src / "*.jpg"),
                            "-o", tmp_path / "o"], capsys)
    assert rc == 2
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert errors == [ln for ln in err if ln.strip()]                  # nothing but error lines
    assert len(errors) == 5
    assert any("none.png: no such file or folder" in ln for ln in errors)
    assert any("*.jpg: no file matches this pattern" in ln for ln in errors)
    assert any("b_corrupt.png: cannot read image" in ln for ln in errors)
    assert any("c.png: RGB image of shape (40, 48, 3)" in ln and "add --gray" in ln
               for ln in errors)
    assert any("d.tif: float32 image with values in" in ln and "--range LO,HI" in ln
               for ln in errors)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_denoised.png",
                                                                  "e_denoised.png"]
    summary = out[-1]
    assert summary.startswith("summary: 2 ok, 5 failed") and "a.png" in summary \
        and "e.png" in summary and " s" in summary
    # the same through a glob, with --gray for the colour one: all three done, exit 0
    rc, out, err = denoise([model_file, str(src / "[ace].png"), "--gray", "-o",
                            tmp_path / "o2"], capsys)
    assert rc == 0, err
    assert out[-1].startswith("summary: 3 ok, 0 failed")
    assert iio.imread(tmp_path / "o2" / "c_denoised.png").shape == (40, 48)


def test_same_names_and_existing_outputs_are_never_overwritten(model_file, tmp_path, capsys):
    v = np.round(picture() * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", v)
    iio.imwrite(tmp_path / "a.tif", v)
    out_dir = tmp_path / "o"
    rc, out, err = denoise([model_file, tmp_path / "a.png", tmp_path / "a.tif", "-o", out_dir],
                           capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_png_denoised.png",
                                                         "a_tif_denoised.tif"]
    mine = out_dir / "a_png_denoised.png"
    mine.write_bytes(b"the user's own file")
    rc, out, err = denoise([model_file, tmp_path / "a.png", tmp_path / "a.tif", "-o", out_dir],
                           capsys)
    assert rc == 2
    assert any("a_png_denoised.png exists; not overwritten (use --overwrite" in ln
               for ln in err)
    assert mine.read_bytes() == b"the user's own file"
    rc, out, err = denoise([model_file, tmp_path / "a.png", "-o", out_dir, "--overwrite"],
                           capsys)
    assert rc == 0 and iio.imread(out_dir / "a_denoised.png").shape == v.shape
    rc, out, err = denoise([model_file, tmp_path / "a.png", tmp_path / "a.tif", "-o", out_dir,
                            "--overwrite"], capsys)
    assert rc == 0 and iio.imread(mine).shape == v.shape
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]   # no temporaries


def test_add_noise_zero_says_what_was_compared(model_file, tmp_path, capsys):
    iio.imwrite(tmp_path / "a.png", np.round(picture() * 255).astype(np.uint8))
    rc, out, err = denoise([model_file, tmp_path / "a.png", "-o", tmp_path / "o",
                            "--add-noise", "0"], capsys)
    assert rc == 0, err
    text = "\n".join(out)
    assert "inf" not in text.lower().replace("info", "")
    assert "no noise was added (--add-noise 0), so the input is the clean image; denoised " \
           "vs input: PSNR" in text


def test_large_image_says_it_is_working(model_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    iio.imwrite(tmp_path / "big.png", rng.integers(0, 256, (300, 300)).astype(np.uint8))
    rc, out, err = denoise([model_file, tmp_path / "big.png", "-o", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert any("big.png: large image, solving" in ln for ln in out)


def test_corrupt_and_text_files_with_gray_are_one_line_no_traceback(model_file, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "notes.txt").write_text("hello")
    for extra in ([], ["--gray"]):
        res = cli([model_file, "bad.png", "notes.txt", "-o", "o", *extra], tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 2 and all(ln.startswith("error: ") and "cannot read image" in ln
                                       for ln in lines)
        assert "summary: 0 ok, 2 failed" in res.stdout
    assert not (tmp_path / "o").exists()                    # nothing to write: no folder


def test_model_not_found_is_one_line_and_creates_nothing(tmp_path):
    iio.imwrite(tmp_path / "a.png", np.zeros((16, 16), np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    run_id = "0123456789abcdef0123456789abcdef"
    res = cli([run_id, "a.png"], tmp_path)                  # default store: ./mlruns/mlflow.db
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: model: {run_id}: no MLflow store "
                                                   f"at {tmp_path}/mlruns/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == before     # no mlruns/, no output
    # a store that exists but does not hold the run: one line too
    import mlflow
    store = tmp_path / "store"
    store.mkdir()
    mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").search_experiments()
    res = cli([run_id, "a.png", "--tracking-uri", f"sqlite:///{store}/mlflow.db"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: model: {run_id}: not found in the "
                                                   "MLflow store")
    res = cli(["typo.npz", "a.png"], tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: model: typo.npz: not a model file, a folder or an MLflow run id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before + ["store"]


def test_channel_layouts_through_the_command(model_file, tmp_path, capsys):
    v = np.round(picture() * 255).astype(np.uint8)
    alpha = np.full_like(v, 180)
    colour = np.stack([v, 255 - v, v // 2], -1)
    Image.fromarray(np.stack([v, alpha], -1), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(np.concatenate([colour, alpha[..., None]], -1), mode="RGBA").save(
        tmp_path / "rgba.png")
    Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(v).save(tmp_path / "plain.jpg", quality=95)          # no EXIF
    rc, out, err = denoise([model_file, tmp_path / "la.png", tmp_path / "rgba.png",
                            tmp_path / "p.png", "-o", tmp_path / "o"], capsys)
    assert rc == 2
    assert len(err) == 2
    assert err[0].startswith(f"error: {tmp_path / 'rgba.png'}: RGBA image of shape (40, 48, 4)")
    assert err[1].startswith(f"error: {tmp_path / 'p.png'}: P (palette) image of shape "
                             "(40, 48, 3)")
    assert all("add --gray" in ln for ln in err)
    la = iio.imread(tmp_path / "o" / "la_denoised.png")          # LA without --gray: fine
    assert la.shape == (40, 48, 2) and np.all(la[..., 1] == 180)
    rc, out, err = denoise([model_file, tmp_path / "la.png", tmp_path / "rgba.png",
                            tmp_path / "p.png", tmp_path / "plain.jpg", "--gray", "-o",
                            tmp_path / "o2"], capsys)
    assert rc == 0, err
    assert out[-1].startswith("summary: 4 ok, 0 failed")
    rgba = iio.imread(tmp_path / "o2" / "rgba_denoised.png")
    assert rgba.shape == (40, 48, 2) and np.all(rgba[..., 1] == 180)   # gray + its alpha
    assert iio.imread(tmp_path / "o2" / "p_denoised.png").shape == (40, 48)
    jpg = iio.imread(tmp_path / "o2" / "plain_denoised.png")           # lossless output
    assert jpg.dtype == np.uint8 and jpg.shape == (40, 48)
    assert psnr(jpg.astype(float), v.astype(float)) > 25


def test_run_ids_are_looked_up_in_the_apps_store(tmp_path, monkeypatch):
    """load_model(<run id>) without tracking_uri looks in $STRUCTPRED_MLFLOW_URI (as the CLIs
    do), else in a store set for MLflow itself, else in the project's mlruns/mlflow.db; the
    error names the store it looked in, and nothing is created."""
    import mlflow

    from structpred.tracking import model_io
    run = "0123456789abcdef0123456789abcdef"
    store = tmp_path / "lab" / "mlflow.db"
    monkeypatch.setenv("STRUCTPRED_MLFLOW_URI", f"sqlite:///{store}")
    with pytest.raises(FileNotFoundError, match=str(store)):
        model_io.load_model(run)
    monkeypatch.delenv("STRUCTPRED_MLFLOW_URI")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mine.db'}")
        assert model_io._default_store() == f"sqlite:///{tmp_path / 'mine.db'}"
    finally:
        mlflow.set_tracking_uri(before)
    assert not (tmp_path / "lab").exists() and not (tmp_path / "mine.db").exists()
