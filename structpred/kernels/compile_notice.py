"""One line when the engine is compiling Numba kernels, so a cold first call is never silent.

The first call of a kernel for a new model size, image dtype or kernel kind compiles it (on 2
cores: 30 s to 3.5 min for a cold 48x7x7 model, its L-BFGS loop and its adjoint); later
calls, in this process or any other, load it from the disk cache in well under a second.
Without a word the user of ``sp.minimize`` or ``python -m structpred.denoise`` cannot tell
this from a hang. So a listener on Numba's own ``numba:compile`` event (fired only on a cache
miss, never when a kernel is loaded from disk) starts a timer when the outermost compilation
of one of structpred's kernels begins; if it is still compiling after ``AFTER`` seconds, one
line says so, and a second line gives the time it took once it is done. Quick compilations
(the small helpers) say nothing.

The lines go to the ``structpred`` logger at INFO when logging is configured (the Hydra apps
configure it: ``train.log``), else to stderr, so that a plain Python session sees them too.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

from numba.core import event

log = logging.getLogger("structpred")

AFTER = 3.0          #: seconds of compiling before the first line is said


def _say(msg: str) -> None:
    if logging.getLogger().handlers or log.handlers:
        log.info(msg)
    else:
        print(f"structpred: {msg}", file=sys.stderr, flush=True)


def _ours(ev) -> bool:
    disp = (ev.data or {}).get("dispatcher") if isinstance(ev.data, dict) else None
    mod = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
    if mod.startswith("structpred"):
        return True
    from structpred.kernels.codegen import MARKER  # a generated kernel module
    return bool(getattr(sys.modules.get(mod), MARKER, False))


class _Listener(event.Listener):
    """Counts nested compilations (compiling the L-BFGS loop compiles the energy kernels it
    calls); the timer runs from the outermost start to its end. Numba compiles under one
    global lock, so one compilation runs at a time in a process."""

    def __init__(self, after: float | None = None):
        self.after = after
        self.lock = threading.Lock()
        self.depth = 0
        self.timer: threading.Timer | None = None
        self.t0 = 0.0
        self.said = False

    def _notice(self, name: str) -> None:
        with self.lock:
            if self.depth == 0:
                return
            self.said = True
        from structpred.kernels.codegen import cache_dir
        _say(f"compiling the Numba kernels ({name}): once per model size and kernel kind, "
             f"tens of seconds to a few minutes on 2 cores; later runs load them from the "
             f"disk cache ({cache_dir()})")

    def on_start(self, ev):
        with self.lock:
            self.depth += 1
            if self.depth != 1 or not _ours(ev):
                return
            name = getattr(ev.data["dispatcher"].py_func, "__qualname__", "kernel")
            self.t0, self.said = time.perf_counter(), False
            self.timer = threading.Timer(AFTER if self.after is None else self.after,
                                         self._notice, (name,))
            self.timer.daemon = True
            self.timer.start()

    def on_end(self, ev):
        with self.lock:
            self.depth -= 1
            if self.depth != 0 or self.timer is None:
                return
            self.timer.cancel()
            self.timer, said = None, self.said
            self.said = False
        if said:
            _say(f"compiled in {time.perf_counter() - self.t0:.0f} s (cached on disk)")


LISTENER = _Listener()
_INSTALLED = False


def install() -> None:
    """Register the listener (once per process; :mod:`structpred.kernels` does it)."""
    global _INSTALLED
    if not _INSTALLED:
        event.register("numba:compile", LISTENER)
        _INSTALLED = True
