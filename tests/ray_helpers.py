"""Test doubles shipped to Ray actors (pickled by value: the workers cannot import tests/)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import structpred as sp


@dataclass(frozen=True)
class MarkedLBFGS(sp.LBFGS):
    """The inner L-BFGS, unchanged, but each solve first leaves ``<marks>/<pid>`` and waits
    ``pause`` seconds: a test sees that a process is inside an evaluation, and has time to
    kill it there. The numbers are those of :class:`structpred.LBFGS`."""

    marks: str = ""
    pause: float = 0.0

    def minimize(self, problem, x=None, theta=None, *, y0=None):
        if self.marks:
            Path(self.marks, str(os.getpid())).touch()
        time.sleep(self.pause)
        return super().minimize(problem, x, theta, y0=y0)
