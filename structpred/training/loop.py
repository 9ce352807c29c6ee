"""The training objective and the stop signal of the outer loop (the loop itself is
:class:`structpred.training.trainer.Trainer`).

* :class:`TrainObjective`: ``fun(theta, indices, warm) -> (BatchResult, warm)`` over the
  training pairs, with its per-image partial-result cache (a killed run's resume loses only
  the images in flight).
* :class:`PartialResults`: that cache, one file per finished image keyed by theta; the Ray
  executor uses the same class (its driver saves each image as it arrives).
* :class:`StopFlag` / :class:`Interrupted`: SIGINT/SIGTERM ask the objective to stop after
  the current image; the last complete iteration is then checkpointed.
* :func:`denoise_all`: the minimisers of a list of images (validation, the final summary).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import signal
from dataclasses import dataclass, field, replace
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


def slim(item):
    """``item`` (a :class:`~structpred.objective.PairResult`) without its images: loss,
    gradient and diagnostics only (what the partial-result cache keeps beside the warm start,
    and what a Ray actor sends back)."""
    adjoint = item.adjoint
    if getattr(adjoint, "u", None) is not None:
        adjoint = replace(adjoint, u=None)
    return replace(item, y=None, adjoint=adjoint,
                   solve=replace(item.solve, y=None, y_ext=None, trace=None))


def warm_of(item) -> WarmStart:
    """The warm start an evaluation's result gives the next one (on the model's
    computational domain, extended for a padding model)."""
    return WarmStart(y=item.solve.y_domain, u=getattr(item.adjoint, "u", None))


class PartialResults:
    """Each image's result of the evaluation in progress, one file per image in ``folder``
    (``<theta digest>_<image index>.pkl``: the pickled pair ``(slim PairResult,
    WarmStart)``), written as soon as the image is done; an evaluation at the same theta
    (the one a killed run's resume repeats: the outer optimiser is deterministic) takes
    them back instead of solving those images again. Files of other thetas are removed when
    an evaluation starts. The one mechanism of both executors: the local one saves from its
    threads, the Ray driver saves each image's result as it arrives from an actor."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.failed = False   #: a write failed (e.g. disk full): stop trying
        self.reused = 0       #: image results taken back, in total

    @staticmethod
    def key(theta) -> str:
        return hashlib.sha1(np.ascontiguousarray(theta, dtype=np.float64).tobytes()
                            ).hexdigest()[:20]

    def load(self, key: str, idx) -> dict:
        """{image index: (PairResult, WarmStart)} saved at this theta; removes the files of
        other thetas."""
        if not self.folder.is_dir():
            return {}
        wanted, out = set(idx), {}
        for f in self.folder.glob("*.pkl"):
            k, _, i = f.stem.rpartition("_")
            if k != key:
                f.unlink(missing_ok=True)
                continue
            if i.isdigit() and int(i) in wanted:
                try:
                    got = pickle.loads(f.read_bytes())
                    # files of earlier versions hold the whole PairResult (y and u inside)
                    out[int(i)] = (slim(got), warm_of(got)) if hasattr(got, "solve") \
                        else tuple(got)
                except Exception as exc:  # a torn or foreign file: recompute that image
                    log.warning("ignoring %s (%s)", f, type(exc).__name__)
        if out:
            self.reused += len(out)
            log.info("reusing %d of %d image results of this evaluation from %s", len(out),
                     len(idx), self.folder)
        return out

    def clear(self) -> None:
        """Remove every saved result (they belong to another objective: a resume that
        changed the training data, model or solver)."""
        if self.folder.is_dir():
            for f in self.folder.glob("*.pkl"):
                f.unlink(missing_ok=True)

    def save(self, key: str, i: int, item, warm: WarmStart) -> None:
        """Keep image ``i``'s result (its slim PairResult and warm start) at theta ``key``."""
        if self.failed:
            return
        try:
            write_atomic(self.folder / f"{key}_{int(i)}.pkl",
                         pickle.dumps((slim(item), warm), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:   # e.g. disk full: a convenience, never a failure
            self.failed = True
            log.warning("cannot keep this evaluation's image results in %s (%s); "
                        "training goes on without them", self.folder, exc)


def gather(done: dict, idx: list, warm) -> tuple:
    """An evaluation's result from its images' ``done[i] = (item, warm start)``: the mean
    :class:`BatchResult` of ``idx`` (summed in image order, whichever finished first) and
    ``warm`` with the entries of ``idx`` replaced (both executors)."""
    res = BatchResult.mean_of([done[i][0] for i in idx])
    new = list(warm)
    for i in idx:
        new[i] = done[i][1]
    return res, tuple(new)


@dataclass
class TrainObjective:
    """``fun(theta, indices, warm) -> (BatchResult, warm)`` over the training pairs.

    ``partial_dir``: each image's result is saved there as soon as it is done
    (:class:`PartialResults`), so a run killed mid-evaluation loses only the images in
    flight (one per thread), not the whole evaluation (12-45 min at 392 images). The sums
    run in image order, as without the cache."""

    model: object
    solver: object
    gradient: object
    pairs: Sequence
    on_image: Callable | None = None   #: called after each image (the stop check)
    partial_dir: Path | None = None
    evaluations: int = 0
    last_indices: list = field(default_factory=list)   #: images of the latest evaluation
    _partial: PartialResults | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.partial_dir is not None:
            self._partial = PartialResults(self.partial_dir)

    @property
    def reused(self) -> int:
        """Image results taken from ``partial_dir``, in total."""
        return 0 if self._partial is None else self._partial.reused

    def __call__(self, theta, indices, warm):
        idx = list(range(len(self.pairs))) if indices is None else [int(i) for i in indices]
        cache = self._partial
        key = PartialResults.key(theta)
        done = {} if cache is None else cache.load(key, idx)
        todo = [i for i in idx if i not in done]

        def save(j, item):
            w = warm_of(item)
            done[todo[j]] = (item, w)
            if cache is not None:
                cache.save(key, todo[j], item, w)
        if todo:
            batch_loss_and_grad(self.model, theta, [self.pairs[i] for i in todo],
                                solver=self.solver, gradient=self.gradient,
                                warm=[warm[i] for i in todo], progress=self.on_image,
                                on_item=save)
        self.evaluations += 1
        self.last_indices = idx
        return gather(done, idx, warm)


def denoise_all(model, theta, noisy: Sequence[np.ndarray], solver, on_image=None):
    """Minimisers ``argmin_y E(y; x, theta)`` of every image (cold start, so the result does
    not depend on earlier calls)."""
    out = []
    for x in noisy:
        out.append(solver.minimize(model, x, theta).y)
        if on_image is not None:
            on_image()
    return out
