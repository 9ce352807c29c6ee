"""The outer loop: the :class:`Trainer` and its callbacks (``trainer.py``,
``callbacks.py``), outer optimisers over theta, the training objective, checkpoints, config
validation and building objects from a config; ``app.py`` is ``python -m structpred.train``."""
from structpred.training.checkpoint import load_checkpoint, save_checkpoint
from structpred.training.config import ConfigError, validate
from structpred.training.loop import Interrupted, StopFlag, TrainObjective
from structpred.training.optimizers import (
    OPTIMIZERS, Adam, AdamState, LBFGSState, OuterLBFGS, StepInfo, WarmStart, make_optimizer,
)
from structpred.training.trainer import Callback, Policy, Trainer, TrainingFailed

__all__ = ["Adam", "AdamState", "Callback", "ConfigError", "Interrupted", "LBFGSState",
           "OPTIMIZERS", "OuterLBFGS", "Policy", "StepInfo", "StopFlag", "TrainObjective",
           "Trainer", "TrainingFailed", "WarmStart", "load_checkpoint", "make_optimizer",
           "save_checkpoint", "validate"]
