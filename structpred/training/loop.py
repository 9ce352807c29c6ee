"""The training objective and the stop signal of the outer loop (the loop itself is
:class:`structpred.training.trainer.Trainer`).

* :class:`TrainObjective`: ``fun(theta, indices, warm) -> (BatchResult, warm)`` over the
  training pairs, with its per-image partial-result cache (a killed run's resume loses only
  the images in flight).
* :class:`StopFlag` / :class:`Interrupted`: SIGINT/SIGTERM ask the objective to stop after
  the current image; the last complete iteration is then checkpointed.
* :func:`denoise_all`: the minimisers of a list of images (validation, the final summary).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from structpred.fileio import write_atomic
from structpred.objective import BatchResult, batch_loss_and_grad
from structpred.training.optimizers import WarmStart

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training was asked to stop by a signal; the last complete state is kept."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class StopFlag:
    """Signal handlers for SIGINT/SIGTERM that ask the loop to stop: the first signal sets
    ``requested`` (the objective raises :class:`Interrupted` after the current image, the
    last complete iteration is checkpointed); a second SIGINT stops at once."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.requested: int | None = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum
        log.warning("%s received: stopping after the current image and saving a checkpoint",
                    signal.Signals(signum).name)

    def check(self):
        if self.requested is not None:
            raise Interrupted(self.requested)

    def __enter__(self):
        for s in self.signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread (e.g. a threaded launcher)
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


@dataclass
class TrainObjective:
    """``fun(theta, indices, warm) -> (BatchResult, warm)`` over the training pairs.

    ``partial_dir``: each image's result is saved there as soon as it is done, under the
    digest of theta; an evaluation at the same theta (the one a killed run's resume
    repeats: the outer optimiser is deterministic) reuses them, so a run killed
    mid-evaluation loses only the images in flight (one per thread), not the whole
    evaluation (12-45 min at 392 images). Files of other thetas are removed when an
    evaluation starts. The sums run in image order, as without the cache."""

    model: object
    solver: object
    gradient: object
    pairs: Sequence
    on_image: Callable | None = None   #: called after each image (the stop check)
    partial_dir: Path | None = None
    evaluations: int = 0
    last_indices: list = field(default_factory=list)   #: images of the latest evaluation
    reused: int = 0                    #: image results taken from partial_dir, in total
    _partial_failed: bool = field(default=False, repr=False)   #: a write failed: stop trying

    def __call__(self, theta, indices, warm):
        idx = list(range(len(self.pairs))) if indices is None else [int(i) for i in indices]
        key = hashlib.sha1(np.ascontiguousarray(theta, dtype=np.float64).tobytes()).hexdigest()
        done = self._load_partial(key[:20], idx)
        todo = [i for i in idx if i not in done]

        def save(j, item):
            done[todo[j]] = item
            if self.partial_dir is not None and not self._partial_failed:
                try:
                    write_atomic(self.partial_dir / f"{key[:20]}_{todo[j]}.pkl",
                                 pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
                except OSError as exc:   # e.g. disk full: a convenience, never a failure
                    self._partial_failed = True
                    log.warning("cannot keep this evaluation's image results in %s (%s); "
                                "training goes on without them", self.partial_dir, exc)
        if todo:
            batch_loss_and_grad(self.model, theta, [self.pairs[i] for i in todo],
                                solver=self.solver, gradient=self.gradient,
                                warm=[warm[i] for i in todo], progress=self.on_image,
                                on_item=save)
        res = BatchResult.mean_of([done[i] for i in idx])
        self.evaluations += 1
        self.last_indices = idx
        new = list(warm)
        for i, item in zip(idx, res.items):
            # on the model's computational domain (extended, for a padding model)
            new[i] = WarmStart(y=item.solve.y_domain, u=getattr(item.adjoint, "u", None))
        return res, tuple(new)

    def _load_partial(self, key: str, idx) -> dict:
        """{image index: PairResult} saved at this theta; removes files of other thetas."""
        if self.partial_dir is None or not Path(self.partial_dir).is_dir():
            return {}
        wanted, out = set(idx), {}
        for f in Path(self.partial_dir).glob("*.pkl"):
            k, _, i = f.stem.rpartition("_")
            if k != key:
                f.unlink(missing_ok=True)
                continue
            if i.isdigit() and int(i) in wanted:
                try:
                    out[int(i)] = pickle.loads(f.read_bytes())
                except Exception as exc:  # a torn or foreign file: recompute that image
                    log.warning("ignoring %s (%s)", f, type(exc).__name__)
        if out:
            self.reused += len(out)
            log.info("reusing %d of %d image results of this evaluation from %s", len(out),
                     len(idx), self.partial_dir)
        return out


def denoise_all(model, theta, noisy: Sequence[np.ndarray], solver, on_image=None):
    """Minimisers ``argmin_y E(y; x, theta)`` of every image (cold start, so the result does
    not depend on earlier calls)."""
    out = []
    for x in noisy:
        out.append(solver.minimize(model, x, theta).y)
        if on_image is not None:
            on_image()
    return out
