"""MLflow tracking: parallel processes on a fresh store, error wording, run names, metric
keys, params and tags (what a researcher reads in the MLflow UI)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from structpred.training.callbacks import iteration_line
from structpred.configs import CONFIG_DIR
from structpred.training.config import ConfigError
from structpred.tracking.mlflow_tracker import (
    METRIC_KEYS, SWEEP_KEYS_ENV, _unreachable, is_unreachable, metric_key, run_name,
    split_config,
)

ROOT = Path(__file__).resolve().parents[1]

#: starts a run on the store once the file ``go`` exists, so that the processes (started
#: one after the other, each importing MLflow for seconds) create the store at once
RACER = textwrap.dedent("""
    import os, sys, time
    import mlflow  # the slow part, before the start line
    from structpred.tracking.mlflow_tracker import Tracker
    go = sys.argv[2]
    open(go + "." + sys.argv[3], "w").close()         # ready
    while not os.path.exists(go):
        time.sleep(0.002)
    t = Tracker({"uri": sys.argv[1], "experiment": "structpred"})
    t.start(run_name="racer " + sys.argv[3])
    t.log_metrics({"train_loss": 1.0}, 0)
    t.end()
""")


def test_parallel_processes_on_a_fresh_store_all_track(tmp_path):
    """Processes starting together on a sqlite file that does not exist yet: MLflow creates
    the tables and runs its migrations in each ("duplicate column name: step", alembic
    errors) unless the creation is serialised. Every run must be tracked."""
    n = 3
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(go), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    try:
        for i in range(n):   # all imported and waiting (or already dead: reported below)
            while not (tmp_path / f"go.{i}").exists() and procs[i].poll() is None:
                time.sleep(0.05)
        go.touch()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["structpred"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == [f"racer {i}" for i in range(n)]
    assert all(r.info.status == "FINISHED" and r.data.metrics["train/loss"] == 1.0
               for r in runs)


def test_a_store_error_that_is_not_about_reachability_does_not_say_cannot_reach():
    from sqlalchemy.exc import OperationalError
    migration = OperationalError("ALTER TABLE", {}, Exception("duplicate column name: step"))
    assert not is_unreachable(migration)
    msg = str(_unreachable("sqlite:////x/mlflow.db", migration))
    assert "cannot reach" not in msg and "failed to open" in msg and "duplicate column" in msg
    refused = ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/experiments")
    assert is_unreachable(refused)
    assert "cannot reach the MLflow store" in str(_unreachable("http://h:5000", refused))
    assert isinstance(_unreachable("x", refused), ConfigError)


def _cfg(**over):
    cfg = {"task_name": "train", "model": {"name": "foe", "num_filters": 8, "filter_size": 3},
           "data": {"sigma": 25.0, "root": "/data"},
           "tracking": {"run_name": None, "run_prefix": "denoise", "debug": False,
                        "uri": "sqlite:////x"},
           "paths": {"output_dir": "/out"}, "checkpoint": {"dir": "/out/c", "every": 5},
           "solver": {"gtol": 1e-4}}
    for k, v in over.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return cfg


def test_run_names_say_model_size_noise_debug_and_swept_values(monkeypatch):
    monkeypatch.delenv(SWEEP_KEYS_ENV, raising=False)
    assert run_name(_cfg()) == "denoise-foe8x3-s25"
    assert run_name(_cfg(**{"tracking.debug": True})) == "debug-denoise-foe8x3-s25"
    assert run_name(_cfg(**{"data.sigma": 15, "model.num_filters": 24,
                            "model.filter_size": 5})) == "denoise-foe24x5-s15"
    monkeypatch.setenv(SWEEP_KEYS_ENV, "model.num_filters,data.sigma")
    assert run_name(_cfg(**{"model.num_filters": 4})) == \
        "denoise-foe4x3-s25 model.num_filters=4 data.sigma=25.0"
    assert run_name(_cfg(**{"tracking.run_name": "mine"})).startswith("mine model.num_filters=8")


def test_hyperparameters_are_params_and_paths_are_tags():
    from structpred.tracking.mlflow_tracker import flatten
    params, tags = split_config(flatten(_cfg()))
    assert set(params) == {"task_name", "model.name", "model.num_filters", "model.filter_size",
                           "data.sigma", "solver.gtol"} - {"task_name"}
    assert {"config.paths.output_dir", "config.checkpoint.dir", "config.tracking.uri",
            "config.data.root", "config.task_name"} <= set(tags)


def test_metric_keys_are_grouped_with_the_curves_named_first():
    assert metric_key("train_loss") == "train/loss" and metric_key("val_psnr") == "val/psnr"
    assert metric_key("eval/bsd68_s25/psnr") == "eval/bsd68_s25/psnr"   # already grouped
    groups = {v.split("/")[0] for v in METRIC_KEYS.values()}
    assert groups == {"train", "val", "test", "solver", "adjoint", "outer", "time"}
    assert len(set(METRIC_KEYS.values())) == len(METRIC_KEYS)


def test_iteration_line_has_time_of_this_iteration_and_eta():
    m = {"train_loss": 57.16, "train_psnr": 27.87, "val_psnr": 29.25, "grad_norm": 289.0,
         "inner_iters_mean": 12.5, "inner_iters_max": 13, "adjoint_iters_mean": 16,
         "adjoint_iters_max": 16, "evals": 2, "wall_time": 600.0, "iter_time": 1.0}
    line = iteration_line(10, 30, m, seconds=61.5)
    assert line.startswith("iter 10/30: loss 57.16, train PSNR 27.87, val PSNR 29.25")
    assert "inner 12.5/13, adjoint 16.0/16, 2 evals, 61.50 s (total 10:00, ETA 20:00)" in line
    m0 = {k: v for k, v in m.items() if k not in ("evals", "iter_time")}
    assert iteration_line(0, 30, m0).endswith("(initial parameters)")
    assert "val PSNR 29.25" in iteration_line(0, 30, m0)


def test_eta_follows_the_recent_iterations_not_the_run_mean(monkeypatch, caplog):
    """After a resume on more data (or as filters sharpen) iterations get dearer: the ETA
    is the mean of the last iterations of this process times the iterations left."""
    from types import SimpleNamespace

    from structpred.training import callbacks
    m = {"train_loss": 53.0, "train_psnr": 28.7, "grad_norm": 5.0, "inner_iters_mean": 190,
         "inner_iters_max": 480, "adjoint_iters_mean": 165, "adjoint_iters_max": 550,
         "evals": 1, "iter_time": 1.0}
    assert "ETA 1:00:00" in iteration_line(100, 200, {**m, "wall_time": 3600.0}, 200.0)
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    cb = callbacks.IterationLog(max_iter=230)
    cb.on_train_start(None)
    caplog.set_level("INFO", logger=callbacks.log.name)
    for it, dt in zip(range(217, 229), [400.0] + [200.0] * 11):
        clock[0] += dt
        cb.on_iteration_end(None, SimpleNamespace(iteration=it), {**m, "wall_time": 3600.0})
    last = caplog.records[-1].getMessage()
    # 10 iterations of 200 s in the window (the 400 s one has left it), 2 iterations left
    assert "200.00 s (total 1:00:00, ETA 6:40)" in last, last


@pytest.mark.parametrize("name", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_configs_compose(tmp_path, name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={name}"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")
    assert "Joblib" in cfg.hydra.launcher._target_ or cfg.hydra.launcher.cpus_per_task >= 1


def test_compile_notice_said_only_for_a_slow_compilation_of_our_kernels(caplog):
    """structpred.kernels.compile_notice: a compilation of one of structpred's kernels that
    is still running after ``after`` seconds gets a line (and its time when done); a quick
    one, or one of another package's functions, says nothing."""
    import logging

    import numba
    import numpy
    from numba.core import event

    from structpred.kernels.compile_notice import _Listener

    def jitted(module):
        ns = {"__name__": module}
        exec("def f(a):\n    s = 0.0\n    for i in range(a.size):\n        s += a[i] ** 2"
             "\n    return s\n", ns)
        return numba.njit(ns["f"])

    a = numpy.ones(3)
    with caplog.at_level(logging.INFO, logger="structpred"):
        with event.install_listener("numba:compile", _Listener(after=0.0)):
            jitted("elsewhere.module")(a)                  # not ours: nothing said
        assert "compiling the Numba kernels" not in caplog.text
        with event.install_listener("numba:compile", _Listener(after=60.0)):
            jitted("structpred.fake")(a)                   # ours, but quick
        assert "compiling the Numba kernels" not in caplog.text
        with event.install_listener("numba:compile", _Listener(after=0.0)):
            jitted("structpred.fake")(a)                   # ours and "slow"
    assert "compiling the Numba kernels (f)" in caplog.text
    assert "compiled in" in caplog.text


def test_evaluation_run_names_say_which_model(tmp_path):
    """An evaluation of a shipped model or a model file is named after it (a run id's
    reference is named after the training run, checked in test_cli_e2e)."""
    from structpred.evaluate import _model_run
    assert _model_run("pretrained:foe-24x5-s25", None) == (None, "foe-24x5-s25")
    assert _model_run(str(tmp_path / "denoiser.npz"), None) == (None, "denoiser")
    assert _model_run(str(tmp_path / "run7" / "structpred_model.npz"), None) == (None, "run7")
    assert _model_run(str(tmp_path / "run7"), None) == (None, "run7")
