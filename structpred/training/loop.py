"""The outer loop: optimiser steps, per-iteration metrics, validation, checkpoints, and a
clean stop on SIGINT/SIGTERM."""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from structpred.objective import batch_loss_and_grad
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
    """``fun(theta, indices, warm) -> (BatchResult, warm)`` over the training pairs."""

    model: object
    solver: object
    gradient: object
    pairs: Sequence
    on_image: Callable | None = None   #: called after each image (the stop check)
    evaluations: int = 0

    def __call__(self, theta, indices, warm):
        idx = list(range(len(self.pairs))) if indices is None else [int(i) for i in indices]
        res = batch_loss_and_grad(self.model, theta, [self.pairs[i] for i in idx],
                                  solver=self.solver, gradient=self.gradient,
                                  warm=[warm[i] for i in idx], progress=self.on_image)
        self.evaluations += 1
        new = list(warm)
        for i, item in zip(idx, res.items):
            new[i] = WarmStart(y=item.y, u=getattr(item.adjoint, "u", None))
        return res, tuple(new)


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
        "inner_unconverged": float(r.unconverged),
        "adjoint_iters_mean": float(np.mean(adj)),
        "adjoint_iters_max": float(np.max(adj)),
        "adjoint_residual_max": float(max(it.adjoint.residual for it in r.items)),
        "adjoint_unconverged": float(sum(not it.adjoint.converged for it in r.items)),
        "evals": float(state.info.n_evals),
        "step_size": float(state.info.step_size),
        "wall_time": float(elapsed),
        "iter_time": float(iter_time),
    }


@dataclass
class Trainer:
    """Runs ``optimizer`` from ``state`` until it terminates; ``state`` always holds the last
    complete iterate (what a checkpoint saves on interruption).

    ``on_step(state, metrics)`` is called after every iteration (logging, checkpoints,
    validation); ``elapsed0`` continues the wall-clock count of a resumed run.
    """

    optimizer: object
    fun: Callable
    state: object
    on_step: Callable
    elapsed0: float = 0.0
    reason: str | None = field(default=None, init=False)

    def run(self):
        t_start = time.perf_counter() - self.elapsed0
        while True:
            self.reason = self.optimizer.terminate(self.state)
            if self.reason is not None:
                return self.state
            t0 = time.perf_counter()
            new = self.optimizer.step(self.fun, self.state)
            if new.info.status == "line search failed":
                self.state = new
                continue  # terminate() reports it
            now = time.perf_counter()
            self.state = new
            self.on_step(new, step_metrics(new, now - t_start, now - t0))
