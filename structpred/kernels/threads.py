"""Who owns the cores: the Numba kernels, not numpy's BLAS.

The engine's kernels run on Numba's threads. numpy's BLAS (OpenBLAS) keeps its own threads,
which spin for a while after each call; on a 2-core machine the two pools then fight
(measured: single CG iterations and small parallel kernels 10-30x slower). The engine's entry
points (the inner solve, the adjoint) therefore run with BLAS limited to one thread, through
one cached :class:`threadpoolctl.ThreadpoolController` (cheap to re-apply), and with
dynamic scheduling of the kernels' row blocks (``numba.set_parallel_chunksize(1)``, a
per-thread setting): when another process preempts one of the two threads, the other takes
the remaining blocks instead of waiting at the end of every parallel pass.
"""
from __future__ import annotations

import contextlib
import os

_CONTROLLER = None


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread inside the block (no-op if threadpoolctl is missing)."""
    global _CONTROLLER
    try:
        if _CONTROLLER is None:
            from threadpoolctl import ThreadpoolController
            _CONTROLLER = ThreadpoolController()
        ctx = _CONTROLLER.limit(limits=1, user_api="blas")
    except Exception:          # pragma: no cover - threadpoolctl missing or broken
        ctx = contextlib.nullcontext()
    import numba
    old = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(int(os.environ.get("STRUCTPRED_CHUNKSIZE", "1")))
    try:
        with ctx:
            yield
    finally:
        numba.set_parallel_chunksize(old)
