"""The outer loop: optimisers over theta, the training objective, checkpoints, config
validation and building objects from a config."""
from structpred.training.checkpoint import load_checkpoint, save_checkpoint
from structpred.training.config import ConfigError, validate
from structpred.training.loop import Interrupted, StopFlag, TrainObjective, Trainer
from structpred.training.optimizers import (
    OPTIMIZERS, Adam, AdamState, LBFGSState, OuterLBFGS, WarmStart, make_optimizer,
)

__all__ = ["Adam", "AdamState", "ConfigError", "Interrupted", "LBFGSState", "OPTIMIZERS",
           "OuterLBFGS", "StopFlag", "TrainObjective", "Trainer", "WarmStart",
           "load_checkpoint", "make_optimizer", "save_checkpoint", "validate"]
