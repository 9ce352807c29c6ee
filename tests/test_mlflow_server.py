"""tracking=server against a real ``mlflow server`` on loopback (sqlite backend, proxied
artifact store in a temporary folder): a training run's params, metrics and artifacts read
back over the REST client; the server killed mid-run and started again: the training
finishes and the metrics of the outage arrive (README "A shared MLflow server")."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from train_helpers import DATA, ROOT

pytestmark = pytest.mark.faults


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder: Path, port: int) -> subprocess.Popen:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = open(folder / "server.log", "a")
    return subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_up(uri: str, proc: subprocess.Popen, timeout=180.0) -> None:
    import urllib.request
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {uri} not up after {timeout} s")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)   # the server and its uvicorn workers
        proc.wait(timeout=30)


def test_training_against_a_real_server_survives_a_server_restart(tmp_path):
    srv = tmp_path / "server"
    srv.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(srv, port)
    train = None
    try:
        _wait_up(uri, server)
        env = dict(os.environ)
        env.update({"STRUCTPRED_ROOT": str(tmp_path), "STRUCTPRED_DATA": str(DATA),
                    "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
        env.pop("STRUCTPRED_MLFLOW_URI", None)
        train = subprocess.Popen(
            [sys.executable, "-m", "structpred.train", "+experiment=denoise", "+debug=fast",
             "tracking=server", f"tracking.uri={uri}", "tracking.retries=1",
             "tracking.retry_wait=0.5", "tracking.http_retries=0", "tracking.http_timeout=5",
             "optimizer.max_iter=6", "progress=false", f"checkpoint.dir={tmp_path}/ckpt"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(tracking_uri=uri)

        # the run appears, with its first metrics: kill the server
        t0, run_id = time.monotonic(), None
        while run_id is None or not client.get_metric_history(run_id, "train/loss"):
            assert train.poll() is None and time.monotonic() - t0 < 300, "no metrics"
            exp = client.get_experiment_by_name("structpred")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            run_id = runs[0].info.run_id if runs else None
            time.sleep(0.2)
        _kill(server)
        # the training goes on; once a metric write has failed (kept in
        # metrics_pending.jsonl), it is paused while the server starts again (a restart
        # takes seconds to tens of seconds here; the training would be done by then)
        t0 = time.monotonic()
        while not list((tmp_path / "outputs").rglob("metrics_pending.jsonl")):
            assert train.poll() is None, "the training ended before a write failed"
            assert time.monotonic() - t0 < 300
            time.sleep(0.05)
        train.send_signal(signal.SIGSTOP)
        server = _start_server(srv, port)
        _wait_up(uri, server)
        train.send_signal(signal.SIGCONT)
        out, _ = train.communicate(timeout=300)
        assert train.returncode == 0, out[-3000:]
        assert "log_metrics at step" in out and "kept in" in out   # the outage was felt

        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["model.name"] == "foe"
        assert run.data.params["executor.name"] == "local"
        assert run.data.tags["config.tracking.uri"] == uri
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        last = max(steps)
        assert steps == list(range(last + 1)) and last >= 2     # none lost in the outage
        assert "test/psnr" in run.data.metrics
        assert not list((tmp_path / "outputs").rglob("metrics_pending.jsonl"))
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.yaml", "summary.txt", "checkpoints", "plots", "final_model"} <= top
        # proxied artifact store: the files are under the server's folder, served over HTTP
        got = client.download_artifacts(run_id, "summary.txt", str(tmp_path / "dl"))
        assert "PSNR on" in Path(got).read_text()
        assert list((srv / "artifacts").rglob("summary.txt"))
    finally:
        if train is not None and train.poll() is None:
            train.send_signal(signal.SIGCONT)
            train.kill()
            train.wait()
        _kill(server)
