"""Where the batch objective runs: executors of ``fun(theta, indices, warm) -> (BatchResult,
warm)`` (config group ``executor``).

* :class:`LocalExecutor` (``executor=local``, the default): threads over images in this
  process (:class:`~structpred.training.loop.TrainObjective`, with its per-image
  partial-result cache).
* :class:`RayExecutor` (``executor=ray``): Ray actors, each owning a fixed shard of the
  training pairs. Only theta goes out; each actor returns its images' losses, gradients and
  diagnostics (no images), and the driver sums them in global image order exactly as
  :func:`structpred.objective.batch_loss_and_grad` does, so the loss and gradient are those
  of the local executor (bit for bit on the same machine: same kernels, same order).

Warm starts with Ray: each evaluation's minimisers ``y*`` and adjoint solutions ``u`` stay
on the actor (in memory, for the next evaluation) and in Ray's object store of the actor's
node, as a second return value *owned by the driver*: the driver holds only a reference
(:class:`RemoteWarm`), never the arrays. When an actor's process dies, Ray restarts it
(``max_restarts``) and re-runs its task (``max_task_retries``); the new process reads the
warm starts of the references it is given from the object store, so the re-run gives the same
result. A checkpoint with ``checkpoint.save_warm=true`` fetches them
(:meth:`RayExecutor.materialize`); a resumed run sends them back to the actors once.

Ray is imported lazily: ``import structpred`` never needs it (``pip install -e ".[ray]"``).
"""
from __future__ import annotations

import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from structpred.objective import BatchResult, PairResult, loss_and_grad_at
from structpred.training.loop import TrainObjective
from structpred.training.optimizers import WarmStart

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class LocalExecutor(TrainObjective):
    """Today's objective: threads over images in this process (see :class:`TrainObjective`)."""

    name = "local"

    def materialize(self, warm: tuple) -> tuple:
        """The warm starts as arrays (they already are)."""
        return tuple(warm)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- Ray
class _Version:
    """One Ray evaluation's warm starts: ``refs[k]`` is the object-store reference of actor
    k's ``{image index: WarmStart}``. Alive while some warm tuple refers to it (the
    executor keeps only a weak reference, and tells the actors which versions to keep)."""

    __slots__ = ("id", "refs", "__weakref__")

    def __init__(self, vid: int, refs: dict):
        self.id, self.refs = vid, refs


@dataclass(frozen=True)
class RemoteWarm:
    """The warm start of image ``index`` held by actor ``shard`` (a handle, no arrays)."""

    version: _Version
    shard: int
    index: int


def _slim(item: PairResult) -> PairResult:
    """``item`` without its images (what an actor sends back: loss, gradient, diagnostics)."""
    adjoint = item.adjoint
    if hasattr(adjoint, "u"):
        adjoint = replace(adjoint, u=None)
    return replace(item, y=None, solve=replace(item.solve, y=None, y_ext=None), adjoint=adjoint)


