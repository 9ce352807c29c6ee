"""Checkpoints: the optimiser state (parameters, curvature memory or moments, iteration,
minibatch RNG state, warm starts), written atomically, plus JSON metadata (MLflow run id,
metric history, resolved config).

The file is one ``.npz``: arrays under their field names, and ``__meta__`` (JSON) describing
the scalar fields, how to rebuild the state, the file format version and a SHA-256 digest of
the arrays. It is written to a temporary file in the same folder, flushed to disk, and renamed
over the old one (``os.replace``), so a crash never leaves half a file under the real name;
the file it replaces is kept as ``prev.npz`` beside it. A file that is torn, corrupt or of
another format version raises :class:`CheckpointError`; :func:`load_latest` then falls back to
the previous checkpoint.

Further states of the same optimiser may ride along (``extra_states``, e.g. the outer loop's
last good state before the current one, which Adam goes back to after a rejected step):
described under ``extra`` in ``__meta__``, their arrays under ``extra/<name>/...``, warm
starts that are the same objects as the main state's stored once. Files without them (older
ones) load with none; older readers ignore them.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from structpred.fileio import write_atomic
from structpred.solvers import Status
from structpred.training.optimizers import AdamState, LBFGSState, StepInfo, WarmStart

log = logging.getLogger(__name__)

STATES = {"lbfgs": LBFGSState, "adam": AdamState}
SKIP = ("last",)  # the last BatchResult: derived, recomputed after a resume
FORMAT_VERSION = 2  #: 1: no version or digest (still readable); 2: version + SHA-256
PREV_NAME = "prev.npz"
#: ``StepInfo.status`` as checkpoints written before it was a :class:`Status` stored it (a
#: string compared by value); read back as the members. Newer files store the member's name.
OLD_STEP_STATUS = {"ok": Status.ACCEPTED,
                   "ok (sufficient decrease only)": Status.SUFFICIENT_DECREASE,
                   "line search failed": Status.LINESEARCH_FAILED}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file."""


def _encode(key, value, arrays: dict, seen: dict | None = None):
    """JSON-able description of ``value``; arrays go to ``arrays``. A warm start already
    stored (the same object, ``seen``: id -> key) is referred to, not stored again."""
    seen = {} if seen is None else seen
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"array": key}
    if isinstance(value, WarmStart):
        if id(value) in seen:
            return {"warm": seen[id(value)]}
        seen[id(value)] = key
        arrays[key + "/y"] = value.y
        if value.u is not None:   # unrolled gradients have no adjoint to warm-start
            arrays[key + "/u"] = value.u
        return {"warm": key}
    if isinstance(value, StepInfo):   # the status by name: readable in the JSON header
        return {"info": {**asdict(value), "status": Status(value.status).name}}
    if isinstance(value, tuple):
        return {"tuple": [_encode(f"{key}/{i}", v, arrays, seen) for i, v in enumerate(value)]}
    return {"value": value}


def _decode(spec, arrays, cache: dict | None = None):
    """The value ``spec`` describes; a warm start referred to twice is one object (``cache``:
    key -> WarmStart)."""
    cache = {} if cache is None else cache
    if "array" in spec:
        return np.array(arrays[spec["array"]])
    if "warm" in spec:
        k = spec["warm"]
        if k not in cache:
            u = arrays.get(k + "/u")
            cache[k] = WarmStart(y=np.array(arrays[k + "/y"]),
                                 u=None if u is None else np.array(u))
        return cache[k]
    if "info" in spec:
        return StepInfo(**{**spec["info"], "status": _step_status(spec["info"].get("status"))})
    if "tuple" in spec:
        return tuple(_decode(s, arrays, cache) for s in spec["tuple"])
    return spec["value"]


def _step_status(value) -> Status:
    """The :class:`Status` of a stored ``StepInfo.status``: a member's name, or the string
    of an older checkpoint (:data:`OLD_STEP_STATUS`); missing: ``ACCEPTED``, the default.
    Anything else raises KeyError (the file does not match this structpred)."""
    if value is None:
        return Status.ACCEPTED
    return OLD_STEP_STATUS[value] if value in OLD_STEP_STATUS else Status[value]


def _encode_state(prefix: str, state, arrays: dict, seen: dict) -> dict:
    return {f.name: _encode(prefix + f.name, getattr(state, f.name), arrays, seen)
            for f in fields(state) if f.name not in SKIP}


