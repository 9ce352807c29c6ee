"""Watching a running inner solve: a small buffer the Numba loop writes, read by a thread.

The L-BFGS loop (:mod:`structpred.solvers._lbfgs_template`) runs without the GIL
(``nogil=True``), so a Python thread can run while it works. Given a :class:`SolveMonitor`
(``LBFGS().minimize(energy, monitor=m)``), the loop writes at every iteration the iteration
count, ``||grad E||``, the energy and the evaluations so far into ``m.buffer`` (9 float64),
and at the start the stopping tolerance and the first gradient norm. It only writes: the
solve's result is the same bit for bit with or without a monitor (``tests/test_monitor.py``).

:class:`InnerProgress` polls the monitors of the solves in progress from one thread and
reports those running longer than ``after`` seconds, with an ETA estimated from the
progress of ``log ||grad E||`` towards ``log tol`` (:class:`EtaEstimator`); ``denoise``,
``evaluate`` and the reproduction table use it.

Overhead: see the comment at :data:`SLOTS`.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from structpred.solvers.result import Status

#: layout of :attr:`SolveMonitor.buffer` (the loop's ``monitor`` argument): the slot
#: numbers are the ones the template writes.
#:
#: Overhead: per iteration the loop writes 4 floats behind one size test (an energy
#: evaluation of this model on this image is ~20 ms); the reader wakes every 0.5 s.
#: Measured with ``python experiments/bench_monitor.py --repeats 5`` on the quiet 2-core
#: machine (the training paused; BSD68 test001, 481x321, the reproduction's FoE 24x5x5 at
#: iteration 112, sigma 25, its solver gtol 1e-4: 414 iterations, 433 evaluations; off/on
#: alternated, medians of 5; results identical bit for bit): wall 12.86 s without, 12.04 s
#: with; CPU 22.10 s / 21.22 s: no measurable cost (earlier runs at load 8-12 had spread
#: 29-46 s per solve in both modes).
SLOTS = {"iteration": 0, "grad_norm": 1, "energy": 2, "evals": 3, "tol": 4,
         "grad_norm0": 5, "state": 6, "status": 7, "maxiter": 8}
SIZE = len(SLOTS)
NOT_STARTED, RUNNING, DONE = 0, 1, 2


@dataclass(frozen=True)
class MonitorState:
    """One reading of a monitor (values may be one iteration apart from each other)."""

    iteration: int
    grad_norm: float
    energy: float
    evals: int
    tol: float
    grad_norm0: float
    maxiter: int
    state: int                  #: NOT_STARTED, RUNNING or DONE
    status: Status | None       #: set when DONE

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def fraction(self) -> float:
        """Progress of ``log ||grad E||`` from the first norm to the tolerance, in [0, 1]."""
        g, g0, tol = self.grad_norm, self.grad_norm0, self.tol
        if not (g > 0 and g0 > 0 and tol > 0) or g0 <= tol:
            return 1.0 if self.state == DONE else 0.0
        return min(1.0, max(0.0, math.log(g0 / g) / math.log(g0 / tol)))


class SolveMonitor:
    """The buffer an inner solve writes while it runs (``minimize(..., monitor=m)``).

    One monitor per solve in progress; :meth:`reset` (or a new monitor) before reusing it.
    Reading it (:meth:`read`) from another thread is safe: the loop writes plain float64
    slots, the iteration last."""

    def __init__(self):
        self.buffer = np.zeros(SIZE)

    def reset(self) -> SolveMonitor:
        self.buffer[:] = 0.0
        return self

    def read(self) -> MonitorState:
        b = self.buffer.copy()
        state = int(b[SLOTS["state"]])
        return MonitorState(
            iteration=int(b[SLOTS["iteration"]]), grad_norm=float(b[SLOTS["grad_norm"]]),
            energy=float(b[SLOTS["energy"]]), evals=int(b[SLOTS["evals"]]),
            tol=float(b[SLOTS["tol"]]), grad_norm0=float(b[SLOTS["grad_norm0"]]),
            maxiter=int(b[SLOTS["maxiter"]]), state=state,
            status=Status(int(b[SLOTS["status"]])) if state == DONE else None)


class EtaEstimator:
    """Seconds left for a solve, from readings of its monitor over time.

    L-BFGS's gradient norm is not monotone, so the progress measure is the log of the
    *smallest* norm so far; its rate is the slope of a least-squares line through the
    readings of the last ``window`` seconds (the whole solve until then), and the ETA is the
    distance to ``log tol`` over that rate, never more than the iterations left to
    ``maxiter`` at the current iteration rate. None while unknown (too few readings, no
    progress yet)."""

    def __init__(self, window: float = 20.0):
        self.window = window
        self.samples: list[tuple[float, float, int]] = []    # (t, log min norm, iteration)
        self.best = math.inf

    def add(self, t: float, s: MonitorState) -> None:
        if s.state == NOT_STARTED or not s.grad_norm > 0 or not math.isfinite(s.grad_norm):
            return
        self.best = min(self.best, s.grad_norm)
        if self.samples and self.samples[-1][2] == s.iteration:
            return
        self.samples.append((t, math.log(self.best), s.iteration))
        while len(self.samples) > 3 and self.samples[-1][0] - self.samples[1][0] > self.window:
            self.samples.pop(0)

    def eta(self, s: MonitorState) -> float | None:
        if len(self.samples) < 3 or not s.tol > 0:
            return None
        t = np.array([p[0] for p in self.samples])
        v = np.array([p[1] for p in self.samples])
        dt = t - t.mean()
        den = float(dt @ dt)
        if den <= 0:
            return None
        slope = float(dt @ (v - v.mean())) / den              # d log||g|| / dt, < 0
        left = math.log(self.best) - math.log(s.tol)
        if left <= 0:
            return 0.0
        eta = -left / slope if slope < 0 else math.inf
        span = t[-1] - t[0]
        its = self.samples[-1][2] - self.samples[0][2]
        if its > 0 and s.maxiter > s.iteration:
            eta = min(eta, (s.maxiter - s.iteration) * span / its)
        return eta if math.isfinite(eta) else None


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(label: str, s: MonitorState, eta: float | None, elapsed: float) -> str:
    """``photo.png: it 153, |grad E| 3.2e-03 -> 1e-04 (62%), 0:21, ETA 0:14``."""
    return (f"{label}: it {s.iteration}, |grad E| {s.grad_norm:.2e} -> {s.tol:.0e} "
            f"({100 * s.fraction:.0f}%), {format_seconds(elapsed)}, ETA {format_seconds(eta)}")


@dataclass
class _Watched:
    label: str
    monitor: SolveMonitor
    start: float
    estimator: EtaEstimator


class InnerProgress:
    """Reports the inner solves in progress that run longer than ``after`` seconds.

    ``with progress.track(label) as monitor: solver.minimize(energy, monitor=monitor)``;
    one polling thread (started with the first ``track``) reads every monitor every
    ``interval`` seconds and calls ``report(lines)`` with one line per long solve (see
    :func:`describe`), or ``report([])`` once when the last long solve ends (to clear a
    postfix). Several solves may be tracked at once (threads over images). The thread is a
    daemon; :meth:`close` (or the ``with`` block of the object) stops it.
    """

    def __init__(self, report, *, after: float = 2.0, interval: float = 0.5):
        self.report, self.after, self.interval = report, after, interval
        self._active: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self._shown = False
        self._next = 0

    @contextlib.contextmanager
    def track(self, label: str):
        m = SolveMonitor()
        with self._lock:
            key = self._next
            self._next += 1
            self._active[key] = _Watched(label, m, time.perf_counter(), EtaEstimator())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="structpred-inner",
                                                daemon=True)
                self._thread.start()
        try:
            yield m
        finally:
            with self._lock:
                self._active.pop(key, None)
            if self._shown:
                self.poll()          # take its line off now, not at the next reading

    def _run(self):
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> list[str]:
        """Read every monitor once and report (the thread's step; callable directly)."""
        with self._poll_lock:
            now = time.perf_counter()
            with self._lock:
                watched = list(self._active.values())
            lines = []
            for w in watched:
                s = w.monitor.read()
                w.estimator.add(now, s)
                if s.running and now - w.start >= self.after:
                    lines.append(describe(w.label, s, w.estimator.eta(s), now - w.start))
            if lines or self._shown:
                self.report(lines)
                self._shown = bool(lines)
            return lines

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def bar_reporter(bar):
    """An :class:`InnerProgress` report that shows the lines as a tqdm bar's postfix."""
    def report(lines):
        bar.set_postfix_str("; ".join(lines))
    return report


def line_reporter(emit, every: float = 10.0):
    """An :class:`InnerProgress` report that emits each line (``print``, ``log.info``) at
    most every ``every`` seconds (for logs and pipes, where a postfix cannot be redrawn)."""
    last = [-math.inf]

    def report(lines):
        now = time.perf_counter()
        if lines and now - last[0] >= every:
            last[0] = now
            for line in lines:
                emit(line)
    return report