class ShardWorker:
    """A Ray actor's state: its shard of the training pairs and the warm starts of recent
    evaluations (``cache[version][image index]``). A plain class: :class:`RayExecutor`
    wraps it with ``ray.remote``; tests can use it directly."""

    def __init__(self, model, solver, gradient, pairs: dict, threads: int = 1):
        import numba
        self.model, self.solver, self.gradient = model, solver, gradient
        self.pairs = dict(pairs)
        self.threads = max(1, int(threads))
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        self.cache: dict[int, dict[int, WarmStart]] = {}

    def pid(self) -> int:
        return os.getpid()

    def _warm(self, spec):
        """The WarmStart of a spec: None, a WarmStart, or ``(version id, [ref], index)``."""
        if spec is None or isinstance(spec, WarmStart):
            return spec
        vid, ref, i = spec
        if vid not in self.cache:   # a restarted process: read them from the object store
            import ray
            try:
                self.cache[vid] = ray.get(ref[0])
            except Exception as exc:  # noqa: BLE001 - the node holding them is gone
                log.warning("warm starts of evaluation %d lost (%s): cold start",
                            vid, type(exc).__name__)
                self.cache[vid] = {}
        return self.cache[vid].get(i)

    def evaluate(self, theta, indices: list[int], specs: list, keep: list[int], vid: int):
        """``(slim PairResults in the order of indices, {index: WarmStart})`` at theta; keeps
        the new warm starts under ``vid`` and forgets versions not in ``keep``."""
        warm = [self._warm(s) for s in specs]

        def one(j):
            x, t = self.pairs[indices[j]]
            w = warm[j]
            # one image per thread with serial kernels, as batch_loss_and_grad does with
            # threads > 1 (the same kernels as the local executor: the same numbers)
            return loss_and_grad_at(self.model.bind(x, theta, parallel=False), t,
                                    solver=self.solver, gradient=self.gradient,
                                    y0=None if w is None else w.y,
                                    u0=None if w is None else w.adjoint.u)

        if self.threads == 1 or len(indices) == 1:
            items = [one(j) for j in range(len(indices))]
        else:
            with ThreadPoolExecutor(min(self.threads, len(indices))) as pool:
                items = list(pool.map(one, range(len(indices))))
        new = {i: WarmStart(y=it.solve.y_domain, u=getattr(it.adjoint, "u", None))
               for i, it in zip(indices, items)}
        keep = set(keep) | {vid}
        self.cache = {v: c for v, c in self.cache.items() if v in keep}
        self.cache[vid] = new
        return [_slim(it) for it in items], new


def _ray():
    try:
        import ray
    except ImportError:
        from structpred.errors import ConfigError
        raise ConfigError("executor", "executor=ray needs Ray: pip install -e \".[ray]\" "
                          "(or pip install 'ray>=2.9')") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: ``address`` None starts a local instance with ``num_cpus`` (default:
    this machine's cores); ``auto`` or ``ray://host:port`` joins a cluster. Returns whether
    this call connected (False: Ray was already initialised, e.g. by a test or a launcher)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=str(address), log_to_driver=True)
    else:
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True)
    return True


