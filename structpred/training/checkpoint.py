"""Checkpoints: the optimiser state (parameters, curvature memory or moments, iteration,
minibatch RNG state, warm starts), written atomically, plus JSON metadata (MLflow run id,
metric history, resolved config).

The file is one ``.npz``: arrays under their field names, and ``__meta__`` (JSON) describing
the scalar fields and how to rebuild the state. It is written to a temporary file in the same
folder and renamed over the old one (``os.replace``), so a crash never leaves half a file.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from structpred.training.optimizers import AdamState, LBFGSState, StepInfo, WarmStart

STATES = {"lbfgs": LBFGSState, "adam": AdamState}
SKIP = ("last",)  # the last BatchResult: derived, recomputed after a resume


def _encode(key, value, arrays: dict):
    """JSON-able description of ``value``; arrays go to ``arrays``."""
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"array": key}
    if isinstance(value, WarmStart):
        arrays[key + "/y"] = value.y
        if value.u is not None:   # unrolled gradients have no adjoint to warm-start
            arrays[key + "/u"] = value.u
        return {"warm": key}
    if isinstance(value, StepInfo):
        return {"info": asdict(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(f"{key}/{i}", v, arrays) for i, v in enumerate(value)]}
    return {"value": value}


def _decode(spec, arrays):
    if "array" in spec:
        return np.array(arrays[spec["array"]])
    if "warm" in spec:
        k = spec["warm"]
        u = arrays.get(k + "/u")
        return WarmStart(y=np.array(arrays[k + "/y"]), u=None if u is None else np.array(u))
    if "info" in spec:
        return StepInfo(**spec["info"])
    if "tuple" in spec:
        return tuple(_decode(s, arrays) for s in spec["tuple"])
    return spec["value"]


def save_checkpoint(path, optimizer_name: str, state, meta: dict | None = None) -> Path:
    """Write ``state`` (and ``meta``) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    spec = {f.name: _encode(f.name, getattr(state, f.name), arrays)
            for f in fields(state) if f.name not in SKIP}
    head = {"optimizer": optimizer_name, "state": spec, "meta": meta or {}}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path):
    """Return ``(optimizer_name, state, meta)`` from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    head = json.loads(arrays.pop("__meta__").tobytes().decode())
    cls = STATES[head["optimizer"]]
    state = cls(**{k: _decode(s, arrays) for k, s in head["state"].items()})
    return head["optimizer"], state, head["meta"]
