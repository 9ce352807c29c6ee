"""Fault injection for the robustness tests and the soak run (README "Robustness").

``python -m structpred.training.faults --kill-at N [--kill-at M ...] -- <train overrides>``
runs ``python -m structpred.train <overrides>`` in this process and sends itself SIGKILL
right after completing outer iteration N (before that iteration is checkpointed or logged):
the harshest interruption, with no chance to clean up. Nothing here is imported by the
training application itself.
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys


def kill_at(iterations) -> None:
    """Make the outer loop SIGKILL this process once it completes any of ``iterations``."""
    import structpred.training.loop as loop
    targets = {int(i) for i in iterations}
    real = loop.step_metrics

    def step_metrics(state, elapsed, iter_time):
        if state.iteration in targets:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(state, elapsed, iter_time)
    loop.step_metrics = step_metrics


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m structpred.training.faults",
                                description=__doc__.splitlines()[0])
    p.add_argument("--kill-at", type=int, action="append", default=[],
                   help="SIGKILL after this outer iteration (repeatable)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then the train overrides")
    args = p.parse_args(argv)
    overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
    kill_at(args.kill_at)
    # as ``python -m structpred.train``, so Hydra finds the configs beside that module
    sys.argv = ["structpred.train", *overrides]
    runpy.run_module("structpred.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
