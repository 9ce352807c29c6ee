"""Who owns the cores: the Numba kernels, not numpy's BLAS. The engine's one thread policy.

The engine's kernels run on Numba's threads. numpy's BLAS (OpenBLAS) keeps its own threads,
which spin for a while after each call; on a 2-core machine the two pools then fight
(measured: single CG iterations and small parallel kernels 10-30x slower, and an 8x3x3
MAP + gradient 2.5x slower after a single ``np.vdot`` woke them). Every entry point of the
engine (a solver's ``minimize``, a gradient method's ``grad``, the objective, the checked
model methods) is decorated with :func:`owns_cores`, which is the only place the policy is
applied:

* BLAS limited to one thread, through one cached :class:`threadpoolctl.ThreadpoolController`.
  The limit is process-wide, so it is reference-counted: the first entry (on any thread)
  applies it, the last exit restores it, and entry points nested in one another or running
  on several threads at once (threads over images) never race on the setting.
* dynamic scheduling of the kernels' row blocks (``numba.set_parallel_chunksize(1)``, a
  per-thread setting, so applied on every entry): when another process preempts one of the
  two threads, the other takes the remaining blocks instead of waiting at the end of every
  parallel pass.

Whether the kernels themselves run parallel (one image at a time, row-parallel kernels) or
serial (one image per thread) is a property of the bound energy
(:meth:`structpred.models.EnergyModel.bind`), decided once by whoever schedules the images.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

_CONTROLLER = None
_LOCK = threading.Lock()
_DEPTH = 0            # entries currently inside the policy, over all threads
_LIMIT = None         # the active threadpoolctl limit (restored when _DEPTH returns to 0)


def _enter_blas():
    global _CONTROLLER, _DEPTH, _LIMIT
    with _LOCK:
        _DEPTH += 1
        if _DEPTH == 1:
            try:
                if _CONTROLLER is None:
                    from threadpoolctl import ThreadpoolController
                    _CONTROLLER = ThreadpoolController()
                _LIMIT = _CONTROLLER.limit(limits=1, user_api="blas")
            except Exception:      # pragma: no cover - threadpoolctl missing or broken
                _LIMIT = None


def _exit_blas():
    global _DEPTH, _LIMIT
    with _LOCK:
        _DEPTH -= 1
        if _DEPTH == 0 and _LIMIT is not None:
            _LIMIT.restore_original_limits()
            _LIMIT = None


@contextlib.contextmanager
def engine_threads():
    """The engine's thread policy inside the block (see the module docstring)."""
    import numba
    old = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(int(os.environ.get("STRUCTPRED_CHUNKSIZE", "1")))
    _enter_blas()
    try:
        yield
    finally:
        _exit_blas()
        numba.set_parallel_chunksize(old)


def owns_cores(fn):
    """Decorator: run ``fn`` under :func:`engine_threads` (the engine's entry points)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with engine_threads():
            return fn(*args, **kwargs)
    return wrapper
