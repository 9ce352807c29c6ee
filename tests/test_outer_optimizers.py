"""Outer optimisers on a toy objective with the training objective's interface."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from structpred.training.optimizers import Adam, OuterLBFGS

A = np.diag([1.0, 10.0, 100.0])
B = np.array([1.0, -2.0, 3.0])


def fun(theta, indices, warm):
    r = theta - B
    return SimpleNamespace(loss=0.5 * float(r @ A @ r), grad=A @ r, items=[]), warm


def run(opt, theta):
    st = opt.init(fun, theta, 3)
    while opt.terminate(st) is None:
        st = opt.step(fun, st)
    return st


def test_lbfgs_solves_a_quadratic():
    st = run(OuterLBFGS(max_iter=50, gtol=1e-8), np.zeros(3))
    np.testing.assert_allclose(st.theta, B, atol=1e-6)
    assert st.iteration < 20


def test_adam_decreases_and_is_immutable():
    opt = Adam(max_iter=300, lr=0.05, batch_size=2, seed=0)
    st0 = opt.init(fun, np.zeros(3), 3)
    st1 = opt.step(fun, st0)
    assert st0.iteration == 0 and st1.iteration == 1 and st0.theta is not st1.theta
    st = run(opt, np.zeros(3))
    assert fun(st.theta, None, ())[0].loss < 0.01 * fun(np.zeros(3), None, ())[0].loss


# ------------------------------------------------------- the outer step's status
def test_outer_steps_report_the_status_enum():
    """StepInfo.status is a member of the one status vocabulary (structpred.Status), not a
    string; a failed line search is LINESEARCH_FAILED and terminate() says why."""
    from structpred.solvers import Status
    opt = OuterLBFGS(max_iter=50, gtol=1e-8)
    st = opt.init(fun, np.zeros(3), 3)
    assert st.info.status is Status.ACCEPTED            # no step yet: nothing went wrong
    seen = set()
    while opt.terminate(st) is None:
        st = opt.step(fun, st)
        seen.add(st.info.status)
    assert seen <= {Status.ACCEPTED, Status.SUFFICIENT_DECREASE} and Status.ACCEPTED in seen
    adam = Adam(max_iter=2)
    assert adam.step(fun, adam.init(fun, np.zeros(3), 3)).info.status is Status.ACCEPTED

    def uphill(theta, indices, warm):   # the loss only grows: no step decreases it
        return SimpleNamespace(loss=float(theta @ theta) + 1.0 + float(np.sum(np.abs(theta))),
                               grad=np.ones(3), items=[]), warm
    short = OuterLBFGS(max_linesearch=3)
    failed = short.step(uphill, short.init(uphill, np.zeros(3), 1))
    assert failed.info.status is Status.LINESEARCH_FAILED
    assert "line search failed" in short.terminate(failed)


def test_checkpoints_store_the_status_by_name_and_old_strings_load(tmp_path):
    """New checkpoints keep the status's name (readable JSON); checkpoints written when it
    was a string ("ok", "ok (sufficient decrease only)", "line search failed") load with
    the members, e.g. the committed reproduction state."""
    import json
    from pathlib import Path

    from structpred.solvers import Status
    from structpred.training.checkpoint import load_checkpoint, save_checkpoint
    from structpred.training.optimizers import StepInfo
    opt = OuterLBFGS()
    st = opt.step(fun, opt.init(fun, np.zeros(3), 3))
    for status in Status:
        path = save_checkpoint(tmp_path / "c.npz", "lbfgs", replace(st, info=StepInfo(
            n_evals=2, step_size=0.5, status=status)))
        with np.load(path) as z:
            head = json.loads(z["__meta__"].tobytes())
        assert head["state"]["info"]["info"]["status"] == status.name
        assert load_checkpoint(path)[1].info == StepInfo(2, 0.5, status)
    for old, member in {"ok": Status.ACCEPTED,
                        "ok (sufficient decrease only)": Status.SUFFICIENT_DECREASE,
                        "line search failed": Status.LINESEARCH_FAILED}.items():
        path = _with_stored_status(tmp_path / "old.npz", st, old)
        assert load_checkpoint(path)[1].info.status is member
    committed = Path(__file__).resolve().parents[1] / "experiments" / "reproduce" / \
        "foe-24x5-s25" / "last.npz"
    if committed.is_file():                   # written with the strings
        assert load_checkpoint(committed)[1].info.status is Status.ACCEPTED


def _with_stored_status(path, state, status: str):
    """A checkpoint of ``state`` whose header stores ``status`` as older versions did (the
    arrays' digest does not cover the header, so the file stays valid)."""
    import io
    import json

    from structpred.training.checkpoint import save_checkpoint
    save_checkpoint(path, "lbfgs", state)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    head = json.loads(arrays["__meta__"].tobytes())
    head["state"]["info"]["info"]["status"] = status
    arrays["__meta__"] = np.frombuffer(json.dumps(head).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path
