"""The MLflow model a user loads or serves: signature and input example, the image rule on
every input (float 0..1, uint8, RGB, lists, DataFrames), the REST formats, and a real server
on loopback (``--env-manager local``; with a fresh virtualenv in the slow test)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from structpred.tracking.model_io import read_model_file, save_model
from train_helpers import ROOT


def picture(h=20, w=24):
    yy, xx = np.mgrid[0:h, 0:w]
    return 0.5 + 0.4 * np.sin(xx / 4.0) * np.cos(yy / 5.0)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A model file logged with log_pyfunc (what training does) in a temporary store:
    (model uri, run id, store uri, model file)."""
    import structpred as sp
    from structpred.tracking.mlflow_tracker import setup_experiment
    from structpred.tracking.pyfunc import log_pyfunc
    tmp = tmp_path_factory.mktemp("pyfunc")
    model = sp.make_model("foe", num_filters=4, filter_size=3)
    path = save_model(tmp / "structpred_model.npz", model, model.init_params(sigma=15),
                      solver=sp.LBFGS(), meta={"sigma": 15.0})
    uri = f"sqlite:///{tmp}/mlflow.db"
    exp = setup_experiment(uri, "pyfunc", artifact_root=str(tmp / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        info = log_pyfunc(path)
    return info.model_uri, run.info.run_id, uri, path


@pytest.fixture(scope="module")
def pyfunc(logged):
    mlflow.set_tracking_uri(logged[2])
    return mlflow.pyfunc.load_model(f"runs:/{logged[1]}/model")


def test_signature_input_example_and_self_contained(pyfunc, logged):
    sig = pyfunc.metadata.signature
    assert sig is not None
    assert {p.name: p.default for p in sig.params.params} == {"range": "auto", "gray": False}
    local = mlflow.artifacts.download_artifacts(f"runs:/{logged[1]}/model")
    example = json.load(open(os.path.join(local, "serving_input_example.json")))
    assert np.asarray(example["inputs"]).shape == (16, 16)
    reqs = open(os.path.join(local, "requirements.txt")).read().split()
    assert "structpred" not in " ".join(reqs)                       # not on a package index
    assert all("==" in r for r in reqs) and any(r.startswith("numba==") for r in reqs)
    assert os.path.isfile(os.path.join(local, "code", "structpred", "data", "images.py"))
    assert not any("__pycache__" in d for d, _, _ in os.walk(os.path.join(local, "code")))


def test_float_0_1_image_is_denoised_on_its_scale(pyfunc, logged):
    trained = read_model_file(logged[3])
    rng = np.random.default_rng(0)
    noisy = picture() + 15 / 255 * rng.standard_normal(picture().shape)
    y = pyfunc.predict(noisy)
    assert y.dtype == np.float64 and y.shape == noisy.shape
    np.testing.assert_allclose(y, trained.denoise255(noisy * 255) / 255, rtol=1e-9, atol=1e-12)
    y255 = pyfunc.predict(noisy * 255)                                  # the same, in 0..255
    np.testing.assert_allclose(y255, y * 255, rtol=1e-7, atol=1e-9)
    u8 = np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)
    yu8 = pyfunc.predict(u8)
    assert yu8.dtype == np.uint8
    np.testing.assert_array_equal(yu8, np.clip(np.round(trained.denoise255(u8)), 0, 255))
    yr = pyfunc.predict(noisy * 4000, params={"range": "0,4000"})
    np.testing.assert_allclose(yr / 4000, y, rtol=1e-7, atol=1e-9)


def test_rgb_array_gets_the_cli_rule(pyfunc):
    g = picture()
    rgb = np.stack([g, 1 - g, 0.5 * g], -1)
    with pytest.raises(MlflowException) as exc:
        pyfunc.predict(rgb)
    msg = exc.value.message
    assert "\n" not in msg and msg.startswith("image: RGB image of shape (20, 24, 3)")
    assert "params={'gray': True}" in msg
    y = pyfunc.predict(rgb, params={"gray": True})
    assert y.shape == (20, 24)                      # one gray image, not 20 images
    with pytest.raises(MlflowException, match="image: float64 image with values in .*"
                                              "params=\\{'range': 'LO,HI'\\}"):
        pyfunc.predict(g * 4000)


def test_lists_and_dataframes(pyfunc):
    g = picture() * 255
    out = pyfunc.predict([g, g[:12, :14]])
    assert [o.shape for o in out] == [(20, 24), (12, 14)]
    np.testing.assert_allclose(pyfunc.predict(pd.DataFrame(g)), out[0])
    with pytest.raises(MlflowException, match=r"images\[1\]: RGB image"):
        pyfunc.predict([g, np.stack([g, g / 2, g / 3], -1)])


def test_rest_formats(pyfunc):
    """The JSON bodies MLflow documents, through the scoring server's own parser."""
    from mlflow.pyfunc import scoring_server
    g = np.round(picture() * 255)
    want = pyfunc.predict(g)
    bodies = [{"inputs": g.tolist()}, {"instances": g.tolist()},
              {"inputs": g.astype(int).tolist()},
              {"dataframe_split": pd.DataFrame(g).to_dict(orient="split")},
              {"dataframe_records": pd.DataFrame(g).to_dict(orient="records")},
              {"inputs": (g / 255).tolist(), "params": {"range": "0,1"}}]
    int_body = bodies[2]
    for body in bodies:
        resp = scoring_server.invocations(json.dumps(body), "application/json", pyfunc,
                                          pyfunc.metadata.get_input_schema())
        assert resp.status == 200, (list(body), resp.response[:300])
        got = np.asarray(json.loads(resp.response)["predictions"])
        if body is int_body:                 # JSON integers in: integers out (the rule)
            assert got.dtype.kind == "i", got.dtype
            np.testing.assert_array_equal(got, np.clip(np.round(want), 0, 255))
            continue
        assert got.dtype.kind == "f", (list(body), got.dtype)
        scale = 1 / 255 if "params" in body else 1.0
        np.testing.assert_allclose(got, want * scale, rtol=1e-6, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_post(model_uri: str, store: str, env_manager: str, tmp, timeout: float,
                    env_extra=None):
    """Start ``mlflow models serve`` on loopback, wait for /ping, post one image in three
    formats; returns the predictions and the 400 answer to a colour image."""
    import requests
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, **(env_extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    bindir = os.path.dirname(sys.executable)       # as in an activated venv (uvicorn is there)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    mlflow_cli = os.path.join(bindir, "mlflow")
    log = open(tmp / f"serve-{env_manager}.log", "w")
    proc = subprocess.Popen([mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager",
                             env_manager, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, open(tmp / f"serve-{env_manager}.log").read()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "server did not start in time"
            time.sleep(1)
        g = np.round(picture() * 255)
        outs = []
        for body in ({"inputs": g.tolist()}, {"instances": g.tolist()},
                     {"dataframe_split": pd.DataFrame(g).to_dict(orient="split")}):
            r = requests.post(f"{url}/invocations", json=body, timeout=300)
            assert r.status_code == 200, r.text[:500]
            outs.append(np.asarray(r.json()["predictions"], dtype=float))
        bad = requests.post(f"{url}/invocations", timeout=60,
                            json={"inputs": np.stack([g, g / 2, g / 3], -1).tolist()})
        return outs, bad
    finally:
        import signal
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers, nothing else
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_serve_on_loopback_local_env(logged, pyfunc, tmp_path):
    outs, bad = _serve_and_post(logged[0], logged[2], "local", tmp_path, timeout=180)
    want = pyfunc.predict(np.round(picture() * 255))
    for got in outs:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert bad.status_code == 400 and "RGB image of shape (20, 24, 3)" in bad.json()["message"]


@pytest.mark.slow
def test_serve_with_a_fresh_virtualenv(logged, pyfunc, tmp_path):
    """``mlflow models serve --env-manager virtualenv`` builds a new environment from the
    package index alone (pyenv's Python, the logged requirements; structpred travels as the
    model's code) and answers. 3.5 minutes on a 2-core machine (the environment, 1.1 GB, is
    removed afterwards)."""
    from mlflow.utils.virtualenv import _is_pyenv_available
    if not _is_pyenv_available():
        pytest.skip("pyenv is not installed (MLflow's virtualenv manager needs it)")
    import shutil
    try:
        outs, bad = _serve_and_post(logged[0], logged[2], "virtualenv", tmp_path, timeout=900,
                                    env_extra={"MLFLOW_ENV_ROOT": str(tmp_path / "envs")})
    finally:
        shutil.rmtree(tmp_path / "envs", ignore_errors=True)      # 1.1 GB
    want = pyfunc.predict(np.round(picture() * 255))
    for got in outs:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert bad.status_code == 400 and "add params={'gray': True}" in bad.json()["message"]
