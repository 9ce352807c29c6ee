"""Checkpoints and resume: an interrupted run, resumed, ends where an uninterrupted run with
the same seed ends (bit for bit: same warm starts, deterministic kernels)."""
from __future__ import annotations

import dataclasses
import os
import signal

import mlflow
import numpy as np
import pytest

import structpred.training.trainer as trainer_module
from structpred.tracking.model_io import read_model_file
from structpred.training.app import train
from structpred.training.checkpoint import load_checkpoint, save_checkpoint
from structpred.training.faults import SignalAt
from structpred.training.optimizers import Adam, OuterLBFGS
from train_helpers import compose_cfg

FAST = ["+experiment=denoise", "+debug=fast", "optimizer.max_iter=4", "checkpoint.every=1",
        "tracking.log_model=false"]


def _interrupt_at(iteration, signum=signal.SIGINT):
    """Callbacks that deliver ``signum`` to this process once the loop has completed
    ``iteration`` (the fault injector)."""
    return [SignalAt([iteration], signum)]


@pytest.mark.parametrize("opt", ["lbfgs", "adam"])
def test_interrupt_then_resume_equals_uninterrupted(opt, tmp_path):
    store = tmp_path / "store"
    extra = [f"optimizer={opt}"] + (["optimizer.batch_size=1"] if opt == "adam" else [])
    full = tmp_path / "full"
    train(compose_cfg(FAST + extra, full, store=store))
    theta_full = read_model_file(full / "structpred_model.npz").theta

    part = tmp_path / "part"
    with pytest.raises(SystemExit) as exc:
        train(compose_cfg(FAST + extra, part, store=store),
              callbacks=_interrupt_at(2, signal.SIGTERM if opt == "adam" else signal.SIGINT))
    assert exc.value.code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
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
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/loss")]
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
    assert len(back.s_hist) == len(st.s_hist) == len(back.y_hist) == len(st.y_hist) == 2
    for f in dataclasses.fields(st):         # every field but the in-memory BatchResult
        if f.name != "last":
            want, got = getattr(st, f.name), getattr(back, f.name)
            if isinstance(want, tuple):
                assert len(got) == len(want), f.name
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b, err_msg=f.name)
            else:
                np.testing.assert_array_equal(got, want, err_msg=f.name)
    adam = Adam(seed=3)
    ast = adam.init(fun, np.ones(3), 4)
    save_checkpoint(tmp_path / "a.npz", "adam", ast)
    assert load_checkpoint(tmp_path / "a.npz")[1].rng_state == ast.rng_state


# ------------------------------------------------ resume after rejected outer steps
REJECT = ["+experiment=denoise", "+debug=fast", "optimizer.max_iter=4", "checkpoint.every=1",
          "val_every=0", "tracking.enabled=false"]
OPTS = {"lbfgs": ["optimizer=lbfgs"], "adam": ["optimizer=adam", "optimizer.batch_size=1"]}


def _reject_from(monkeypatch, iteration, on_reject=None):
    """Fault injection: reject every outer step reaching ``iteration`` or later while its
    step is not yet shrunk below 0.05 (L-BFGS' ``step_scale``, Adam's ``lr_scale``): each such
    step is rejected twice in a row (scale 1, then 0.1) and accepted at 0.001, whatever the
    process, so an undisturbed and a resumed run meet the same rejections."""
    real = trainer_module.bad_step

    def patched(good, new, max_increase):
        scale = getattr(good, "step_scale", getattr(good, "lr_scale", 1.0))
        if new.iteration >= iteration and scale > 0.05:
            if on_reject is not None:
                on_reject()
            return f"injected fault (step scale {scale:g})"
        return real(good, new, max_increase)
    monkeypatch.setattr(trainer_module, "bad_step", patched)


def _history(folder):
    _, state, meta = load_checkpoint(folder / "checkpoints" / "last.npz")
    return state, [(h["step"], h.get("rejected_steps"), h["train_loss"])
                   for h in meta["history"]]


