"""Fault injection: bad files, solver failures, rejected outer steps, kill -9, torn
checkpoints, a full disk and MLflow outages get clear errors, and nothing is lost
(README "Robustness"; the issue's table maps each case to a test here or elsewhere)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest

from structpred.data.datasets import DataError, _to_gray255
from structpred.gradients.implicit import AdjointWarning
from structpred.tracking.mlflow_tracker import Tracker
from structpred.tracking.model_io import ModelFileError, load_model, read_model_file, save_model
from structpred.training.app import guarded, train
from structpred.training.checkpoint import (
    CheckpointError, load_checkpoint, load_latest, save_checkpoint,
)
from structpred.training.config import ConfigError
from structpred.training.trainer import Callback, Policy, Trainer
from structpred.training.optimizers import Adam, OuterLBFGS
from train_helpers import ROOT, compose_cfg

pytestmark = pytest.mark.faults

# tiny and quick: 2 training crops of 24x24, no validation, one 24x24 test crop
FAST = ["+experiment=denoise", "+debug=fast", "val_every=0", "data.test.crop=24",
        "tracking.log_model=false"]
OFF = FAST + ["tracking.enabled=false"]


def _theta(folder):
    return read_model_file(folder / "structpred_model.npz").theta


# ------------------------------------------------------------------ bad inputs
def test_image_with_wrong_dimensions_names_the_file():
    with pytest.raises(DataError, match=r"scan.tif: expected a 2-D grayscale image"):
        _to_gray255(np.zeros((4, 4, 2, 2)), "scan.tif")


# ------------------------------------------------------------- solver failures
def test_inner_maxiter_is_warned_per_image_and_training_continues(tmp_path, caplog):
    """solver.maxiter=2: every inner solve stops at maxiter; with the policy off the run
    goes on, warning per image and recording the count; adjoint CG capped at 1 iteration
    warns (AdjointWarning) and is counted too."""
    # Adam always steps (an outer line search on such inexact gradients may give up)
    cfg = compose_cfg(OFF + ["optimizer=adam", "optimizer.batch_size=null",
                             "optimizer.max_iter=2", "solver.maxiter=2", "gradient.maxiter=1",
                             "trainer.max_unconverged_fraction=null"], tmp_path)
    with caplog.at_level(logging.WARNING), pytest.warns(AdjointWarning):
        assert np.isfinite(train(cfg))
    _, _, meta = load_checkpoint(tmp_path / "checkpoints" / "last.npz")
    steps = [h for h in meta["history"] if h["step"] > 0]
    assert [h["inner_unconverged"] for h in steps] == [2.0, 2.0]
    assert all(h["adjoint_unconverged"] == 2.0 for h in steps)
    assert "inner solve of image camera did not converge (maxiter" in caplog.text


def test_too_many_inner_failures_stop_the_run_with_one_line(tmp_path, capsys):
    cfg = compose_cfg(OFF + ["optimizer=adam", "optimizer.batch_size=null", "solver.maxiter=2",
                             "trainer.max_unconverged_fraction=0.5"], tmp_path)
    with pytest.raises(SystemExit) as exc:
        guarded(train, cfg)
    assert exc.value.code == 3
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "trainer.max_unconverged_fraction=0.5" in err[0]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.npz")[1].iteration == 1


# ------------------------------------------------------------ outer step guard
A = np.diag([1.0, 10.0, 100.0])
B = np.array([1.0, -2.0, 3.0])


ITEM = SimpleNamespace(solve=SimpleNamespace(iterations=1, converged=True),
                       adjoint=SimpleNamespace(iterations=1, residual=0.0, converged=True))


class FaultyQuadratic:
    """The training objective's interface on a quadratic; call ``bad_call`` returns
    ``fault`` ("nan": NaN gradient, "huge": a 1e9 loss)."""

    def __init__(self, bad_call, fault):
        self.calls, self.bad_call, self.fault = 0, bad_call, fault

    def __call__(self, theta, indices, warm):
        self.calls += 1
        r = theta - B
        loss, grad = 0.5 * float(r @ A @ r), A @ r
        if self.calls == self.bad_call:
            if self.fault == "nan":
                grad = np.full(3, np.nan)
            else:
                loss = 1e9
        return SimpleNamespace(loss=loss, grad=grad, items=[ITEM], psnr=0.0), warm


class Recorder(Callback):
    """Keeps (iteration, theta, metrics) of every accepted iteration."""

    def __init__(self):
        self.seen = []

    def on_iteration_end(self, trainer, state, metrics):
        self.seen.append((state.iteration, state.theta.copy(), metrics))


@pytest.mark.parametrize("opt,fault", [(OuterLBFGS(max_iter=15), "nan"),
                                       (Adam(max_iter=400, lr=0.05, batch_size=None), "nan"),
                                       (Adam(max_iter=400, lr=0.05, batch_size=None), "huge")])
def test_bad_outer_step_is_rejected_shrunk_and_logged(opt, fault, caplog):
    fun = FaultyQuadratic(bad_call=4, fault=fault)
    recorder = Recorder()
    trainer = Trainer(opt, fun, opt.init(fun, np.zeros(3), 1), [recorder],
                      policy=Policy(shrink=0.5), count_inner=False)
    with caplog.at_level(logging.WARNING):
        st = trainer.run()
    seen = [s for s in recorder.seen if s[0] > 0]   # the steps (0: the initial parameters)
    assert trainer.rejected == 1 and len(trainer.events) == 1
    assert "rejected" in caplog.text
    assert all(np.all(np.isfinite(t)) for _, t, _ in seen)  # no bad theta ever accepted
    ev = trainer.events[0]
    # back to the last accepted iterate (L-BFGS: its loss is the new theta's) or the one
    # before it (Adam learns a theta was bad one step later)
    back = ev["step"] - (1 if opt.loss_at_new_theta else 2)
    assert ev["back_to"] == back
    # and the run went on from there: the recorded iterations restart at back_to + 1
    its = [s[0] for s in recorder.seen]
    assert its == list(range(its[0], ev["step"])) + list(range(back + 1, its[-1] + 1))
    assert seen[-1][2]["rejected_steps"] == 1.0
    np.testing.assert_allclose(st.theta, B, atol=0.05)


def test_repeated_rejections_stop_the_run():
    from structpred.training.trainer import TrainingFailed

    class AlwaysNan(FaultyQuadratic):
        def __call__(self, theta, indices, warm):
            self.bad_call = self.calls + 1
            return super().__call__(theta, indices, warm)
    opt, fun = Adam(max_iter=10), AlwaysNan(0, "nan")
    trainer = Trainer(opt, fun, opt.init(fun, np.zeros(3), 1),
                      policy=Policy(max_rejections=2), count_inner=False)
    with pytest.raises(TrainingFailed, match="3 outer steps in a row rejected"):
        trainer.run()
    assert trainer.state.iteration == 0 and np.all(np.isfinite(trainer.state.theta))


# ------------------------------------------------------ checkpoints: torn, disk full
def _toy_state(n=3):
    def fun(theta, idx, warm):
        return SimpleNamespace(loss=float(theta @ theta), grad=2 * theta, items=[]), warm
    opt = OuterLBFGS()
    st = opt.init(fun, np.arange(float(n)), 1)
    return opt, fun, st


def test_torn_checkpoint_is_detected_and_the_previous_one_used(tmp_path, caplog):
    opt, fun, st0 = _toy_state()
    st1 = opt.step(fun, st0)
    path = tmp_path / "last.npz"
    save_checkpoint(path, "lbfgs", st0)
    save_checkpoint(path, "lbfgs", st1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz", "prev.npz"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torn
    with pytest.raises(CheckpointError, match="last.npz: torn or corrupt"):
        load_checkpoint(path)
    with caplog.at_level(logging.WARNING):
        used, _, back, _ = load_latest(path)
    assert used.name == "prev.npz" and back.iteration == 0 and "previous checkpoint" in caplog.text
    # a flipped byte inside an array (same length) is caught by the digest or zip CRC
    save_checkpoint(path, "lbfgs", st1)
    raw = bytearray(path.read_bytes())
    i = raw.find(np.asarray(st1.theta).tobytes())
    raw[i + 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="last.npz"):
        load_checkpoint(path)


def test_newer_checkpoint_format_names_file_and_version(tmp_path):
    import io
    import zipfile
    _, _, st = _toy_state()
    path = save_checkpoint(tmp_path / "last.npz", "lbfgs", st)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    head = json.loads(arrays["__meta__"].tobytes())
    head["format"] = 99
    arrays["__meta__"] = np.frombuffer(json.dumps(head).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="last.npz: checkpoint format version 99"):
        load_checkpoint(path)


def test_disk_full_reports_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    opt, fun, st0 = _toy_state()
    path = save_checkpoint(tmp_path / "last.npz", "lbfgs", st0)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="last.npz: cannot write checkpoint \\(disk full\\)"):
        save_checkpoint(path, "lbfgs", opt.step(fun, st0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary left


# ------------------------------------------------------------- kill -9 and resume
@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """theta of an uninterrupted fast run with 4 outer iterations."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    train(compose_cfg(OFF + ["optimizer.max_iter=4"], tmp))
    return _theta(tmp)


