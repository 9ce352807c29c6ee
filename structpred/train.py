"""Train an energy model: ``python -m structpred.train +experiment=denoise``.

Configs live in the top-level ``configs/`` folder (``configs/train.yaml`` and its groups);
see README "Training, tracking and evaluation".
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from structpred.training.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from structpred.training.app import guarded, train
    return guarded(train, cfg)


if __name__ == "__main__":
    main()
