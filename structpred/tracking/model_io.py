"""Trained-model files and loading a model back from a run.

A model file (``structpred_model.npz``) holds the flat parameters and, as JSON, the model's
registry name and constructor arguments, the inner solver's settings and the training sigma:
enough to rebuild and use the model with nothing else. It is written atomically (a temporary
file in the same folder renamed over the old one, as checkpoints are).

:func:`load_model` accepts a model file, a folder holding one (a Hydra run folder, a
downloaded artifact folder), an MLflow run id or ``runs:/<run id>``; it returns a
:class:`TrainedModel` whose ``denoise(noisy)`` runs the inner solver.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL_FILE = "structpred_model.npz"
MODEL_FORMAT = 1   #: version of the model file layout (files without one are version 1)


class ModelFileError(ValueError):
    """A model file that is corrupt or of an incompatible version; names the file."""
MODEL_ARTIFACT_DIR = "final_model"       #: run artifact folder holding MODEL_FILE


@dataclass
class TrainedModel:
    """A model, its parameters and the inner solver that denoises with it."""

    model: object
    theta: np.ndarray
    solver: object
    meta: dict = field(default_factory=dict)

    def denoise(self, noisy, *, value_range=None, gray: bool = False, hints=None,
                where: str = "image"):
        """Denoise one image: ``argmin_y E(y; x, theta)`` of its gray plane ``x``.

        ``noisy``: (H, W) or (H, W, C) array of any dtype, mapped to the engine's 0..255 by
        the rule of :mod:`structpred.data.images` (uint8 as is, uint16 / 257, float with
        values within 0..1 (99.5th percentile <= 2) x 255, other floats as 0..255, ...;
        ``value_range=(lo, hi)`` overrides the guess; ``gray=True`` converts colour to
        luminance). Returns the result in the input's dtype, range and layout (an alpha
        channel is copied). Raises :class:`structpred.data.images.ImageError` (a ValueError)
        naming the problem in one line."""
        from structpred.data.images import API_HINTS, from_gray255, to_gray255
        x, info = to_gray255(noisy, where, value_range=value_range, gray=gray,
                             hints=hints or API_HINTS)
        return from_gray255(self.denoise255(x), info)

    def denoise255(self, x, *, monitor=None) -> np.ndarray:
        """The engine's call: ``argmin_y E`` of one (H, W) float image already in 0..255 (no
        range rule), as float64. ``monitor``: a
        :class:`structpred.solvers.monitor.SolveMonitor` to watch the solve from another
        thread (:class:`structpred.solvers.monitor.InnerProgress`)."""
        extra = {} if monitor is None else {"monitor": monitor}
        return self.solver.minimize(self.model, np.asarray(x, dtype=np.float64),
                                    self.theta, **extra).y

    def predict(self, images, *, value_range=None, gray: bool = False, hints=None):
        """Denoise one image (an (H, W) or (H, W, C) array, see :meth:`denoise`) or each image
        of a list or tuple; returns an array or a list."""
        if isinstance(images, (list, tuple)):
            return [self.denoise(im, value_range=value_range, gray=gray, hints=hints,
                                 where=f"images[{i}]") for i, im in enumerate(images)]
        return self.denoise(images, value_range=value_range, gray=gray, hints=hints)


def save_model(path, model, theta, *, solver=None, meta: dict | None = None) -> Path:
    """Write a model file atomically (a temporary file in the same folder, renamed over
    ``path``): a crash or a full disk leaves any previous file at ``path`` intact. Raises
    OSError if the file cannot be written."""
    import io
    from dataclasses import asdict

    from structpred.fileio import write_atomic
    head = {"format": MODEL_FORMAT, "structpred_version": _version(),
            "model": {"name": model.name, **model.config()},
            "solver": ({"name": "lbfgs", **asdict(solver)} if solver is not None else None),
            "meta": meta or {}}
    buf = io.BytesIO()
    np.savez(buf, theta=np.asarray(theta, dtype=np.float64),
             header=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8))
    return write_atomic(Path(path), buf.getbuffer())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("structpred")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def _read_raw(path):
    """``(theta, header)`` of a model file; ModelFileError naming it if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            theta = np.array(z["theta"])
            head = json.loads(z["header"].tobytes().decode())
    except Exception as exc:  # zipfile, numpy, json and KeyError all mean "not a model file"
        raise ModelFileError(f"{path}: not a structpred model file or corrupt "
                             f"({type(exc).__name__}: {exc})") from None
    version = head.get("format", 1)
    if version != MODEL_FORMAT:
        raise ModelFileError(f"{path}: model file format version {version} (written by "
                             f"structpred {head.get('structpred_version', 'unknown')}); this "
                             f"structpred {_version()} reads version {MODEL_FORMAT}")
    return theta, head


