"""Datasets of (noisy, clean) image pairs: loading, cropping and noise synthesis.

``load_splits(cfg)`` builds the train / val / test splits that a data config describes;
every error (missing folder, unreadable file, RGB image, NaN, image smaller than the
filter) is a :class:`DataError` naming the path, raised before training starts.
"""
from structpred.data.datasets import (
    DataError, Dataset, SKIMAGE_PHOTOS, load_folder, load_skimage, load_splits, read_image,
)
from structpred.data.noise import add_noise, noise_rng
from structpred.data.tasks import TASKS, Task, make_task, task_for_model

__all__ = ["DataError", "Dataset", "SKIMAGE_PHOTOS", "add_noise", "load_folder",
           "load_skimage", "load_splits", "noise_rng", "read_image", "TASKS", "Task", "make_task",
           "task_for_model"]
