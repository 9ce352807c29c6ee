"""Watching a running inner solve (issue 14): the monitor changes nothing in the result, its
last reading is the result's, a thread reads it while the loop runs (the loop releases the
GIL), the ETA estimate, and the inner progress of ``denoise`` on stderr."""
from __future__ import annotations

import math
import threading

import imageio.v3 as iio
import numpy as np
import pytest

import structpred as sp
from structpred.solvers.monitor import (DONE, RUNNING, EtaEstimator, InnerProgress,
                                        MonitorState, SolveMonitor, line_reporter)


def _problem(shape=(96, 128), k=8, m=3, boundary="valid", seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    clean = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    noisy = clean + 25 * rng.normal(size=shape)
    model = sp.make_model("foe", num_filters=k, filter_size=m, boundary=boundary)
    return model, noisy, model.init_params(sigma=25)


@pytest.mark.parametrize("case", [
    dict(solver={}, bind={}),
    dict(solver={"preconditioner": "fft"}, bind={}),               # the object-mode FFTs
    dict(solver={"rtol": 1e-3, "gtol": 1e-12}, bind={"parallel": False}),
    dict(solver={"maxiter": 7}, bind={}, boundary="symmetric"),    # stops at maxiter
])
def test_monitor_changes_nothing_and_ends_on_the_result(case):
    model, noisy, theta = _problem(boundary=case.get("boundary", "valid"))
    energy = model.bind(noisy, theta, **case["bind"])
    solver = sp.LBFGS(**case["solver"])
    plain = solver.minimize(energy)
    m = SolveMonitor()
    m.buffer[:] = 7.0                                    # minimize resets it
    watched = solver.minimize(energy, monitor=m)
    assert np.array_equal(plain.y, watched.y) and np.array_equal(plain.y_domain,
                                                                   watched.y_domain)
    assert (plain.energy, plain.grad_norm, plain.iterations, plain.n_evals, plain.status) == \
        (watched.energy, watched.grad_norm, watched.iterations, watched.n_evals, watched.status)
    s = m.read()
    assert s.state == DONE and s.status == plain.status
    assert s.iteration == plain.iterations and s.evals == plain.n_evals
    assert s.grad_norm == plain.grad_norm and s.energy == plain.energy
    assert s.maxiter == solver.maxiter and s.tol == max(solver.gtol, solver.rtol * s.grad_norm0)
    if plain.converged:
        assert s.fraction == 1.0


def test_a_thread_reads_the_monitor_while_the_loop_runs():
    # the loop is nogil: the main thread sees intermediate iterations of a running solve
    model, noisy, theta = _problem(shape=(160, 200), k=24, m=5)
    solver = sp.LBFGS(gtol=1e-9, maxiter=400)
    solver.minimize(model, noisy[:20, :20], theta)       # compiled before the race
    m = SolveMonitor()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", solver.minimize(model, noisy, theta,
                                                                            monitor=m)))
    seen = []
    t.start()
    while t.is_alive():
        s = m.read()
        if s.state == RUNNING:
            seen.append(s.iteration)
        t.join(0.002)
    r = box["r"]
    assert seen, "never saw the solve running"
    assert min(seen) < r.iterations and seen == sorted(seen)
    assert m.read().iteration == r.iterations


def _state(it, g, tol=1e-4, g0=1.0, maxiter=10_000):
    return MonitorState(iteration=it, grad_norm=g, energy=0.0, evals=it, tol=tol,
                        grad_norm0=g0, maxiter=maxiter, state=RUNNING, status=None)


def test_eta_follows_the_log_gradient_norm():
    est = EtaEstimator()
    # ||g|| falls by a decade every 2 s with noise on top: 1 -> 1e-4 takes 8 s
    rng = np.random.default_rng(0)
    for k in range(9):
        t = 0.5 * k
        est.add(t, _state(10 * k, 10 ** (-t / 2) * (1 + 0.5 * rng.random())))
    s = _state(80, 10 ** -2)
    eta = est.eta(s)
    assert eta is not None and 3.0 < eta < 5.5           # about 8 - 4 s left
    assert 0.49 < s.fraction < 0.51
    assert EtaEstimator().eta(s) is None                 # no readings: unknown
    # the iteration budget bounds it: 20 iterations left at 20 per second
    est2 = EtaEstimator()
    for k in range(5):
        est2.add(k, _state(20 * k, 1.0 - 0.001 * k, maxiter=100))
    assert math.isclose(est2.eta(_state(80, 0.996, maxiter=100)), 1.0)


def test_inner_progress_reports_long_solves_and_clears():
    lines = []
    progress = InnerProgress(lines.append, after=0.0, interval=3600)   # polled by hand
    with progress.track("a.png") as m:
        m.buffer[[0, 1, 4, 5, 6, 8]] = [12, 1e-2, 1e-4, 1.0, RUNNING, 100]
        assert progress.poll() == ["a.png: it 12, |grad E| 1.00e-02 -> 1e-04 (50%), 0:00, "
                                   "ETA ?"]
    progress.poll()
    assert lines[-1] == []                                # cleared once when it ends
    progress.poll()
    assert len(lines) == 2
    progress.close()
    out = []
    rep = line_reporter(out.append, every=10.0)
    rep(["x"])
    rep(["y"])
    assert out == ["x"]


def test_denoise_shows_the_inner_progress_on_stderr(tmp_path, capsys, monkeypatch):
    import structpred.denoise as dn
    from structpred.tracking.model_io import save_model
    model = sp.make_model("foe", num_filters=8, filter_size=5)
    path = save_model(tmp_path / "structpred_model.npz", model, model.init_params(sigma=25),
                      solver=sp.LBFGS(gtol=1e-8), meta={"sigma": 25.0})
    rng = np.random.default_rng(0)
    _, xx = np.mgrid[0:321, 0:481]
    img = np.clip(128 + 60 * np.sin(xx / 9.0) + 25 * rng.normal(size=xx.shape), 0, 255)
    iio.imwrite(tmp_path / "big.png", img.astype(np.uint8))
    monkeypatch.setattr(dn, "INNER_AFTER", 0.0)          # the default: 2 s
    monkeypatch.setattr(dn, "INNER_INTERVAL", 0.005)
    rc = dn.main([str(path), str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "--progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "big.png: it " in cap.err and "|grad E| " in cap.err and "-> 1e-08" in cap.err
    assert "ETA" in cap.err
