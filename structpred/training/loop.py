"""The outer loop: optimiser steps, per-iteration metrics, validation, checkpoints, a clean
stop on SIGINT/SIGTERM, and the robustness policy (:class:`Policy`): outer steps that give a
non-finite or much larger loss are rejected and retried shorter from the last good
parameters; inner solves that do not converge are reported per image and, past a fraction,
stop the run."""
from __future__ import annotations

import hashlib
import logging
import math
import pickle
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from structpred.fileio import write_atomic
from structpred.objective import BatchResult, batch_loss_and_grad
from structpred.solvers import Status
from structpred.training.optimizers import WarmStart

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training was asked to stop by a signal; the last complete state is kept."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class TrainingFailed(Exception):
    """The robustness policy stopped the run (too many unconverged inner solves, or too many
    rejected outer steps in a row); the last good state is kept."""


@dataclass(frozen=True)
class Policy:
    """What the outer loop tolerates (config group ``trainer``).

    Parameters
    ----------
    max_unconverged_fraction : float or None
        Stop the run when, in an accepted outer iteration, more than this fraction of the
        images' inner solves did not converge (None: never stop; each is still reported).
        Only argmin gradients count: an unrolled prediction stops at its step budget by design.
    max_loss_increase : float or None
        Reject a step whose loss exceeds the last good loss by more than this factor of its
        magnitude (None: only non-finite losses and gradients are rejected).
    shrink : float
        The step (line-search start, or Adam's learning rate) is multiplied by this after a
        rejected step.
    max_rejections : int
        Consecutive rejected steps after which the run stops.
    """

    max_unconverged_fraction: float | None = 0.5
    max_loss_increase: float | None = 10.0
    shrink: float = 0.1
    max_rejections: int = 5


def _finite(*values) -> bool:
    return all(v is not None and bool(np.all(np.isfinite(v))) for v in values)


def bad_step(good, new, max_increase) -> str | None:
    """Why ``new`` (the state after a step from ``good``) must be rejected, or None."""
    if not _finite(new.theta, new.loss, new.grad):
        return "non-finite loss, gradient or parameters"
    if (max_increase is not None and math.isfinite(good.loss)
            and new.loss > good.loss + max_increase * abs(good.loss)):
        return f"loss increased from {good.loss:.4g} to {new.loss:.4g}"
    return None


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


def step_metrics(state, elapsed: float, iter_time: float) -> dict:
    """The per-iteration metrics of a state whose ``last`` BatchResult is set."""
    r = state.last
    inner = [it.solve.iterations for it in r.items]
    adj = [it.adjoint.iterations for it in r.items]
    return {
        "train_loss": float(r.loss),
        "train_psnr": float(r.psnr),
        "grad_norm": float(np.linalg.norm(r.grad)),
        "inner_iters_mean": float(np.mean(inner)),
        "inner_iters_max": float(np.max(inner)),
        "adjoint_iters_mean": float(np.mean(adj)),
        "adjoint_iters_max": float(np.max(adj)),
        "adjoint_residual_max": float(max(it.adjoint.residual for it in r.items)),
        "adjoint_unconverged": float(sum(not getattr(it.adjoint, "converged", True)
                                         for it in r.items)),
        "adjoint_minres": float(sum(bool(getattr(it.adjoint, "negative_curvature", False))
                                    for it in r.items)),
        "evals": float(state.info.n_evals),
        "step_size": float(state.info.step_size),
        "wall_time": float(elapsed),
        "iter_time": float(iter_time),
    }


