"""From a Hydra config to objects: validation up front, then building by registry name.

Every group that names a registry entry (``model``, ``solver``, ``gradient``, ``optimizer``)
has a ``name`` key selecting it; the other keys are the constructor's keyword arguments.
:func:`validate` checks the values a user is most likely to get wrong and raises
:class:`ConfigError` naming the key and the allowed values; the entry points print it as one
line and exit with status 2 (no traceback).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

# where runs write and how the configs' ${structpred_root:} resolves: beside the configs
from structpred.configs import register_resolvers
# defined below every layer (tracking and the data loaders raise them too); imported here
# because every builder of this module raises them
from structpred.errors import EXIT_CONFIG, ConfigError  # noqa: F401

register_resolvers()
# MLflow's artifact progress bars would interleave with ours
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# ------------------------------------------------------------------------ validation
def _kwargs(group: Mapping) -> dict:
    """The constructor kwargs of a registry group: everything but ``name``."""
    return {k: v for k, v in group.items() if k != "name"}


def _check_name(cfg, key: str, registry: Mapping) -> str:
    group = cfg.get(key)
    name = None if group is None else group.get("name")
    if name not in registry:
        raise ConfigError(f"{key}.name", f"unknown {key} {name!r}; allowed: {sorted(registry)}")
    return name


def _number(cfg, key: str, *, positive=False, nonneg=False, integer=False, allow_none=False):
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(key, f"must be {kind}, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    if nonneg and not value >= 0:
        raise ConfigError(key, f"must be >= 0, got {value!r}")
    return value


def _crop_sizes(cfg) -> list[tuple[str, int]]:
    out = []
    for split in ("train", "val", "test"):
        spec = OmegaConf.select(cfg, f"data.{split}")
        if spec is not None and spec.get("crop") is not None:
            out.append((f"data.{split}.crop", _number(cfg, f"data.{split}.crop", positive=True,
                                                      integer=True)))
    return out


def validate(cfg: DictConfig, *, training: bool = True) -> None:
    """Raise :class:`ConfigError` for the first bad value (names the key, allowed values)."""
    from structpred.gradients import GRADIENTS
    from structpred.models import MODELS
    from structpred.solvers import SOLVERS
    from structpred.training.optimizers import OPTIMIZERS

    _number(cfg, "data.sigma", positive=True)
    _number(cfg, "data.seed", integer=True)
    if training or isinstance(cfg.get("model"), DictConfig):
        _check_name(cfg, "model", MODELS)
    if OmegaConf.select(cfg, "model.num_filters") is not None:
        _number(cfg, "model.num_filters", positive=True, integer=True)
    m = OmegaConf.select(cfg, "model.filter_size")
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, int) or m < 3 or m % 2 == 0:
            raise ConfigError("model.filter_size", f"must be an odd integer >= 3 "
                              f"(3, 5, 7, ...), got {m!r}")
        for key, size in _crop_sizes(cfg):
            if m > size:
                raise ConfigError("model.filter_size", f"{m} is larger than {key}={size}")
    _check_penalty(cfg)
    _check_tracking(cfg)
    _check_executor(cfg)
    _check_name(cfg, "solver", SOLVERS)
    for key in ("solver.maxiter", "solver.gtol", "solver.rtol"):
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, nonneg=True, integer=key.endswith("maxiter"))
    if not training:
        return
    _check_name(cfg, "gradient", GRADIENTS)
    _check_name(cfg, "optimizer", OPTIMIZERS)
    _number(cfg, "optimizer.max_iter", nonneg=True, integer=True)
    for key in ("optimizer.history", "optimizer.batch_size", "optimizer.max_linesearch"):
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, positive=True, integer=True)
    for key in ("optimizer.lr", "optimizer.first_step"):
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, positive=True)
    _number(cfg, "checkpoint.every", nonneg=True, integer=True)
    _number(cfg, "val_every", nonneg=True, integer=True)
    _check_policy(cfg)
    _check_callbacks(cfg)
    if cfg.data.get("train") is None:
        raise ConfigError("data.train", "training needs a train split")


def _check_callbacks(cfg) -> None:
    """Each entry of the ``callbacks`` group is null (off) or names its class."""
    group = cfg.get("callbacks")
    if group is None:
        return
    if not isinstance(group, DictConfig):
        raise ConfigError("callbacks", f"must be a mapping NAME -> {{_target_: CLASS, ...}}, "
                          f"got {group!r}")
    for name, node in group.items():
        if node is not None and not (isinstance(node, DictConfig) and "_target_" in node):
            raise ConfigError(f"callbacks.{name}", "needs _target_: the callback's class "
                              "(a structpred.training.trainer.Callback), e.g. "
                              "structpred.training.faults.SignalAt")


def _check_penalty(cfg) -> None:
    from structpred.models import PENALTIES
    name = OmegaConf.select(cfg, "model.penalty")
    if name is not None and name not in PENALTIES:
        raise ConfigError("model.penalty", f"unknown penalty {name!r}; allowed: "
                          f"{sorted(PENALTIES)}")


#: numeric keys of the tracking group: (integer, strictly positive); absent keys take the
#: Tracker's defaults, a key that is present must hold a valid value (null is not one)
_TRACKING_NUMBERS = {"retries": (True, False), "retry_wait": (False, False),
                     "http_retries": (True, False), "http_timeout": (False, True)}


def _check_tracking(cfg) -> None:
    mode = OmegaConf.select(cfg, "tracking.on_unreachable")
    if mode is not None and mode not in ("error", "local"):
        raise ConfigError("tracking.on_unreachable", f"unknown mode {mode!r}; allowed: "
                          "['error', 'local']")
    group = cfg.get("tracking")
    for key, (integer, positive) in _TRACKING_NUMBERS.items():
        if group is not None and key in group:
            _number(cfg, f"tracking.{key}", integer=integer, positive=positive,
                    nonneg=not positive)


def _check_executor(cfg) -> None:
    group = cfg.get("executor")
    if group is None:
        return
    name = group.get("name")
    if name not in ("local", "ray"):
        raise ConfigError("executor.name", f"unknown executor {name!r}; allowed: "
                          "['local', 'ray']")
    if name != "ray":
        return
    for key, nonneg in (("num_actors", False), ("cpus_per_actor", False), ("num_cpus", False),
                        ("max_restarts", True)):
        if key in group:
            _number(cfg, f"executor.{key}", integer=True, positive=not nonneg,
                    nonneg=nonneg, allow_none=key in ("num_actors", "num_cpus"))
    if "imbalance" in group and _number(cfg, "executor.imbalance") < 1:
        raise ConfigError("executor.imbalance", f"must be >= 1 (the busiest actor's predicted "
                          f"work over the mean), got {group.get('imbalance')!r}")
    if not isinstance(group.get("rebalance", True), bool):
        raise ConfigError("executor.rebalance", f"must be true or false, got "
                          f"{group.get('rebalance')!r}")
    address = group.get("address")
    if address is not None and not (address == "auto" or str(address).startswith("ray://")
                                    or ":" in str(address)):
        raise ConfigError("executor.address", f"{address!r}: use null (a local Ray "
                          "instance), auto, ray://host:port or host:port")


def _check_policy(cfg) -> None:
    frac = OmegaConf.select(cfg, "trainer.max_unconverged_fraction")
    if frac is not None and (_number(cfg, "trainer.max_unconverged_fraction") > 1 or frac < 0):
        raise ConfigError("trainer.max_unconverged_fraction",
                          f"must be in [0, 1] or null, got {frac!r}")
    if OmegaConf.select(cfg, "trainer.max_loss_increase") is not None:
        _number(cfg, "trainer.max_loss_increase", positive=True)
    shrink = OmegaConf.select(cfg, "trainer.shrink")
    if shrink is not None and not 0 < _number(cfg, "trainer.shrink") < 1:
        raise ConfigError("trainer.shrink", f"must be in (0, 1), got {shrink!r}")
    if OmegaConf.select(cfg, "trainer.max_rejections") is not None:
        _number(cfg, "trainer.max_rejections", nonneg=True, integer=True)


def build_policy(cfg):
    """The outer loop's robustness policy from the ``trainer`` group (defaults if absent)."""
    from structpred.training.trainer import Policy
    group = cfg.get("trainer")
    return Policy(**(OmegaConf.to_container(group, resolve=True) if group else {}))


