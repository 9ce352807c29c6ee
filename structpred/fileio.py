"""Writing files so that a crash never leaves half a file under the real name.

Checkpoints (``structpred.training.checkpoint``), model files
(``structpred.tracking.model_io``) and the per-image results of an evaluation in progress
(``structpred.training.loop``) are all written with :func:`write_atomic`. It lives below the
training and tracking layers so that neither imports the other for it.
"""
from __future__ import annotations

import os
from pathlib import Path


def _write_durably(tmp: Path, payload) -> None:
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path, payload, *, before_replace=None) -> Path:
    """Write the bytes ``payload`` to ``path`` atomically: to a temporary file in the same
    folder, flushed to disk, then renamed over ``path`` (``os.replace``), so a crash or a
    full disk never leaves half a file under the real name. ``before_replace()`` runs just
    before the rename. On any error the temporary file is removed, ``path`` is left as it
    was, and the error is re-raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_durably(tmp, payload)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