@dataclass
class Trainer:
    """Runs ``optimizer`` from ``state`` until it terminates; ``state`` always holds the last
    complete, accepted iterate (what a checkpoint saves on interruption).

    ``on_step(state, metrics)`` is called after every accepted iteration (logging,
    checkpoints, validation); ``elapsed0`` continues the wall-clock count of a resumed run.
    ``policy`` decides which steps are rejected and when the run stops (:class:`Policy`);
    ``names`` are the training images' names (for per-image warnings) and ``count_inner``
    says whether inner convergence counts (argmin gradients).

    The *rejection memory* (``rejected``, ``streak``, ``events`` and ``before``) is what a
    checkpoint keeps besides the optimiser state (:meth:`memory`, :meth:`restore`), so that a
    resumed run rejects, shrinks and goes back exactly as an undisturbed one would.
    """

    optimizer: object
    fun: Callable
    state: object
    on_step: Callable
    elapsed0: float = 0.0
    policy: Policy = Policy()
    names: Sequence[str] = ()
    count_inner: bool = True
    reason: str | None = field(default=None, init=False)
    rejected: int = field(default=0, init=False)          #: rejected steps in total
    streak: int = field(default=0, init=False)            #: rejected steps in a row, now
    events: list = field(default_factory=list, init=False)  #: rejections and failures
    #: the accepted state before ``state`` (where an optimiser whose loss is that of the
    #: previous theta goes back to after a rejection); None at the start
    before: object = field(default=None, init=False, repr=False)

    def memory(self) -> dict:
        """The JSON-able part of the rejection memory (``before`` is a state: the
        checkpoint stores it with the optimiser state, see :attr:`needs_before`)."""
        return {"rejected": int(self.rejected), "streak": int(self.streak),
                "events": [dict(e) for e in self.events]}

    @property
    def needs_before(self) -> bool:
        """Whether a rejection can go back to :attr:`before` (so a checkpoint must keep it)."""
        return not self.optimizer.loss_at_new_theta

    def restore(self, memory: dict | None = None, before=None) -> None:
        """Continue with the rejection memory of a checkpoint (None or missing keys, as in
        checkpoints written before it was kept: none)."""
        memory = memory or {}
        self.rejected = int(memory.get("rejected", 0))
        self.streak = int(memory.get("streak", 0))
        self.events = [dict(e) for e in memory.get("events", [])]
        self.before = before

    def run(self):
        t_start = time.perf_counter() - self.elapsed0
        while True:
            self.reason = self.optimizer.terminate(self.state)
            if self.reason is not None:
                return self.state
            t0 = time.perf_counter()
            new = self.optimizer.step(self.fun, self.state)
            if new.info.status is Status.LINESEARCH_FAILED:
                self.state = new
                continue  # terminate() reports it
            why = bad_step(self.state, new, self.policy.max_loss_increase)
            if why is not None:
                self.streak += 1
                self.state = self._reject(new, why, self.streak, self.before)
                continue
            self.before, self.streak = self.state, 0
            now = time.perf_counter()
            self.state = new
            metrics = step_metrics(new, now - t_start, now - t0)
            metrics["rejected_steps"] = float(self.rejected)
            metrics.update(self._check_inner(new))
            self.on_step(new, metrics)
            self._enforce_inner(new, metrics)

    def _reject(self, new, why: str, streak: int, before):
        """Log the rejected step and return the state to retry from, with a shorter step.

        An optimiser whose loss is that of the previous theta (Adam) learns that theta was
        bad only one step later, so it goes back to the state before it."""
        self.rejected += 1
        anchor = self.state
        if not self.optimizer.loss_at_new_theta and before is not None:
            anchor = before
        event = {"step": new.iteration, "event": "rejected", "reason": why,
                 "back_to": anchor.iteration}
        self.events.append(event)
        log.warning("outer step %d rejected (%s): back to the parameters of iteration %d, "
                    "step shrunk by %g", new.iteration, why, anchor.iteration,
                    self.policy.shrink ** streak)
        if streak > self.policy.max_rejections:
            raise TrainingFailed(f"{streak} outer steps in a row rejected (last: {why}); "
                                 f"stopping at iteration {self.state.iteration} "
                                 "(trainer.max_rejections)")
        return self.optimizer.shrink(anchor, self.policy.shrink ** streak)

    def _unconverged(self, state) -> list[tuple[str, object]]:
        """(image name, SolveResult) of each inner solve of ``state`` that did not converge."""
        items = state.last.items
        idx = (range(len(items)) if len(items) == len(self.names)
               else getattr(self.fun, "last_indices", range(len(items))))
        names = [self.names[i] if i < len(self.names) else f"#{i}" for i in idx]
        return [(n, it.solve) for n, it in zip(names, items) if not it.solve.converged]

    def _check_inner(self, state) -> dict:
        """Warn per image whose inner solve did not converge; its count and fraction."""
        if not self.count_inner or state.last is None:
            return {"inner_unconverged": 0.0, "inner_unconverged_fraction": 0.0}
        bad = self._unconverged(state)
        for name, solve in bad:
            log.warning("outer iteration %d: inner solve of image %s did not converge (%s)",
                        state.iteration, name, solve.message)
        n = len(state.last.items)
        return {"inner_unconverged": float(len(bad)),
                "inner_unconverged_fraction": len(bad) / max(n, 1)}

    def _enforce_inner(self, state, metrics) -> None:
        limit = self.policy.max_unconverged_fraction
        frac = metrics["inner_unconverged_fraction"]
        if limit is not None and frac > limit:
            self.events.append({"step": state.iteration, "event": "inner failures",
                                "fraction": frac})
            raise TrainingFailed(f"outer iteration {state.iteration}: {frac:.0%} of the inner "
                                 f"solves did not converge (> trainer.max_unconverged_fraction"
                                 f"={limit}); raise solver.maxiter or loosen solver.gtol")
