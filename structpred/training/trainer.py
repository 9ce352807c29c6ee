"""The training loop: :class:`Trainer` runs the outer optimiser and calls its callbacks.

One outer iteration, as :meth:`Trainer.run` does it::

    new = optimizer.step(fun, state)          # line search / Adam step over the batch objective
    if bad_step(state, new): reject, shrink, retry from the last good state   (Policy)
    metrics = step_metrics(new)               # loss, PSNR, |g|, inner/adjoint iterations, ...
    callback.on_iteration_metrics(...)        # add metrics (validation PSNR)
    trainer.history.append(metrics)
    callback.on_iteration_end(...)            # report (MLflow, progress bar, log line, checkpoint)
    too many unconverged inner solves? stop   (Policy)

until ``optimizer.terminate(state)`` gives a reason. Everything that is not the loop itself
(validation, logging, MLflow, checkpoints, the fault injector) is a :class:`Callback`
(``structpred/training/callbacks.py``, ``structpred/training/faults.py``); the application
(``structpred/training/app.py::train``) builds the objects and the callbacks from the config
and calls :meth:`Trainer.run`.

The robustness policy (:class:`Policy`): outer steps that give a non-finite or much larger
loss are rejected and retried shorter from the last good parameters; inner solves that do
not converge are reported per image and, past a fraction, stop the run
(:class:`TrainingFailed`). What the policy remembers (:meth:`Trainer.memory`) is
checkpointed, so a resumed run behaves exactly as an undisturbed one.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from structpred.solvers import Status

log = logging.getLogger(__name__)
#: the user-facing lines (initial evaluation, compile notice, "training stopped") keep the
#: application's logger name, as before the loop had its own module
app_log = logging.getLogger("structpred.train")


class TrainingFailed(Exception):
    """The robustness policy stopped the run (too many unconverged inner solves, or too many
    rejected outer steps in a row); the last good state is kept."""


class Callback:
    """Hooks of the training loop; each does nothing unless overridden. The trainer calls
    its callbacks in list order at each hook.

    ``on_train_start(trainer)``
        the initial state is ready (``trainer.state``), before the initial report.
    ``on_iteration_metrics(trainer, state, metrics)``
        after an accepted outer iteration (and once for the initial parameters, iteration 0,
        when the optimiser evaluated them): add entries to ``metrics`` (validation) before
        they are recorded in ``trainer.history``.
    ``on_iteration_end(trainer, state, metrics)``
        the iteration is recorded (``trainer.history[-1]``): report or save it.
    ``on_train_end(trainer, reason)``
        the optimiser terminated for ``reason`` (also ``trainer.reason``).
    ``on_exception(trainer, exc)``
        the loop is leaving with ``exc`` (an interruption, :class:`TrainingFailed`, a crash);
        ``trainer.state`` is the last complete, accepted state (None if the initial
        evaluation did not finish). The exception is re-raised afterwards.
    """

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_iteration_metrics(self, trainer: "Trainer", state, metrics: dict) -> None:
        pass

    def on_iteration_end(self, trainer: "Trainer", state, metrics: dict) -> None:
        pass

    def on_train_end(self, trainer: "Trainer", reason: str) -> None:
        pass

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        pass


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


def initial_metrics(state) -> dict:
    """The metrics of the initial parameters (iteration 0), from the optimiser's first
    evaluation: fewer than :func:`step_metrics` (no step was taken)."""
    r = state.last
    return {"train_loss": float(r.loss), "train_psnr": float(r.psnr),
            "grad_norm": float(np.linalg.norm(r.grad)),
            "inner_iters_mean": float(np.mean([i.solve.iterations for i in r.items])),
            "inner_iters_max": float(np.max([i.solve.iterations for i in r.items])),
            "adjoint_iters_mean": float(np.mean([i.adjoint.iterations for i in r.items])),
            "adjoint_iters_max": float(np.max([i.adjoint.iterations for i in r.items])),
            "adjoint_residual_max": float(max(i.adjoint.residual for i in r.items)),
            "wall_time": 0.0}


@dataclass
class Trainer:
    """Runs ``optimizer`` over the batch objective ``fun`` until it terminates, calling the
    ``callbacks`` (:class:`Callback`) at each hook; ``state`` always holds the last
    complete, accepted iterate (what a checkpoint saves on interruption).

    ``state``: where to start (a resumed run's); None starts from ``theta0`` with the
    optimiser's first evaluation (``optimizer.init``) over the ``len(names)`` training
    images. ``elapsed0`` continues the wall-clock count of a resumed run, ``history`` its
    per-iteration metrics. ``policy`` decides which steps are rejected and when the run
    stops (:class:`Policy`); ``names`` are the training images' names (for per-image
    warnings) and ``count_inner`` says whether inner convergence counts (argmin gradients).

    The *rejection memory* (``rejected``, ``streak``, ``events`` and ``before``) is what a
    checkpoint keeps besides the optimiser state (:meth:`memory`, :meth:`restore`), so that a
    resumed run rejects, shrinks and goes back exactly as an undisturbed one would.
    """

    optimizer: object
    fun: Callable
    state: object = None
    callbacks: Sequence[Callback] = ()
    theta0: np.ndarray | None = None
    elapsed0: float = 0.0
    policy: Policy = Policy()
    names: Sequence[str] = ()
    count_inner: bool = True
    #: a resumed ``state`` whose objective changed (other training data, model or inner
    #: solver: :func:`structpred.training.app.objective_changes`): its loss and gradient are
    #: evaluated again on ``fun`` before the first step (``optimizer.rebase``)
    rebase: bool = False
    #: ``{"step": iteration, **metrics}`` of every accepted iteration (0: the initial
    #: parameters), a resumed run's continuing its checkpoint's
    history: list = field(default_factory=list)
    reason: str | None = field(default=None, init=False)
    rejected: int = field(default=0, init=False)          #: rejected steps in total
    streak: int = field(default=0, init=False)            #: rejected steps in a row, now
    events: list = field(default_factory=list, init=False)  #: rejections and failures
    #: the accepted state before ``state`` (where an optimiser whose loss is that of the
    #: previous theta goes back to after a rejection); None at the start
    before: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.callbacks = list(self.callbacks or ())

    # ------------------------------------------------------------------- the loop
    def run(self):
        """Train until the optimiser terminates (``reason``); returns the last state. Any
        exception (an interruption, :class:`TrainingFailed`) goes to the callbacks'
        ``on_exception`` first, then propagates."""
        try:
            if self.state is None:
                self.state = self._initial_state()
            elif self.rebase:
                t0 = time.perf_counter()
                self.state = self.optimizer.rebase(self.fun, self.state, len(self.names))
                self.before, self.rebase = None, False    # before: the old objective's
                app_log.info("resumed parameters evaluated on this run's objective in %.1f s: "
                             "loss %.6g", time.perf_counter() - t0, self.state.loss)
                # (Adam: nothing to evaluate, its loss is NaN until its next step)
            self._call("on_train_start")
            if self.state.last is not None and self.state.iteration == 0:
                self._record(self.state, initial_metrics(self.state))
            t_start = time.perf_counter() - self.elapsed0
            while True:
                self.reason = self.optimizer.terminate(self.state)
                if self.reason is not None:
                    break
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
                self._record(new, metrics)
                self._enforce_inner(new, metrics)
            app_log.info("training stopped: %s", self.reason)
            self._call("on_train_end", self.reason)
            return self.state
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(self, exc)
            raise

    def _initial_state(self):
        """The optimiser's first state at ``theta0`` (its first evaluation, which compiles
        the kernels if their cache is cold: structpred.kernels.compile_notice says so)."""
        t0 = time.perf_counter()
        state = self.optimizer.init(self.fun, self.theta0, len(self.names))
        app_log.info("initial evaluation in %.1f s", time.perf_counter() - t0)
        return state

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _record(self, state, metrics: dict) -> None:
        """Let the callbacks add metrics, keep them in the history, let them report."""
        self._call("on_iteration_metrics", state, metrics)
        self.history.append({"step": state.iteration, **metrics})
        self._call("on_iteration_end", state, metrics)

    @property
    def elapsed(self) -> float:
        """Seconds of training so far by the latest recorded iteration (0 if none)."""
        return float(self.history[-1].get("wall_time", 0.0)) if self.history else 0.0

    # --------------------------------------------------------- rejection memory
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

    # ------------------------------------------------------------------ the policy
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
