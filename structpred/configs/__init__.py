"""The Hydra configs of the apps: ``train.yaml``, ``evaluate.yaml`` and their groups (one
folder per group), shipped inside the package so that an installed wheel finds them
(``pip install .`` is enough; no checkout needed). The apps load them as
``pkg://structpred.configs`` (:data:`CONFIG_PATH`); tests and scripts compose them from
:data:`CONFIG_DIR`.

Where runs write: ``paths.root_dir`` is :func:`project_root` (the structpred checkout that
holds the working directory, else the working directory itself), never the installed
package's folder. The MLflow store, ``outputs/`` and the reproduction states live under it;
the Berkeley images default to :func:`data_root` of it.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
#: ``config_path`` of the apps' ``hydra.main``: the configs as package data, found the same
#: way from a checkout, an editable install or an installed wheel
CONFIG_PATH = "pkg://structpred.configs"


def is_checkout(folder) -> bool:
    """Whether ``folder`` is the root of a structpred source checkout (it holds
    ``pyproject.toml`` and this package's configs), as opposed to any other folder."""
    d = Path(folder)
    return ((d / "pyproject.toml").is_file()
            and (d / "structpred" / "configs" / "train.yaml").is_file())


def project_root() -> str:
    """The nearest ancestor of the working directory that is a structpred checkout, else the
    working directory. This is where the default MLflow store (``mlruns/mlflow.db``) and
    Hydra outputs live, so every run from anywhere inside the checkout lands in the same
    store; an installed package run elsewhere writes into the working directory (never into
    site-packages)."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if is_checkout(d):
            return str(d)
    return str(here)


def data_root(root: str) -> str:
    """Default folder of the Berkeley images (``paths.data_dir``) for the project root
    ``root``: ``<checkout>/../shared/data`` beside a checkout (where the project's sessions
    keep them), else ``<root>/data`` (a folder of the user's own project)."""
    r = Path(root)
    return str(r.parent / "shared" / "data") if is_checkout(r) else str(r / "data")


def default_tracking_uri() -> str:
    """The MLflow store a run id is looked up in when none is given: ``$STRUCTPRED_MLFLOW_URI``,
    else the project's ``mlruns/mlflow.db`` (the store the apps write to by default)."""
    import os
    return os.environ.get("STRUCTPRED_MLFLOW_URI",
                          f"sqlite:///{project_root()}/mlruns/mlflow.db")


def default_data_dir() -> str:
    """The folder holding ``bsd68/`` and ``train400/`` when none is given, as the Hydra apps'
    ``paths.data_dir``: ``$STRUCTPRED_DATA``, else :func:`data_root` of ``$STRUCTPRED_ROOT`` or
    :func:`project_root`."""
    import os
    return os.environ.get("STRUCTPRED_DATA") or data_root(os.environ.get("STRUCTPRED_ROOT")
                                                          or project_root())


def register_resolvers() -> None:
    """Register ``${structpred_root:}`` and ``${structpred_data:ROOT}`` (idempotent)."""
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("structpred_root"):
        OmegaConf.register_new_resolver("structpred_root", project_root)
    if not OmegaConf.has_resolver("structpred_data"):
        OmegaConf.register_new_resolver("structpred_data", data_root)