@pytest.fixture(scope="module")
def undisturbed_with_rejections(tmp_path_factory):
    """Per optimiser: the final theta and (step, rejected_steps, loss) history of a run
    whose steps to iteration 3 and 4 are rejected (twice each for L-BFGS)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        _reject_from(mp, 3)
        for opt, extra in OPTS.items():
            tmp = tmp_path_factory.mktemp(f"undisturbed_{opt}")
            train(compose_cfg(REJECT + extra, tmp))
            out[opt] = (read_model_file(tmp / "structpred_model.npz").theta, _history(tmp)[1])
    return out


@pytest.mark.parametrize("opt,when", [("lbfgs", "at the first rejection"),
                                      ("adam", "at the first rejection"),
                                      ("adam", "before the first rejection")])
def test_resume_after_rejected_steps_equals_undisturbed(opt, when, tmp_path, monkeypatch,
                                                        undisturbed_with_rejections):
    """The rejection memory (rejections so far and in a row, and for Adam the good state
    before the current one, which a rejection goes back to) is checkpointed: interrupted in
    the middle of a run of rejections, or just before one, the resumed run ends where the
    undisturbed one does, with the same rejected_steps metrics."""
    theta_full, history_full = undisturbed_with_rejections[opt]
    assert max(r or 0 for _, r, _ in history_full) >= 2   # rejections did happen
    assert history_full[-1][0] == 4
    cfg = REJECT + OPTS[opt]
    sent = []

    def interrupt():
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
    callbacks = []
    if when == "at the first rejection":
        _reject_from(monkeypatch, 3, on_reject=interrupt)
    else:
        _reject_from(monkeypatch, 3)
        callbacks = _interrupt_at(2)
    with pytest.raises(SystemExit) as exc:
        train(compose_cfg(cfg, tmp_path), callbacks=callbacks)
    assert exc.value.code == 128 + signal.SIGINT
    _, _, meta, extra = load_checkpoint(tmp_path / "checkpoints" / "last.npz", with_extra=True)
    rejected = 1 if when == "at the first rejection" else 0
    assert meta["trainer"]["rejected"] == rejected and meta["trainer"]["streak"] == rejected
    assert ("before" in extra) == (opt == "adam")          # only Adam goes back to it
    monkeypatch.undo()

    _reject_from(monkeypatch, 3)
    train(compose_cfg(cfg + [f"resume={tmp_path / 'checkpoints' / 'last.npz'}"], tmp_path))
    np.testing.assert_allclose(read_model_file(tmp_path / "structpred_model.npz").theta,
                               theta_full, rtol=1e-12, atol=0)
    assert _history(tmp_path)[1] == history_full


def test_checkpoint_extra_states_share_warm_starts_and_old_files_load(tmp_path):
    from structpred.training.trainer import Trainer
    from structpred.training.optimizers import WarmStart
    w = tuple(WarmStart(y=np.full((2, 2), float(i)), u=np.zeros((2, 2))) for i in range(3))
    adam = Adam(seed=1)
    before = adam.init(None, np.ones(3), 3).__class__(
        theta=np.ones(3), m=np.zeros(3), v=np.zeros(3), rng_state={"a": 1}, warm=w)
    now = before.__class__(theta=np.zeros(3), m=np.ones(3), v=np.ones(3), rng_state={"a": 2},
                           iteration=1, warm=(w[0], WarmStart(y=np.ones((2, 2)), u=None), w[2]))
    path = save_checkpoint(tmp_path / "c.npz", "adam", now, {"trainer": {"rejected": 2}},
                           extra_states={"before": before})
    with np.load(path) as z:       # the two shared warm starts are stored once
        assert sum(k.endswith("/y") for k in z.files) == 4
    name, st, meta, extra = load_checkpoint(path, with_extra=True)
    assert load_checkpoint(path)[1].iteration == 1          # the 3-tuple form is unchanged
    b = extra["before"]
    np.testing.assert_array_equal(b.theta, before.theta)
    assert b.rng_state == {"a": 1} and st.rng_state == {"a": 2}
    for i in range(3):
        np.testing.assert_array_equal(b.warm[i].y, w[i].y)
    assert b.warm[0] is st.warm[0] and b.warm[1] is not st.warm[1]
    assert st.warm[1].u is None
    # a checkpoint of before the rejection memory was kept: no extra states, no memory
    old = save_checkpoint(tmp_path / "old.npz", "adam", now, {"history": []})
    assert load_checkpoint(old, with_extra=True)[3] == {}
    trainer = Trainer(adam, None, now, None)
    trainer.restore(load_checkpoint(old)[2].get("trainer"), None)
    assert (trainer.rejected, trainer.streak, trainer.events, trainer.before) == (0, 0, [], None)
    trainer.restore(meta["trainer"], b)
    assert (trainer.rejected, trainer.streak, trainer.before) == (2, 0, b)


# ------------------------------------------------ resume on another objective (more data)
def test_objective_changes_names_what_defines_the_objective():
    from structpred.training.app import objective_changes
    before = {"model": {"num_filters": 8}, "solver": {"gtol": 1e-4}, "gradient": {"rtol": 1e-6},
              "data": {"root": "/a", "sigma": 25, "train": {"path": "/a/t", "limit": 64},
                       "val": {"limit": 8}, "test": {"limit": 8}},
              "optimizer": {"max_iter": 250}, "threads": {"numba": 1}}
    moved = {**before, "data": {**before["data"], "root": "/b", "train": {"path": "/b/t",
             "limit": 64}, "val": {"limit": 4}, "test": {"limit": 68}},
             "optimizer": {"max_iter": 300}, "threads": {"numba": 2}}
    assert objective_changes(before, moved) == []   # where things are, how long, how fast
    more = {**before, "data": {**before["data"], "train": {"path": "/a/t", "limit": 128}}}
    assert objective_changes(before, more) == ["data.train.limit: 64 -> 128"]
    tighter = {**before, "solver": {"gtol": 1e-6}}
    assert objective_changes(before, tighter) == ["solver.gtol: 0.0001 -> 1e-06"]
    assert objective_changes(None, more) == []        # a checkpoint that kept no config
    newer = {**before, "model": {"num_filters": 8, "pad": None}}   # a key added since
    assert objective_changes(before, newer) == ["model.pad: (absent) -> None"]


def _quadratic(center):
    """An outer objective sum (theta - center)^2 / 2 as the executors' ``fun``."""
    def fun(theta, idx, warm):
        class R:
            loss = 0.5 * float((theta - center) @ (theta - center))
            grad = theta - center
            items = []
        return R, warm
    return fun