# -------------------------------------------------------------------------- building
def _build(key: str, group, factory):
    """``factory(name, **kwargs)``; a constructor's ValueError/TypeError becomes a
    ConfigError naming the group."""
    kwargs = _kwargs(OmegaConf.to_container(group, resolve=True))
    try:
        return factory(group.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, str(exc).splitlines()[0]) from None


def build_model(cfg):
    from structpred.models import make_model
    return _build("model", cfg.model, make_model)


def build_solver(cfg):
    from structpred.solvers import make_solver
    return _build("solver", cfg.solver, make_solver)


def build_gradient(cfg):
    from structpred.gradients import make_gradient
    return _build("gradient", cfg.gradient, make_gradient)


def build_pair(cfg):
    """``(solver, gradient)`` for training: the ``gradient`` group's method, and the
    ``solver`` group's solver for the implicit gradient, or, for the unrolled and truncated
    gradients, their own heavy-ball iteration (``gradient.solver``, set by the ``gradient.*``
    keys; the ``solver`` group is not used with them, as structpred/configs/gradient/unrolled.yaml
    says). The pair is checked (``structpred.resolve_pair``)."""
    from structpred.objective import resolve_pair
    gradient = build_gradient(cfg)
    own = getattr(gradient, "solver", None)
    try:
        return resolve_pair(own if own is not None else build_solver(cfg), gradient)
    except TypeError as exc:       # e.g. solver=heavy_ball with the implicit gradient
        raise ConfigError("solver", str(exc)) from None


