"""Fault injection for the robustness tests and the soak run (README "Robustness").

``python -m structpred.training.faults --kill-at N [--kill-at M ...] -- <train overrides>``
runs ``python -m structpred.train <overrides>`` in this process with the callback
:class:`SignalAt` added to the training loop, which sends this process SIGKILL right after
it completes outer iteration N (before that iteration is checkpointed or logged): the
harshest interruption, with no chance to clean up.

The callback enters through the config like any other (``+callbacks.NAME._target_=...``,
the ``callbacks`` group of ``train.yaml``), so the loop is the one a user runs; tests pass
it to :func:`structpred.training.app.train` directly (with SIGINT or SIGTERM, to test a
clean stop).
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

from structpred.training.trainer import Callback


class SignalAt(Callback):
    """Send ``signum`` (SIGKILL by default; a number or a name such as ``"SIGINT"``) to this
    process when the loop completes any of the outer ``iterations``, right after the
    iteration's metrics are complete and before anything reports or saves them."""

    def __init__(self, iterations, signum=signal.SIGKILL):
        self.iterations = {int(i) for i in iterations}
        self.signum = signal.Signals[signum] if isinstance(signum, str) else \
            signal.Signals(int(signum))

    def on_iteration_end(self, trainer, state, metrics):
        if state.iteration and state.iteration in self.iterations:
            sys.stderr.flush()
            os.kill(os.getpid(), self.signum)


class KillMidEvaluation(Callback):
    """SIGKILL this process in the middle of the evaluation that follows outer iteration
    ``iteration``: once ``images`` new per-image results of it are in ``folder`` (the
    partial results, ``<checkpoint.dir>/partial``), while its other images are still being
    solved. A watcher thread, armed when the iteration ends (before it is checkpointed: the
    kill then lands after that checkpoint, as the next evaluation's files appear only once
    it has started)."""

    def __init__(self, iteration, images, folder, poll=0.002):
        self.iteration, self.images = int(iteration), int(images)
        self.folder, self.poll = Path(folder), float(poll)

    def on_iteration_end(self, trainer, state, metrics):
        if state.iteration != self.iteration:
            return
        old = set(self.folder.glob("*.pkl")) if self.folder.is_dir() else set()

        def watch():
            while True:
                new = set(self.folder.glob("*.pkl")) - old if self.folder.is_dir() else ()
                if len(new) >= self.images:
                    sys.stderr.write(f"fault injector: SIGKILL with {len(new)} image "
                                     "results saved\n")
                    sys.stderr.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(self.poll)
        threading.Thread(target=watch, daemon=True).start()


def overrides(kill_at, mid=None) -> list[str]:
    """The config overrides that add a :class:`SignalAt` with SIGKILL at ``kill_at``."""
    out = []
    if kill_at:
        key = "+callbacks.fault_injector"
        out += [f"{key}._target_=structpred.training.faults.SignalAt",
                f"{key}.iterations=[{','.join(str(int(i)) for i in kill_at)}]"]
    if mid:
        it, images = (int(v) for v in mid.split(":"))
        key = "+callbacks.fault_mid_evaluation"
        out += [f"{key}._target_=structpred.training.faults.KillMidEvaluation",
                f"{key}.iteration={it}", f"{key}.images={images}",
                f"{key}.folder=${{checkpoint.dir}}/partial"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m structpred.training.faults",
                                description=__doc__.splitlines()[0])
    p.add_argument("--kill-at", type=int, action="append", default=[],
                   help="SIGKILL after this outer iteration (repeatable)")
    p.add_argument("--kill-mid", metavar="N:K", default=None,
                   help="SIGKILL in the evaluation after outer iteration N, once K of its "
                        "image results are saved (checkpoint.partial)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then the train overrides")
    args = p.parse_args(argv)
    given = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
    # as ``python -m structpred.train``: the same Hydra application and configs
    sys.argv = ["structpred.train", *given, *overrides(args.kill_at, args.kill_mid)]
    runpy.run_module("structpred.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
