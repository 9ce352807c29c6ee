"""Soak run: train with the fault injector SIGKILLing the process several times, resuming
after each kill, and compare the final parameters with an undisturbed run of the same seed.

    python experiments/soak.py --iters 200 --kills 5            # the issue's soak (long)
    python experiments/soak.py --iters 20 --kills 3 --fast      # +debug=fast images

Each disturbed process is ``python -m structpred.training.faults --kill-at K`` (SIGKILL
right after outer iteration K, before it is checkpointed); the next one resumes from the
run folder. Not a CI test: it prints what it measured and exits non-zero on a mismatch.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def run(args: list[str], out: Path, kill_at: int | None = None) -> tuple[int, float]:
    """One training process; returns (exit status, seconds)."""
    pre = ["-m", "structpred.training.faults"] + (["--kill-at", str(kill_at)] if kill_at else [])
    cmd = [sys.executable, *pre, "--", *args, f"paths.output_dir={out}", "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode not in (0, -9):
        sys.stderr.write(res.stderr[-3000:])
    return res.returncode, time.perf_counter() - t0


def final_theta(out: Path) -> np.ndarray:
    from structpred.tracking.model_io import read_model_file
    return read_model_file(out / "structpred_model.npz").theta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=200, help="outer iterations")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs, evenly spread")
    p.add_argument("--every", type=int, default=5, help="checkpoint.every")
    p.add_argument("--fast", action="store_true", help="+debug=fast images")
    p.add_argument("--out", type=Path, default=None, help="folder (default: a temporary one)")
    a = p.parse_args()
    base = ["+experiment=denoise", f"optimizer.max_iter={a.iters}", f"checkpoint.every={a.every}",
            "tracking.enabled=false", "optimizer.ftol=0", "optimizer.gtol=0"]
    if a.fast:
        base.append("+debug=fast")
    out = a.out or Path(tempfile.mkdtemp(prefix="structpred-soak-"))
    ref, soak = out / "undisturbed", out / "killed"
    rc, t_ref = run(base, ref)
    print(f"undisturbed: exit {rc}, {t_ref:.1f} s")
    kills = [round(a.iters * (k + 1) / (a.kills + 1)) for k in range(a.kills)]
    kills = sorted({k for k in kills if 0 < k < a.iters})
    for i, k in enumerate(kills):
        extra = [f"resume={soak}"] if i else []
        rc, t = run(base + extra, soak, kill_at=k)
        print(f"kill at iteration {k}: exit {rc} ({'SIGKILL' if rc == -9 else 'no kill'}), "
              f"{t:.1f} s")
    rc, t = run(base + [f"resume={soak}"], soak)
    print(f"final resume: exit {rc}, {t:.1f} s")
    from structpred.training.checkpoint import load_checkpoint
    its = [load_checkpoint(d / "checkpoints" / "last.npz")[1].iteration for d in (ref, soak)]
    print(f"outer iterations done: undisturbed {its[0]}, killed/resumed {its[1]}")
    a_, b_ = final_theta(ref), final_theta(soak)
    diff = float(np.max(np.abs(a_ - b_)))
    print(f"{len(kills)} kills at {kills}; {a_.size} parameters; max |theta_killed - "
          f"theta_undisturbed| = {diff:.3e}; bit-identical: {bool(np.array_equal(a_, b_))}")
    return 0 if diff <= 1e-12 * max(1.0, float(np.max(np.abs(a_)))) else 1


if __name__ == "__main__":
    raise SystemExit(main())
