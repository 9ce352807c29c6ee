"""Checkpoints and resume: an interrupted run, resumed, ends where an uninterrupted run with
the same seed ends (bit for bit: same warm starts, deterministic kernels)."""
from __future__ import annotations

import os
import signal

import mlflow
import numpy as np
import pytest

import structpred.training.loop as loop
from structpred.tracking.model_io import read_model_file
from structpred.training.app import train
from structpred.training.checkpoint import load_checkpoint, save_checkpoint
from structpred.training.optimizers import Adam, OuterLBFGS
from train_helpers import compose_cfg

FAST = ["+experiment=denoise", "+debug=fast", "optimizer.max_iter=4", "checkpoint.every=1",
        "tracking.log_model=false"]


def _interrupt_at(monkeypatch, iteration, signum=signal.SIGINT):
    """Deliver ``signum`` to this process once the loop has completed ``iteration``."""
    real = loop.step_metrics

    def patched(state, elapsed, it_time):
        if state.iteration == iteration:
            os.kill(os.getpid(), signum)
        return real(state, elapsed, it_time)
    monkeypatch.setattr(loop, "step_metrics", patched)


@pytest.mark.parametrize("opt", ["lbfgs", "adam"])
def test_interrupt_then_resume_equals_uninterrupted(opt, tmp_path, monkeypatch):
    store = tmp_path / "store"
    extra = [f"optimizer={opt}"] + (["optimizer.batch_size=1"] if opt == "adam" else [])
    full = tmp_path / "full"
    train(compose_cfg(FAST + extra, full, store=store))
    theta_full = read_model_file(full / "structpred_model.npz").theta

    part = tmp_path / "part"
    _interrupt_at(monkeypatch, 2, signal.SIGTERM if opt == "adam" else signal.SIGINT)
    with pytest.raises(SystemExit) as exc:
        train(compose_cfg(FAST + extra, part, store=store))
    assert exc.value.code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    monkeypatch.undo()
    ckpt = part / "checkpoints" / "last.npz"
    _, state, meta = load_checkpoint(ckpt)
    assert state.iteration == 2
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    run_id = meta["run_id"]
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert not (part / "structpred_model.npz").exists()

    # resume by run id: the run continues (same id) and finishes
    train(compose_cfg(FAST + extra + [f"resume={run_id}"], part, store=store))
    theta_resumed = read_model_file(part / "structpred_model.npz").theta
    np.testing.assert_allclose(theta_resumed, theta_full, rtol=1e-12, atol=0)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train_loss")]
    assert set(range(1, 5)) <= set(steps)


def test_checkpoint_roundtrip_and_atomic_write(tmp_path):
    def fun(theta, idx, warm):
        class R:
            loss = float(theta @ theta)
            grad = 2 * theta
            items = []
        return R, warm
    opt = OuterLBFGS(max_iter=5)
    st = opt.step(fun, opt.step(fun, opt.init(fun, np.arange(3.0), 2)))
    path = save_checkpoint(tmp_path / "c.npz", "lbfgs", st, {"run_id": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary left behind
    name, back, meta = load_checkpoint(path)
    assert name == "lbfgs" and meta == {"run_id": "x"} and back.iteration == st.iteration
    np.testing.assert_array_equal(back.theta, st.theta)
    for a, b in zip(back.s_hist, st.s_hist):
        np.testing.assert_array_equal(a, b)
    adam = Adam(seed=3)
    ast = adam.init(fun, np.ones(3), 4)
    save_checkpoint(tmp_path / "a.npz", "adam", ast)
    assert load_checkpoint(tmp_path / "a.npz")[1].rng_state == ast.rng_state