def read_model_file(path, solver=None) -> TrainedModel:
    """Rebuild a :class:`TrainedModel` from a model file.

    Raises
    ------
    ModelFileError
        If the file is corrupt, of another format version, or describes a model or parameters
        this structpred cannot build.
    """
    import structpred as sp
    theta, head = _read_raw(path)
    try:
        spec = dict(head["model"])
        model = sp.make_model(spec.pop("name"), **spec)
        if solver is None:
            sspec = dict(head.get("solver") or {"name": "lbfgs"})
            solver = sp.make_solver(sspec.pop("name"), **sspec)
        theta = model.check_params(theta)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: incompatible model file (format version "
                             f"{head.get('format', 1)}, written by structpred "
                             f"{head.get('structpred_version', 'unknown')}): "
                             f"{type(exc).__name__}: {exc}") from None
    return TrainedModel(model=model, theta=theta, solver=solver, meta=head.get("meta", {}))


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _find_file(folder: Path) -> Path | None:
    hits = sorted(folder.rglob(MODEL_FILE))
    return hits[0] if hits else None


def load_model(ref, *, solver=None, tracking_uri: str | None = None) -> TrainedModel:
    """Load a trained model from a file, a folder, a run id, ``runs:/<run id>`` or
    ``pretrained:NAME`` (a model shipped with structpred, :mod:`structpred.shipped`)."""
    ref = str(ref)
    if ref.startswith("pretrained:"):
        from structpred.shipped import path as pretrained_path
        return read_model_file(pretrained_path(ref), solver)
    p = Path(ref)
    if p.is_file():
        return read_model_file(p, solver)
    if p.is_dir():
        f = _find_file(p)
        if f is None:
            raise FileNotFoundError(f"{p}: no {MODEL_FILE} in this folder")
        return read_model_file(f, solver)
    run_id = ref[len("runs:/"):].split("/")[0] if ref.startswith("runs:/") else ref
    if not _RUN_ID.match(run_id):
        raise FileNotFoundError(f"{ref}: not a model file, a folder or an MLflow run id")
    import mlflow
    from mlflow.exceptions import MlflowException
    uri = tracking_uri or _default_store()
    _check_store(uri, ref)            # a lookup never creates a store as a side effect
    try:
        # the store given per call: MLflow's global tracking URI is left as it was
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{MODEL_ARTIFACT_DIR}/{MODEL_FILE}", tracking_uri=uri)
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FileNotFoundError(f"{ref}: not found in the MLflow store {uri} ({first})") from None
    return read_model_file(local, solver)


def _default_store() -> str:
    """Where a run id is looked up without ``tracking_uri``: ``$STRUCTPRED_MLFLOW_URI``, else a
    store the user set for MLflow itself (``mlflow.set_tracking_uri``, ``MLFLOW_TRACKING_URI``),
    else the project's ``mlruns/mlflow.db`` (where the apps write by default)."""
    import os

    from structpred.configs import default_tracking_uri
    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
    except ImportError:            # a private helper of MLflow: its environment variable then
        def is_tracking_uri_set():
            return bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if not os.environ.get("STRUCTPRED_MLFLOW_URI") and is_tracking_uri_set():
        import mlflow
        return mlflow.get_tracking_uri()
    return default_tracking_uri()


def _check_store(uri: str, ref: str) -> None:
    """FileNotFoundError if ``uri`` is a local store (sqlite file or folder) that does not
    exist: MLflow would create an empty one there and then not find the run."""
    from urllib.parse import urlparse
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).is_file():
            raise FileNotFoundError(f"{ref}: no MLflow store at {path} (give the store with "
                                    "--tracking-uri / tracking.uri or STRUCTPRED_MLFLOW_URI)")
    elif parsed.scheme in ("", "file") and not Path(parsed.path or uri).is_dir():
        raise FileNotFoundError(f"{ref}: no MLflow store at {parsed.path or uri} (give the "
                                "store with --tracking-uri / tracking.uri or "
                                "STRUCTPRED_MLFLOW_URI)")
