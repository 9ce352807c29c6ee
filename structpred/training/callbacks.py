"""The callbacks of the training application, in the order it runs them
(``structpred/training/app.py::train``):

* :class:`Validation`: the validation PSNR every ``val_every`` iterations (a metric).
* (the config's ``callbacks`` group, e.g. the fault injector, ``structpred/training/faults.py``:
  after the metrics are complete, before anything is reported or saved)
* :class:`MLflowLogger`: the metrics of each iteration to the MLflow run; the stop reason.
* :class:`ProgressBar`: a tqdm bar over outer iterations (``progress``).
* :class:`IterationLog`: one line per outer iteration in ``train.log`` and on the console,
  with this iteration's seconds, the total and the ETA.
* :class:`Checkpointer`: ``checkpoints/last.npz`` every ``checkpoint.every`` iterations, at
  the end, and when the run is interrupted or stopped by the policy.

Each is a :class:`~structpred.training.trainer.Callback`; see there for the hooks.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from structpred.losses import psnr
from structpred.training.checkpoint import CheckpointError, save_checkpoint
from structpred.training.loop import Interrupted, denoise_all
from structpred.training.trainer import Callback, TrainingFailed

log = logging.getLogger("structpred.train")

BEFORE = "before"   #: extra checkpoint state: the outer loop's last good state before the current


def mean_psnr(ys, data) -> float:
    return float(np.mean([psnr(y, t) for y, t in zip(ys, data.clean)]))


class Validation(Callback):
    """Adds ``val_psnr`` (mean PSNR of the minimisers of the validation images, cold
    started) to the metrics of every ``every``-th iteration, the initial one included
    (``every=0`` or no validation set: never)."""

    def __init__(self, model, solver, val_set, every: int):
        self.model, self.solver, self.val_set, self.every = model, solver, val_set, int(every)

    def on_iteration_metrics(self, trainer, state, metrics):
        if self.val_set is None or not self.every or state.iteration % self.every:
            return
        ys = denoise_all(self.model, state.theta, self.val_set.noisy, self.solver)
        metrics["val_psnr"] = mean_psnr(ys, self.val_set)


class MLflowLogger(Callback):
    """The metrics of each recorded iteration (step = the iteration) to the run of
    ``tracker`` (:class:`structpred.tracking.mlflow_tracker.Tracker`, which retries and
    keeps what it cannot send); the reason of an interruption or a failure as the tag
    ``structpred.stop_reason``. Starting and ending the run is the application's: the
    final metrics and artifacts come after the loop."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_iteration_end(self, trainer, state, metrics):
        self.tracker.log_metrics(metrics, state.iteration)

    def on_exception(self, trainer, exc):
        if isinstance(exc, (Interrupted, TrainingFailed)):
            self.tracker.set_tags({"structpred.stop_reason": str(exc)[:5000]})


class ProgressBar(Callback):
    """A tqdm bar over outer iterations (on stderr) with the loss, the PSNRs and the inner
    and adjoint iterations; while it is shown, log lines are written above it."""

    def __init__(self, max_iter: int):
        self.max_iter = max_iter
        self.bar = None
        self._scope = contextlib.ExitStack()

    def on_train_start(self, trainer):
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm
        self.bar = tqdm(total=self.max_iter, initial=trainer.state.iteration, desc="outer",
                        unit="it", dynamic_ncols=True)
        # console log lines are written above the bar instead of through it
        self._scope.enter_context(logging_redirect_tqdm())

    def on_iteration_end(self, trainer, state, metrics):
        if self.bar is None or state.iteration == 0:   # 0: the initial parameters, no step
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['train_loss']:.4g}",
                             psnr=f"{metrics['train_psnr']:.2f}",
                             val=f"{metrics.get('val_psnr', float('nan')):.2f}",
                             inner=f"{metrics['inner_iters_mean']:.0f}",
                             cg=f"{metrics['adjoint_iters_mean']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._scope.close()

    def on_train_end(self, trainer, reason):
        self.close()

    def on_exception(self, trainer, exc):
        self.close()