def build_optimizer(cfg):
    from structpred.training.optimizers import make_optimizer
    return _build("optimizer", cfg.optimizer, make_optimizer)


def build_callbacks(cfg) -> list:
    """The extra callbacks of the training loop from the ``callbacks`` group: each entry
    ``NAME: {_target_: CLASS, <its arguments>}`` is instantiated by Hydra (null entries are
    off); they run after the validation and before the built-in reporters and the
    checkpointer (``structpred/training/app.py``)."""
    from hydra.utils import instantiate

    from structpred.training.trainer import Callback
    _check_callbacks(cfg)
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        try:
            cb = instantiate(node)
        except Exception as exc:  # noqa: BLE001 - import and argument errors alike
            raise ConfigError(f"callbacks.{name}", str(exc).splitlines()[0]) from None
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks.{name}", f"{node._target_} is not a "
                              "structpred.training.trainer.Callback")
        out.append(cb)
    return out


def init_params(model, cfg) -> Any:
    """The model's starting point; ``init`` keys are passed to ``model.init_params``
    (sigma defaults to the data's)."""
    init = cfg.get("init")
    kwargs = dict(OmegaConf.to_container(init, resolve=True)) if init else {}
    source = kwargs.pop("from", None)
    rescale = kwargs.pop("rescale_lambda", True)
    if source:
        if kwargs:
            raise ConfigError("init", f"init.from takes no model.init_params keys "
                              f"(got {sorted(kwargs)})")
        return _init_from(model, str(source), float(cfg.data.sigma), bool(rescale))
    kwargs.setdefault("sigma", float(cfg.data.sigma))
    try:
        return model.init_params(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError("init", str(exc).splitlines()[0]) from None


def _init_from(model, ref: str, sigma: float, rescale: bool):
    """The parameters of a trained model (``init.from``: a model file, run folder, run id or
    ``pretrained:NAME``), for fine-tuning at another noise level: with ``rescale_lambda``
    the data weight becomes lam * (sigma_trained / sigma)^2 (the MAP data term is
    1/(2 sigma^2) ||y - x||^2, so lam scales as 1/sigma^2)."""
    import math

    from structpred.tracking.model_io import ModelFileError, load_model
    try:
        trained = load_model(ref)
    except (FileNotFoundError, OSError, ModelFileError) as exc:
        raise ConfigError("init.from", str(exc).splitlines()[0]) from None
    if trained.model.param_shapes() != model.param_shapes():
        raise ConfigError("init.from", f"{ref}: parameters {trained.model.param_shapes()} do "
                          f"not match this model's {model.param_shapes()}")
    theta = np.array(trained.theta, dtype=np.float64)
    source_sigma = trained.meta.get("sigma")
    sl = model.param_slices().get("log_lambda")
    if rescale and source_sigma and sl is not None:
        theta[sl] += 2.0 * math.log(float(source_sigma) / sigma)
    return theta


def launcher_threads() -> int | None:
    """Numba threads for a job of a parallel sweep: cores / ``n_jobs`` under the joblib
    launcher, ``cpus_per_task`` under submitit, ``ray.remote.num_cpus`` under the Ray
    launcher; None otherwise (all cores)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        launcher = hc.launcher
    except Exception:  # noqa: BLE001 - not under Hydra
        return None
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        cores = os.cpu_count() or 1
        n = launcher.get("n_jobs")
        n = cores if n is None or int(n) <= 0 else int(n)
        return max(1, cores // n)
    if "submitit" in target.lower() and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    if "ray_launcher" in target.lower():
        cpus = OmegaConf.select(launcher, "ray.remote.num_cpus")
        return int(cpus) if cpus else None
    return None


def set_threads(cfg) -> str:
    """Give the cores to Numba (the kernels are parallel over image rows) and keep BLAS to
    ``threads.blas`` threads (1 by default): the heavy work is in Numba, BLAS only sees
    small vectors, and two thread pools on a small machine oversubscribe the cores."""
    import numba
    numba_threads = OmegaConf.select(cfg, "threads.numba") or launcher_threads()
    blas = OmegaConf.select(cfg, "threads.blas")
    if numba_threads:
        numba.set_num_threads(min(int(numba_threads), numba.config.NUMBA_NUM_THREADS))
    if blas:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(int(blas))
        except ImportError:  # threadpoolctl is a dependency; keep going without it
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(blas))
    return f"numba threads: {numba.get_num_threads()}, BLAS threads: {blas or 'default'}"