class RayExecutor:
    """``fun(theta, indices, warm) -> (BatchResult, warm)`` on Ray actors.

    Parameters
    ----------
    model, solver, gradient, pairs : as for :class:`TrainObjective`
    address : None (a local Ray instance), ``"auto"`` or ``"ray://host:port"``
    num_actors : actors (None: the cluster's free CPUs / ``cpus_per_actor``, at most one per
        image)
    cpus_per_actor : Ray CPUs of each actor; its Numba threads and image threads
    num_cpus : CPUs of a local instance (None: the machine's cores)
    max_restarts : restarts of a dead actor (and retries of its task)
    on_image : called while waiting (the stop check; it may raise to interrupt)

    Shards are fixed: image i belongs to actor ``i % num_actors`` (round robin, so that
    neighbouring images, which tend to cost alike, are spread over the actors).
    """

    name = "ray"

    def __init__(self, model, solver, gradient, pairs: Sequence, *, address=None,
                 num_actors: int | None = None, cpus_per_actor: int = 1,
                 num_cpus: int | None = None, max_restarts: int = 3,
                 on_image: Callable | None = None, poll: float = 0.2):
        ray = _ray()
        self.pairs = list(pairs)
        self.on_image, self.poll = on_image, float(poll)
        self.started = init_ray(address, num_cpus)
        cpus = max(1, int(cpus_per_actor))
        if num_actors is None:
            # the CPUs free now (inside a Ray task, e.g. a sweep job on hydra/launcher=ray,
            # the job's own CPU is taken: asking for all would leave an actor unscheduled)
            free = int(ray.available_resources().get("CPU", 0))
            total = free or int(ray.cluster_resources().get("CPU", 1))
            num_actors = max(1, total // cpus)
        self.num_actors = max(1, min(int(num_actors), len(self.pairs)))
        self.shard_of = [i % self.num_actors for i in range(len(self.pairs))]
        threads = str(cpus)
        env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cls = ray.remote(ShardWorker).options(
            num_cpus=cpus, max_restarts=int(max_restarts),
            max_task_retries=int(max_restarts), runtime_env={"env_vars": env})
        self.actors = []
        # each shard's images in the object store, referenced here for the executor's
        # lifetime: a restarted actor is constructed again from them (Ray warns that
        # restarts fail if constructor arguments in the object store go out of scope)
        self._shards = []
        for k in range(self.num_actors):
            shard = {i: self.pairs[i] for i in range(len(self.pairs)) if self.shard_of[i] == k}
            self._shards.append(ray.put(shard))
            self.actors.append(cls.remote(model, solver, gradient, self._shards[-1], cpus))
        self._versions: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._next = 0
        self.evaluations = 0
        self.last_indices: list = []
        self.reused = 0
        log.info("executor=ray: %d actors x %d CPUs (%s)", self.num_actors, cpus,
                 "a local Ray instance" if self.started and not address else
                 f"Ray at {address or 'the running instance'}")

    # ------------------------------------------------------------------ evaluation
    def pids(self) -> list[int]:
        """The actors' worker process ids (for fault tests)."""
        ray = _ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def _spec(self, w):
        if isinstance(w, RemoteWarm):
            return (w.version.id, [w.version.refs[w.shard]], w.index)
        return w   # None or a WarmStart (after a resume): sent as arrays, once

    def __call__(self, theta, indices, warm):
        ray = _ray()
        idx = list(range(len(self.pairs))) if indices is None else [int(i) for i in indices]
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        self._next += 1
        vid = self._next
        keep = sorted(self._versions.keys())
        theta_ref = ray.put(theta)   # one copy for all actors
        calls = {}
        for k, actor in enumerate(self.actors):
            mine = [i for i in idx if self.shard_of[i] == k]
            if not mine:
                continue
            specs = [self._spec(warm[i]) for i in mine]
            items_ref, warm_ref = actor.evaluate.options(num_returns=2).remote(
                theta_ref, mine, specs, keep, vid)
            calls[items_ref] = (k, mine, warm_ref)
        done = {}
        pending = list(calls)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending),
                                          timeout=self.poll)
                for ref in ready:
                    k, mine, _ = calls[ref]
                    for i, item in zip(mine, ray.get(ref)):
                        done[i] = item
                if self.on_image is not None:
                    self.on_image()
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - a running actor task cannot be cancelled
                    pass
            raise
        version = _Version(vid, {k: w for _, (k, _, w) in calls.items()})
        self._versions[vid] = version
        res = BatchResult.mean_of([done[i] for i in idx])
        self.evaluations += 1
        self.last_indices = idx
        new = list(warm)
        for i in idx:
            new[i] = RemoteWarm(version, self.shard_of[i], i)
        return res, tuple(new)

    # ------------------------------------------------------------------ checkpoints
    def materialize(self, warm: tuple) -> tuple:
        """The warm starts as :class:`WarmStart` arrays (fetched from the object store, one
        request per version and shard), for a checkpoint."""
        ray = _ray()
        fetched: dict = {}
        out = []
        for w in warm:
            if isinstance(w, RemoteWarm):
                key = (w.version.id, w.shard)
                if key not in fetched:
                    fetched[key] = ray.get(w.version.refs[w.shard])
                w = fetched[key].get(w.index)
            out.append(w)
        return tuple(out)

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this executor started)."""
        try:
            ray = _ray()
            for a in self.actors:
                ray.kill(a, no_restart=True)
            self.actors, self._shards = [], []
            if self.started and ray.is_initialized():
                ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down; nothing to keep
            log.warning("closing Ray: %s", exc)


def make_executor(cfg, model, solver, gradient, pairs, *, on_image=None, partial_dir=None):
    """The executor ``cfg.executor`` names (``local`` if the config has none)."""
    from omegaconf import OmegaConf
    ex = OmegaConf.select(cfg, "executor")
    name = "local" if ex is None else ex.get("name", "local")
    if name == "local":
        return LocalExecutor(model, solver, gradient, pairs, on_image=on_image,
                             partial_dir=partial_dir)
    if partial_dir is not None:
        log.info("executor=ray: no per-image partial results (checkpoint.partial); a killed "
                 "actor's shard is re-run by Ray instead")
    return RayExecutor(model, solver, gradient, pairs, address=ex.get("address"),
                       num_actors=ex.get("num_actors"),
                       cpus_per_actor=int(ex.get("cpus_per_actor") or 1),
                       num_cpus=ex.get("num_cpus"), max_restarts=int(ex.get("max_restarts", 3)),
                       on_image=on_image)
