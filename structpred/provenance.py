"""Which code produced a result: the commit recorded in checkpoints and shipped models.

A shipped model's metadata names "the commit that trained it" (issue 12). A training run may
span sessions and code versions (resumed on another machine, after a fix), so checkpoints
keep the list of ``(first outer iteration, commit)`` segments, one per version of the code
that ran it; ``python -m structpred.reproduce ship`` copies it into the model file.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """The short git commit of the structpred source in use, with ``+dirty`` if a tracked
    file under the package folder differs from it; ``structpred <version>`` for an install
    outside a git checkout (a wheel). Computed once per process: the code a process runs is
    the code it imported at start, whatever is edited later."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=_PKG, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top not in _PKG.parents:      # not our checkout (a wheel inside another repo)
            raise RuntimeError
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(_PKG))
        return sha + ("+dirty" if dirty else "")
    except Exception:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return f"structpred {version('structpred')}"
        except PackageNotFoundError:
            return "unknown"


def extend_commits(commits, iteration: int) -> list:
    """``commits`` (a checkpoint's ``[[first iteration, commit], ...]``, or None) with this
    process's commit appended from ``iteration`` on, unless it is already the last one."""
    out = [list(c) for c in (commits or [])]
    now = code_commit()
    if not out or out[-1][1] != now:
        out.append([int(iteration), now])
    return out


def describe_commits(commits) -> str:
    """``"abc1234"`` for one segment, ``"abc1234 (iterations 0-79), def5678 (80-)"`` for
    several; ``"unknown"`` for none (a checkpoint written before commits were recorded)."""
    commits = [list(c) for c in (commits or [])]
    if not commits:
        return "unknown"
    if len(commits) == 1:
        return str(commits[0][1])
    parts = []
    for (start, sha), nxt in zip(commits, commits[1:] + [None]):
        end = f"{nxt[0] - 1}" if nxt else ""
        parts.append(f"{sha} (iterations {start}-{end})")
    return ", ".join(parts)