class IterationLog(Callback):
    """One line per recorded iteration (:func:`iteration_line`) in ``train.log`` and on the
    console, whatever the progress setting. Its seconds run from the previous line to this
    one (the step, the validation, the previous iteration's checkpoint)."""

    #: iterations whose mean time gives the ETA
    WINDOW = 10

    def __init__(self, max_iter: int):
        self.max_iter = max_iter
        self.clock = None
        self.recent = collections.deque(maxlen=self.WINDOW)

    def on_train_start(self, trainer):
        self.clock = time.perf_counter()

    def on_iteration_end(self, trainer, state, metrics):
        now = time.perf_counter()
        if state.iteration == 0:
            log.info("%s", iteration_line(0, self.max_iter, metrics))
        else:
            seconds = now - (self.clock if self.clock is not None else now)
            self.recent.append(seconds)
            log.info("%s", iteration_line(state.iteration, self.max_iter, metrics, seconds,
                                          per_iteration=sum(self.recent) / len(self.recent)))
        self.clock = now


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def iteration_line(it: int, max_iter: int, m: dict, seconds: float | None = None, *,
                   per_iteration: float | None = None) -> str:
    """The log line of outer iteration ``it``: loss, PSNRs, gradient norm, inner and adjoint
    iterations (mean/max), evaluations, the seconds of this iteration (``seconds``, with its
    validation; else the step's ``iter_time``), the total and the ETA: ``per_iteration``
    (:class:`IterationLog` passes the mean of this process's last 10 iterations) times the
    iterations left, else the run's mean time per iteration. The run's mean misleads once
    iterations get dearer: at iteration 219 of the foe-48x7-s25 reproduction, resumed on
    twice the data at 175-200 s per iteration, it gave an ETA of 2:24 h for 81 iterations
    (about 4 h)."""
    val = f"{m['val_psnr']:.2f}" if "val_psnr" in m else "-"
    text = (f"iter {it}/{max_iter}: loss {m['train_loss']:.5g}, train PSNR "
            f"{m['train_psnr']:.2f}, val PSNR {val}, |g| {m['grad_norm']:.3g}, inner "
            f"{m['inner_iters_mean']:.1f}/{m['inner_iters_max']:.0f}, adjoint "
            f"{m['adjoint_iters_mean']:.1f}/{m['adjoint_iters_max']:.0f}")
    if "evals" in m:
        text += f", {m['evals']:.0f} evals"
    if it == 0:
        return text + " (initial parameters)"
    elapsed = float(m.get("wall_time", 0.0))
    seconds = float(m.get("iter_time", 0.0) if seconds is None else seconds)
    text += f", {seconds:.2f} s (total {_duration(elapsed)}"
    if max_iter > it:
        rate = elapsed / it if per_iteration is None else per_iteration
        text += f", ETA {_duration(rate * (max_iter - it))}"
    return text + ")"


class Checkpointer(Callback):
    """Writes the checkpoint ``path`` (``last.npz``, the one it replaces kept as
    ``prev.npz``): every ``every`` outer iterations (0: only at the end), at the end, and
    when the loop is interrupted or stopped by the policy (the last accepted state). At the
    end and on a stop it is also logged to the MLflow run (``checkpoints/``).

    A checkpoint holds the optimiser state, the trainer's rejection memory (and the state it
    goes back to, if the optimiser needs it), and as metadata the MLflow run id, the
    metric history, the elapsed time and the resolved ``config``. ``save_warm=False`` drops
    the warm starts (a small file; a resume then costs one cold evaluation); otherwise they
    are fetched from the ``executor`` if it holds them elsewhere (Ray). ``commits``: the
    ``[[first outer iteration, commit], ...]`` of the code that trained the run
    (:mod:`structpred.provenance`), kept in the metadata. A write that fails
    (disk full) is reported and training goes on: the previous file is intact.
    """

    def __init__(self, path, optimizer, *, every: int, save_warm: bool, config: dict,
                 tracker=None, executor=None, commits=None):
        self.path, self.optimizer = Path(path), optimizer
        self.commits = list(commits or [])
        self.every, self.save_warm = int(every), bool(save_warm)
        self.config, self.tracker, self.executor = config, tracker, executor

    def on_iteration_end(self, trainer, state, metrics):
        if self.every and state.iteration and state.iteration % self.every == 0:
            self.save(trainer, state)

    def on_train_end(self, trainer, reason):
        self.save(trainer, trainer.state)
        self.upload()

    def on_exception(self, trainer, exc):
        if isinstance(exc, (Interrupted, TrainingFailed)) and trainer.state is not None:
            self.save(trainer, trainer.state)
            self.upload()

    def upload(self) -> None:
        if self.tracker:
            self.tracker.log_artifact(self.path, "checkpoints")

    def save(self, trainer, state) -> None:
        extra = {}
        if trainer.needs_before and trainer.before is not None:
            extra[BEFORE] = trainer.before
        if not self.save_warm:
            state = replace(state, warm=(None,) * len(state.warm))
            extra = {k: replace(v, warm=(None,) * len(v.warm)) for k, v in extra.items()}
        elif self.executor is not None:
            state = replace(state, warm=self.executor.materialize(state.warm))
            extra = {k: replace(v, warm=self.executor.materialize(v.warm))
                     for k, v in extra.items()}
        meta = {"run_id": self.tracker.run_id if self.tracker else None,
                "history": trainer.history, "elapsed": trainer.elapsed,
                "config": self.config, "trainer": trainer.memory(), "commits": self.commits}
        try:
            save_checkpoint(self.path, self.optimizer.name, state, meta, extra_states=extra)
        except CheckpointError as exc:  # e.g. disk full: keep training, the old file is intact
            log.error("%s", exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
