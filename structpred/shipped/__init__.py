"""Trained models shipped with structpred (package data), loadable by name (issue 12's reproduction).

``sp.pretrained("foe-24x5-s25")`` returns a :class:`~structpred.tracking.model_io.TrainedModel`
(``.denoise(noisy)`` on (H, W) images in 0..255); the CLIs take ``pretrained:NAME`` where
they take a model (``evaluate model_ref=pretrained:NAME``, ``denoise pretrained:NAME img.png``).
The files are ordinary model files (``structpred_model.npz`` layout) in this folder, named
``NAME.npz``; each carries in its metadata the training data, the protocol, the hours it
took, the commit that trained it and, once measured, its mean PSNR on BSD68 (dB).
``$STRUCTPRED_PRETRAINED_DIR`` points the registry at another folder (tests, a lab's own
models). ``python -m structpred.reproduce`` ships a trained checkpoint here and regenerates
the BSD68 table.

Names: ``foe-{24x5,48x7}-s{15,25,50}`` (Fields of Experts, K filters m x m, sigma) and
``pairwise-s25``, all seven shipped; :func:`available` lists those present in the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the models the reproduction ships (README "Reproduction"); a name may not be trained yet
NAMES = tuple(f"foe-{size}-s{s}" for size in ("24x5", "48x7") for s in (15, 25, 50)) + \
    ("pairwise-s25",)
PREFIX = "pretrained:"


def folder() -> Path:
    """Where the shipped model files are (``$STRUCTPRED_PRETRAINED_DIR`` overrides)."""
    env = os.environ.get("STRUCTPRED_PRETRAINED_DIR")
    return Path(env) if env else Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the models present, sorted."""
    return sorted(p.stem for p in folder().glob("*.npz"))


def path(name: str) -> Path:
    """The file of model ``name``; FileNotFoundError (one line listing what exists) if absent."""
    name = str(name)
    if name.startswith(PREFIX):
        name = name[len(PREFIX):]
    p = folder() / f"{name}.npz"
    if not p.is_file():
        have = ", ".join(available()) or "none yet"
        planned = "" if name in NAMES else f" (planned names: {', '.join(NAMES)})"
        raise FileNotFoundError(f"pretrained:{name}: no such shipped model in {folder()}; "
                                f"available: {have}{planned}")
    return p


def pretrained(name: str, *, solver=None):
    """Load the shipped model ``name`` (e.g. ``"foe-24x5-s25"``; :func:`available` lists them).

    Returns a :class:`~structpred.tracking.model_io.TrainedModel`; ``.meta`` holds its
    provenance (``bsd68_psnr`` in dB, ``hours``, ``commit``, ``protocol``, ``sigma``).
    Raises FileNotFoundError if no such model is shipped, ModelFileError if its file is
    unreadable."""
    from structpred.tracking.model_io import read_model_file
    return read_model_file(path(name), solver)