def _decode_state(cls, spec: dict, arrays, cache: dict):
    return cls(**{k: _decode(s, arrays, cache) for k, s in spec.items()})


def _digest(arrays: dict) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def previous_path(path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept."""
    return Path(path).with_name(PREV_NAME)


def _keep_previous(path: Path) -> None:
    """Make ``prev.npz`` a copy of the current ``path`` (atomically: link or copy to a
    temporary name, then rename), so ``path`` itself is never missing."""
    if not path.is_file():
        return
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system
        shutil.copy2(path, tmp)
    os.replace(tmp, prev)


def save_checkpoint(path, optimizer_name: str, state, meta: dict | None = None, *,
                    extra_states: dict | None = None) -> Path:
    """Write ``state`` (and ``meta``, and the named ``extra_states`` of the same optimiser)
    to ``path`` atomically, keeping the file it replaces as ``prev.npz``; returns the path.

    Raises
    ------
    CheckpointError
        If the file cannot be written (disk full, permissions); the previous checkpoint and
        ``path`` are left as they were and no temporary file remains.
    """
    path = Path(path)
    arrays: dict = {}
    seen: dict = {}
    spec = _encode_state("", state, arrays, seen)
    extra = {name: _encode_state(f"extra/{name}/", st, arrays, seen)
             for name, st in (extra_states or {}).items() if st is not None}
    head = {"format": FORMAT_VERSION, "sha256": _digest(arrays), "optimizer": optimizer_name,
            "state": spec, "meta": meta or {}}
    if extra:
        head["extra"] = extra
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **arrays)
    try:
        write_atomic(path, buf.getbuffer(), before_replace=lambda: _keep_previous(path))
    except OSError as exc:
        why = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise CheckpointError(f"{path}: cannot write checkpoint ({why}); the previous "
                              "checkpoint is unchanged") from exc
    return path


def _read_head(path: Path):
    """``(head, arrays)`` of a checkpoint file; CheckpointError naming it if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        head = json.loads(arrays.pop("__meta__").tobytes().decode())
    except Exception as exc:  # zipfile, numpy and json raise many types: all mean "torn"
        raise CheckpointError(f"{path}: torn or corrupt checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
    version = head.get("format", 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than "
                              f"this structpred reads (<= {FORMAT_VERSION}); upgrade structpred")
    if version >= 2 and head.get("sha256") != _digest(arrays):
        raise CheckpointError(f"{path}: corrupt checkpoint (SHA-256 of its arrays does not "
                              "match the one recorded when it was written)")
    if head.get("optimizer") not in STATES:
        raise CheckpointError(f"{path}: unknown optimizer {head.get('optimizer')!r} in "
                              f"checkpoint; allowed: {sorted(STATES)}")
    return head, arrays


def load_checkpoint(path, *, with_extra: bool = False):
    """Return ``(optimizer_name, state, meta)`` from a checkpoint file, and with
    ``with_extra`` also the dict of its extra states (empty if it has none).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If it is torn, corrupt or of an unsupported format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    head, arrays = _read_head(path)
    cls = STATES[head["optimizer"]]
    cache: dict = {}
    try:
        state = _decode_state(cls, head["state"], arrays, cache)
        extra = {name: _decode_state(cls, spec, arrays, cache)
                 for name, spec in head.get("extra", {}).items()}
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match this structpred's "
                              f"{head['optimizer']} state ({type(exc).__name__}: {exc})") from None
    if with_extra:
        return head["optimizer"], state, head["meta"], extra
    return head["optimizer"], state, head["meta"]


def load_latest(path, *, with_extra: bool = False):
    """:func:`load_checkpoint` of ``path``, or of the previous checkpoint beside it if
    ``path`` is missing, torn or corrupt (with a warning). Returns
    ``(path_used, optimizer_name, state, meta)`` (and the extra states, ``with_extra``)."""
    path = Path(path)
    try:
        return (path, *load_checkpoint(path, with_extra=with_extra))
    except (FileNotFoundError, CheckpointError) as exc:
        prev = previous_path(path)
        if prev == path or not prev.is_file():
            raise
        log.warning("%s; using the previous checkpoint %s", exc, prev)
        return (prev, *load_checkpoint(prev, with_extra=with_extra))