def test_kill_9_then_resume_equals_undisturbed(tmp_path, undisturbed):
    """SIGKILL after outer iteration 3 (before its checkpoint): at most one interval lost;
    resuming from the folder, or from a torn last.npz (falls back to prev.npz), ends with
    the undisturbed run's parameters."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "structpred.training.faults", "--kill-at", "3",
                          "--", *OFF, "optimizer.max_iter=4", "checkpoint.every=1",
                          f"paths.output_dir={run}", "progress=false",
                          f"hydra.run.dir={run}"],   # Hydra's log too, not <checkout>/outputs
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.npz"
    assert load_checkpoint(ckpt)[1].iteration == 2    # lost: iteration 3 only (< 1 interval)
    torn = tmp_path / "torn"
    shutil.copytree(run, torn)
    (torn / "checkpoints" / "last.npz").write_bytes(b"PK\x03\x04 torn")

    for folder in (run, torn):
        train(compose_cfg(OFF + ["optimizer.max_iter=4", f"resume={folder}"], folder))
        np.testing.assert_allclose(_theta(folder), undisturbed, rtol=1e-12, atol=0)


def test_resume_from_garbage_is_one_line(tmp_path, capsys):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(SystemExit) as exc:
        guarded(train, compose_cfg(OFF + [f"resume={bad}"], tmp_path))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: resume:") and "junk.npz" in err[0]


# ---------------------------------------------------------------- MLflow outages
def test_unreachable_tracking_server_is_one_line_at_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = compose_cfg(FAST, tmp_path)
    cfg.tracking.uri = "http://127.0.0.1:9"   # nothing listens there (compose_cfg sets a store)
    with pytest.raises(SystemExit) as exc:
        guarded(train, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tracking.uri: cannot reach")
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


def test_unreachable_tracking_server_local_fallback(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    t = Tracker({"uri": "http://127.0.0.1:9", "experiment": "x", "on_unreachable": "local"},
                local_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        run_id = t.start()
    try:
        assert "unreachable" in caplog.text and (tmp_path / "mlruns" / "mlflow.db").is_file()
        assert t.cfg["uri"].startswith("sqlite:///") and run_id
    finally:
        t.end()


@pytest.mark.parametrize("outage", ["down", "reply_lost"])
def test_midrun_outage_keeps_training_and_sends_metrics_later(tmp_path, monkeypatch, capsys,
                                                              outage):
    """MLflow fails at step 1 (all retries), and the 2nd checkpoint write hits a full
    disk: training finishes, the step-1 metrics arrive later, the error is reported and
    the checkpoint is intact. ``reply_lost``: each failed write did land (a server that
    commits and dies, a timed-out reply), so the step must not be recorded twice (CI of
    stop 25 saw steps [0, 1, 1, 2, ...] against a killed server)."""
    real_log, real_fsync = mlflow.log_metrics, os.fsync

    def flaky(metrics, step=None, **kw):
        if step == 1 and not getattr(flaky, "healed", False):
            if outage == "reply_lost":
                real_log(metrics, step=step, **kw)
            raise ConnectionError("server down")
        return real_log(metrics, step=step, **kw)
    monkeypatch.setattr(mlflow, "log_metrics", flaky)
    writes = []

    def fsync(fd):
        writes.append(fd)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    store = tmp_path / "store"
    # checkpoint.partial=false: the 2nd fsync must be the 2nd checkpoint's, not an image's
    cfg = compose_cfg(FAST + ["tracking.retry_wait=0", "checkpoint.partial=false"], tmp_path,
                      store=store)
    # heal once step 1 was kept: the next write (step 2) flushes it first
    real_keep = Tracker._keep

    def keep(self, metrics, step):
        flaky.healed = True
        return real_keep(self, metrics, step)
    monkeypatch.setattr(Tracker, "_keep", keep)
    assert np.isfinite(train(cfg))
    assert "cannot write checkpoint (disk full)" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "checkpoints" / "last.npz")[1].iteration == 2
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    run = mlflow.search_runs(experiment_names=["structpred"], output_format="list")[0]
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id,
                                                                        "train/loss")]
    assert sorted(steps) == [0, 1, 2] and run.info.status == "FINISHED"
    assert not (tmp_path / "metrics_pending.jsonl").exists()
    # no metric of step 1 is recorded twice
    hist = [mlflow.MlflowClient().get_metric_history(run.info.run_id, k)
            for k in run.data.metrics]
    assert len(hist) > 5 and all(sum(m.step == 1 for m in h) <= 1 for h in hist)


# ------------------------------------------------------------------ model files
def test_corrupt_or_incompatible_model_file_names_file_and_version(tmp_path, capsys):
    import structpred as sp
    model = sp.make_model("foe", num_filters=2, filter_size=3)
    good = save_model(tmp_path / "m.npz", model, model.init_params())
    assert read_model_file(good).theta.size == model.num_params
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="bad.npz: not a structpred model file or corrupt"):
        load_model(bad)
    with np.load(good) as z:
        head = json.loads(z["header"].tobytes())
        theta = z["theta"]
    head["format"] = 7
    new = tmp_path / "new.npz"
    np.savez(new, theta=theta, header=np.frombuffer(json.dumps(head).encode(), np.uint8))
    with pytest.raises(ModelFileError, match="new.npz: model file format version 7"):
        load_model(new)
    from structpred.denoise import main as denoise_main
    assert denoise_main([str(bad), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npz" in err[0]


@pytest.mark.parametrize("fault", ["half written", "fsync fails", "crash"])
def test_model_file_write_failure_keeps_the_previous_file(tmp_path, monkeypatch, fault):
    """A model file is written to a temporary file and renamed over the old one: a failure
    in the middle of the write leaves the previous model file whole and no temporary."""
    import structpred as sp
    import structpred.fileio as fileio   # the atomic writer of model files and checkpoints
    model = sp.make_model("foe", num_filters=2, filter_size=3)
    old_theta = model.init_params()
    path = save_model(tmp_path / "structpred_model.npz", model, old_theta, meta={"n": 1})
    before = path.read_bytes()
    real_write = fileio._write_durably

    def half(tmp, payload):    # the disk fills up half way through the file
        with open(tmp, "wb") as fh:
            fh.write(bytes(payload)[:len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    def crash(tmp, payload):   # e.g. Ctrl-C while the bytes are going out
        real_write(tmp, bytes(payload)[:100])
        raise KeyboardInterrupt
    if fault == "fsync fails":
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(fileio, "_write_durably", half if fault == "half written" else crash)
    with pytest.raises(KeyboardInterrupt if fault == "crash" else OSError):
        save_model(path, model, old_theta + 1.0, meta={"n": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["structpred_model.npz"]  # no temporary
    back = read_model_file(path)
    np.testing.assert_array_equal(back.theta, old_theta)
    assert back.meta == {"n": 1}
    # and a write that succeeds replaces it
    save_model(path, model, old_theta + 1.0, meta={"n": 2})
    np.testing.assert_array_equal(read_model_file(path).theta, old_theta + 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["structpred_model.npz"]


def test_bad_policy_value_names_the_key(tmp_path):
    from structpred.training.config import validate
    with pytest.raises(ConfigError, match=r"trainer\.max_unconverged_fraction: must be in"):
        validate(compose_cfg(OFF + ["trainer.max_unconverged_fraction=2"], tmp_path))
    with pytest.raises(ConfigError, match=r"tracking\.on_unreachable: unknown mode"):
        validate(compose_cfg(OFF + ["tracking.on_unreachable=maybe"], tmp_path))


def test_fresh_run_over_an_earlier_runs_checkpoint_is_refused(tmp_path, capsys):
    """A run started without resume= into a checkpoint.dir holding another run's state
    (e.g. a reproduction restarted over its committed state) would rotate that state away
    within two iterations: refused, the file untouched."""
    ckpt = tmp_path / "checkpoints" / "last.npz"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"an earlier run's state")
    with pytest.raises(SystemExit) as exc:
        guarded(train, compose_cfg(OFF, tmp_path))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint.dir:")
    assert f"resume={ckpt}" in err[0]
    assert ckpt.read_bytes() == b"an earlier run's state"
