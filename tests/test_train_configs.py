"""Every experiment config composes and trains in fast mode; bad values fail in one line."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest

from structpred.training.app import guarded, train
from structpred.training.config import ConfigError, validate
from train_helpers import CONFIGS, DATA, EXPERIMENTS, compose_cfg, run_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


def test_experiments_exist():
    assert {"denoise", "denoise_bsds", "denoise_bsds_s15", "denoise_bsds_s50"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_in_fast_mode(name, tmp_path, store):
    # fine-tuning experiments start from a shipped model, which may not be trained yet
    # (init.from itself is tested in test_reproduce.py)
    extra = ["init.from=null"] if name.startswith("reproduce_") and name.endswith(
        ("s15", "s50")) else []
    cfg = compose_cfg([f"+experiment={name}", "+debug=fast", "tracking.log_model=false",
                       *extra], tmp_path, store=store)
    assert cfg.optimizer.max_iter == 2
    if cfg.data.name == "bsds" and not (DATA / "bsd68").is_dir():
        pytest.skip(f"Berkeley images not found under {DATA}")
    metric = train(cfg)
    assert metric is not None and np.isfinite(metric)
    assert (tmp_path / "structpred_model.npz").is_file()
    assert (tmp_path / "checkpoints" / "last.npz").is_file()
    mlflow.set_tracking_uri(cfg.tracking.uri)
    from omegaconf import OmegaConf

    from structpred.tracking.mlflow_tracker import run_name
    name = run_name(OmegaConf.to_container(cfg, resolve=True))
    assert name.startswith("debug-") and f"-s{cfg.data.sigma:g}" in name
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment],
                              filter_string=f"tags.`config.tracking.run_prefix` = "
                              f"'{cfg.tracking.run_prefix}' and attributes.run_name = '{name}'",
                              output_format="list")
    assert runs and runs[0].info.status == "FINISHED"


# implicit is the experiments' default, covered above
GRADIENTS = sorted(p.stem for p in (CONFIGS / "gradient").glob("*.yaml") if p.stem != "implicit")


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_every_gradient_config_trains(gradient, tmp_path):
    cfg = compose_cfg(["+experiment=denoise", "+debug=fast", f"gradient={gradient}",
                       "tracking.enabled=false"], tmp_path)
    assert cfg.gradient.name == gradient
    assert np.isfinite(train(cfg))


BAD = [
    ("data.sigma=-5", "data.sigma"),
    ("model.filter_size=4", "model.filter_size"),
    ("model.filter_size=99", "model.filter_size"),
    ("model.name=resnet", "model.name"),
    ("solver.name=newton", "solver.name"),
    ("gradient.name=magic", "gradient.name"),
    ("optimizer.name=sgd", "optimizer.name"),
    ("optimizer.max_iter=-1", "optimizer.max_iter"),
    ("solver.maxiter=-3", "solver.maxiter"),
    ("+model.penalty=huber", "model.penalty"),
    ("trainer.shrink=2", "trainer.shrink"),
    ("tracking.retries=-1", "tracking.retries"),
    ("tracking.retries=1.5", "tracking.retries"),
    ("tracking.retries=two", "tracking.retries"),
    ("tracking.retries=null", "tracking.retries"),
    ("tracking.retry_wait=-2", "tracking.retry_wait"),
    ("tracking.http_retries=-1", "tracking.http_retries"),
    ("tracking.http_timeout=0", "tracking.http_timeout"),
    ("+callbacks.mine=5", "callbacks.mine"),              # an extra callback names its class
]


@pytest.mark.parametrize("override,key", BAD)
def test_bad_value_names_the_key(override, key, tmp_path, capsys):
    cfg = compose_cfg(["+experiment=denoise", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)
    with pytest.raises(SystemExit) as exc:
        guarded(train, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {key}:"), err


@pytest.mark.parametrize("value,message", [("-1", "must be >= 0, got -1"),
                                           ("2.5", "must be an integer, got 2.5"),
                                           ("true", "must be an integer, got True")])
def test_bad_tracking_retries_is_one_line_for_train_and_evaluate(value, message, tmp_path,
                                                                  capsys):
    from structpred.evaluate import evaluate
    train_cfg = compose_cfg(["+experiment=denoise", "+debug=fast", "tracking.enabled=false",
                             f"tracking.retries={value}"], tmp_path)
    eval_cfg = compose_cfg(["model_ref=unused.npz", f"tracking.retries={value}"], tmp_path,
                           config_name="evaluate", progress_key=False)
    for fn, cfg in ((train, train_cfg), (evaluate, eval_cfg)):
        with pytest.raises(SystemExit) as exc:
            guarded(fn, cfg)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: tracking.retries: {message}"], err


def test_valid_tracking_retries_pass(tmp_path):
    validate(compose_cfg(["+experiment=denoise", "tracking.retries=0",
                          "tracking.retry_wait=0"], tmp_path))
    validate(compose_cfg(["+experiment=denoise", "tracking.retries=5"], tmp_path))


def test_unknown_name_lists_allowed_values(tmp_path):
    import re
    from structpred.models import MODELS
    cfg = compose_cfg(["model.name=resnet"], tmp_path)
    assert "foe" in MODELS and "gmrf" in MODELS
    with pytest.raises(ConfigError, match=rf"model.name.*allowed: {re.escape(str(sorted(MODELS)))}"):
        validate(cfg)


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    cfg = compose_cfg(["+experiment=denoise_bsds", f"data.root={tmp_path}/nowhere"], tmp_path)
    with pytest.raises(SystemExit) as exc:
        guarded(train, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere/train400: no such folder" in err[0]


def test_cli_bad_value_exits_nonzero_without_traceback(tmp_path):
    res = run_cli("structpred.train", ["+experiment=denoise", "model.filter_size=4"],
                  tmp_path, tmp_path, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [lines[0]] and "model.filter_size" in lines[0]


def test_optuna_search_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="optional: pip install -e '.[sweep]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=denoise", "+hparams_search=optuna"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val_psnr"


def test_solver_and_gradient_are_built_as_an_allowed_pair(tmp_path):
    """The unrolled gradients predict with their own heavy ball (the solver group is not
    used with them); a solver the gradient cannot differentiate is a config error."""
    import structpred as sp
    from structpred.training.config import build_pair
    solver, gradient = build_pair(compose_cfg(["gradient=unrolled", "gradient.steps=7"],
                                              tmp_path))
    assert solver == gradient.solver and solver.steps == 7
    solver, gradient = build_pair(compose_cfg([], tmp_path))
    assert isinstance(solver, sp.LBFGS) and isinstance(gradient, sp.ImplicitGradient)
    with pytest.raises(ConfigError, match=r"^solver: ImplicitGradient differentiates an argmin"):
        build_pair(compose_cfg(["solver=lbfgs", "solver.name=heavy_ball", "~solver.gtol",
                                "~solver.rtol", "~solver.maxiter", "~solver.history"],
                               tmp_path))
