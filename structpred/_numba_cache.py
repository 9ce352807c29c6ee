"""Where Numba caches the compiled kernels, decided before any kernel is compiled.

The kernels are ``@njit(cache=True)``. Numba caches a function in a ``__pycache__`` folder
next to its source file, else in ``$XDG_CACHE_HOME/numba`` (``~/.cache/numba``); when neither
is writable (a shared read-only lab install, a container with a read-only HOME) the
decorator itself fails at import ("cannot cache function ...: no locator available").
:func:`configure` runs first thing in ``import structpred``: if ``NUMBA_CACHE_DIR`` is not set
and neither default folder is writable, it points ``NUMBA_CACHE_DIR`` at a writable folder
(``<temporary folder>/structpred-numba-<uid>``) or, if there is none, turns Numba's disk cache
off (kernels compile in every process). Either is said in one logged line.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

log = logging.getLogger("structpred")

#: what :func:`configure` did (None: nothing to do)
NOTE: str | None = None


def writable(folder: str) -> bool:
    """Whether a file can be created in ``folder`` (made if missing). Tried for real:
    permission bits say nothing about read-only mounts, and root ignores them."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _user_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numba")


def _reload_numba_config() -> None:
    if "numba" in sys.modules:   # imported before structpred: re-read the environment
        from numba.core import config
        config.reload_config()


def configure(package_dir: str | None = None) -> str | None:
    """Make sure Numba can cache (or does not try to); returns the note logged, or None."""
    global NOTE
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    in_tree = os.path.join(package_dir, "kernels", "__pycache__")
    if writable(in_tree) or writable(_user_cache()):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = os.path.join(tempfile.gettempdir(), f"structpred-numba-{uid}")
    if writable(fallback):
        os.environ["NUMBA_CACHE_DIR"] = fallback
        _reload_numba_config()
        NOTE = (f"structpred: {package_dir} and {_user_cache()} are not writable; Numba "
                f"caches the compiled kernels in {fallback} (set NUMBA_CACHE_DIR to choose)")
    else:
        from numba.core import dispatcher
        dispatcher.Dispatcher.enable_caching = lambda self: None   # compile in memory
        NOTE = (f"structpred: no writable folder for Numba's cache ({package_dir}, "
                f"{_user_cache()}, {fallback}); kernels are compiled in every process (set "
                "NUMBA_CACHE_DIR to a writable folder)")
    log.warning("%s", NOTE)
    return NOTE
