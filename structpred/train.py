"""Train an energy model: ``python -m structpred.train +experiment=denoise``.

Configs ship inside the package, in ``structpred/configs/`` (``train.yaml`` and its groups;
loaded as ``pkg://structpred.configs``, so an installed wheel finds them too); see README
"Training, tracking and evaluation". The application itself is
:func:`structpred.training.app.train`, a short function over the
:class:`~structpred.training.trainer.Trainer`.
"""
from __future__ import annotations

import warnings

import hydra
from omegaconf import DictConfig

from structpred.configs import CONFIG_PATH, register_resolvers

register_resolvers()
# structpred/configs/hydra/launcher/{joblib,submitit_*}.yaml carry the plugins' names on purpose (so
# hydra/launcher=joblib picks the project's defaults); Hydra warns that they are checked
# against the plugin's schema of the same name, which is what we want
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against "
                        "ConfigStore schema", category=UserWarning)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from structpred.training.app import run_job, train
    return run_job(train, cfg)


if __name__ == "__main__":
    main()