def test_rebase_evaluates_the_state_on_the_new_objective():
    opt = OuterLBFGS(max_iter=10)
    old, new = _quadratic(np.zeros(3)), _quadratic(np.ones(3))
    st = opt.step(old, opt.step(old, opt.init(old, np.arange(3.0), 2)))
    back = opt.rebase(new, st, 4)
    np.testing.assert_array_equal(back.theta, st.theta)
    assert back.loss == new(st.theta, None, ())[0].loss != st.loss
    np.testing.assert_array_equal(back.grad, st.theta - 1.0)
    assert len(back.warm) == 4 and back.prev_loss == np.inf and back.iteration == st.iteration
    assert len(back.s_hist) == len(st.s_hist) > 0    # the curvature memory is kept
    # the next step descends on the new objective (its line search compares against it)
    assert opt.step(new, back).loss < back.loss
    adam = Adam(seed=0)
    ast = adam.rebase(new, adam.init(old, np.ones(3), 2), 5)
    assert len(ast.warm) == 5                          # minibatches from the 5 new images


def test_resume_with_more_training_data_reevaluates_then_continues(tmp_path, caplog):
    base = ["+experiment=denoise", "+debug=fast", "optimizer=lbfgs", "val_every=0",
            "tracking.enabled=false"]
    train(compose_cfg(base + ["optimizer.max_iter=2"], tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.npz"
    _, st2, _ = load_checkpoint(ckpt)
    with caplog.at_level("INFO"):
        train(compose_cfg(base + ["optimizer.max_iter=3", "data.train.limit=3",
                                  f"resume={ckpt}"], tmp_path))
    text = caplog.text
    assert "differs from the checkpoint's (data.train.limit: 2 -> 3)" in text
    assert "resumed parameters evaluated on this run's objective" in text
    _, st3, meta = load_checkpoint(ckpt)
    assert st3.iteration == 3 and len(st3.warm) in (0, 3)
    # the new objective's loss at the resumed theta, from the log line, is what step 3
    # descended from
    rebased = float(text.split("resumed parameters evaluated on this run's objective")[1]
                    .split("loss ")[1].split()[0])
    assert st3.loss < rebased and rebased != st2.loss
