"""Where the batch objective runs: executors of ``fun(theta, indices, warm) -> (BatchResult,
warm)`` (config group ``executor``).

* :class:`LocalExecutor` (``executor=local``, the default): threads over images in this
  process (:class:`~structpred.training.loop.TrainObjective`, with its per-image
  partial-result cache).
* :class:`RayExecutor` (``executor=ray``): Ray actors, each owning a shard of the training
  pairs. Only theta goes out; each image is one actor task that returns its loss, gradient
  and diagnostics (no images), and the driver sums them in global image order exactly as
  :func:`structpred.objective.batch_loss_and_grad` does, so the loss and gradient are those
  of the local executor (bit for bit on the same machine: same kernels, same order).

Warm starts with Ray: each image's minimiser ``y*`` and adjoint solution ``u`` are the
second return value of its task, kept in Ray's object store of the actor's node and *owned
by the driver*: the driver holds only a reference (:class:`RemoteWarm`), never the arrays
(except to save the per-image partial results, :class:`~structpred.training.loop.
PartialResults`, the local executor's cache, as each image arrives). The next evaluation
passes the reference to the actor that owns the image then, which reads it from the object
store (its own node's, or the node it was computed on after a rebalance). When an actor's
process dies, Ray restarts it (``max_restarts``) and re-runs its tasks
(``max_task_retries``) with the same references, so the re-run gives the same result. A
checkpoint with ``checkpoint.save_warm=true`` fetches them (:meth:`RayExecutor.materialize`);
a resumed run sends them back to the actors once.

Balance: every image's work in its latest evaluation is measured (deterministic counts:
inner evaluations + adjoint iterations, times pixels); at the end of an outer iteration
(:class:`Rebalance`) the shards are reassigned longest-processing-time-first when the
busiest actor's predicted work exceeds the mean by ``executor.imbalance``.

Ray is imported lazily: ``import structpred`` never needs it (``pip install -e ".[ray]"``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from structpred.objective import loss_and_grad_at
from structpred.training.loop import PartialResults, TrainObjective, gather, slim, warm_of
from structpred.training.optimizers import WarmStart
from structpred.training.trainer import Callback

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
@dataclass(frozen=True)
class RemoteWarm:
    """The warm start of image ``index``: a reference to the ``WarmStart`` one Ray task
    returned (owned by the driver, stored on the node of the actor that computed it; the
    driver holds the handle, never the arrays). Whichever actor solves the image next
    reads it from there, so a rebalanced image takes its warm start along."""

    ref: object
    index: int


def _cost(item, pixels: int) -> float:
    """The deterministic work of one image's evaluation: (inner energy+gradient evaluations
    + adjoint iterations, each about one pass of the filters over the image) x pixels."""
    return float(pixels) * (int(getattr(item.solve, "n_evals", 0) or item.solve.iterations)
                            + int(item.adjoint.iterations))


def balance_lpt(costs: dict, num_actors: int, current: Sequence[int]) -> list[int]:
    """Longest-processing-time-first: the images (``{index: cost}``) sorted by decreasing
    cost (ties: lower index first), each to the least-loaded actor (ties: lower actor).
    The new shards are then matched to the actors they overlap most (by cost), so that as
    few images as possible move. Returns the new ``shard_of`` for every image in
    ``current`` (images without a cost keep their actor)."""
    load = [0.0] * num_actors
    bins: list[list[int]] = [[] for _ in range(num_actors)]
    for i in sorted(costs, key=lambda i: (-costs[i], i)):
        k = min(range(num_actors), key=lambda k: (load[k], k))
        bins[k].append(i)
        load[k] += costs[i]
    overlap = sorted(((sum(costs[i] for i in b if current[i] == a), -len(b), n, a)
                      for n, b in enumerate(bins) for a in range(num_actors)), reverse=True)
    label, used = {}, set()
    for _, _, n, a in overlap:
        if n not in label and a not in used:
            label[n] = a
            used.add(a)
    out = list(current)
    for n, b in enumerate(bins):
        for i in b:
            out[i] = label[n]
    return out


class ShardWorker:
    """A Ray actor: solves the images it is sent (one Ray task per image, ``threads`` at
    once), each from the warm start whose reference comes with it. A plain class:
    :class:`RayExecutor` wraps it with ``ray.remote``; tests can use it directly."""

    def __init__(self, model, solver, gradient, threads: int = 1):
        import numba
        self.model, self.solver, self.gradient = model, solver, gradient
        self.threads = max(1, int(threads))
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    @staticmethod
    def _warm(spec):
        """The WarmStart of a spec: None, a WarmStart, or ``[ref]`` (nested in a list so
        that Ray does not resolve it: a lost object then means a cold start, not a failed
        task)."""
        if spec is None or isinstance(spec, WarmStart):
            return spec
        import ray
        try:
            return ray.get(spec[0])   # from this node's object store, or fetched from another
        except Exception as exc:  # noqa: BLE001 - the node holding it is gone
            log.warning("a warm start was lost (%s): cold start", type(exc).__name__)
            return None

    def evaluate(self, theta, pair, spec):
        """``((slim PairResult, seconds), WarmStart)`` of one image at theta (the wall
        seconds of its evaluation on this actor, for the record: the balance uses the
        deterministic counts)."""
        t0 = time.perf_counter()
        x, t = pair
        w = self._warm(spec)
        # serial kernels, one image per thread (the actor runs ``threads`` tasks at once),
        # as batch_loss_and_grad does with threads > 1: the local executor's numbers
        item = loss_and_grad_at(self.model.bind(x, theta, parallel=False), t,
                                solver=self.solver, gradient=self.gradient,
                                y0=None if w is None else w.y,
                                u0=None if w is None else w.adjoint.u)
        return (slim(item), time.perf_counter() - t0), warm_of(item)


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
        try:
            ray.init(address=str(address), log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            from structpred.errors import ConfigError
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                    "; a head started by `ray start --head` uses token authentication by "
                    "default in recent Ray (2.60): set RAY_AUTH_MODE=token (the token in "
                    "~/.ray/auth_token, or RAY_AUTH_TOKEN)")
            raise ConfigError("executor.address", f"cannot connect to Ray at {address!r} "
                              f"({str(exc).splitlines()[0]}){hint}") from None
    else:
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True)
    return True


class RayExecutor:
    """``fun(theta, indices, warm) -> (BatchResult, warm)`` on Ray actors.

    Parameters
    ----------
    model, solver, gradient, pairs : as for :class:`TrainObjective`
    address : None (a local Ray instance), ``"auto"``, ``"host:port"`` or ``"ray://host:port"``
    num_actors : actors (None: the cluster's free CPUs / ``cpus_per_actor``, at most one per
        image)
    cpus_per_actor : Ray CPUs of each actor; its Numba threads and images at once
    num_cpus : CPUs of a local instance (None: the machine's cores)
    max_restarts : restarts of a dead actor (and retries of its tasks)
    on_image : called while waiting (the stop check; it may raise to interrupt)
    partial_dir : the per-image partial results (:class:`PartialResults`, the local
        executor's cache): the driver saves each image's result as it arrives
    rebalance, imbalance : reassign images by measured cost (:meth:`rebalance`) when the
        predicted busiest actor exceeds the mean by the factor ``imbalance``

    Shards: image i starts on actor ``i % num_actors`` (round robin, so that neighbouring
    images, which tend to cost alike, are spread) and stays there until :meth:`rebalance`
    moves it (at an outer-iteration boundary). Each image is one Ray task that returns two
    objects: its slim result (fetched by the driver) and its warm start (left in the object
    store of the actor's node; :class:`RemoteWarm`).
    """

    name = "ray"

    def __init__(self, model, solver, gradient, pairs: Sequence, *, address=None,
                 num_actors: int | None = None, cpus_per_actor: int = 1,
                 num_cpus: int | None = None, max_restarts: int = 3,
                 on_image: Callable | None = None, poll: float = 0.2,
                 partial_dir=None, rebalance: bool = True, imbalance: float = 1.2):
        ray = _ray()
        self.pairs = list(pairs)
        self.on_image, self.poll = on_image, float(poll)
        self.partial = None if partial_dir is None else PartialResults(partial_dir)
        self.balance, self.imbalance = bool(rebalance), float(imbalance)
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
        self.cost: dict[int, float] = {}   #: each image's work in its latest evaluation
        self.seconds: dict[int, float] = {}   #: and its wall seconds on its actor
        self.rebalances: list[dict] = []
        threads = str(cpus)
        env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cls = ray.remote(ShardWorker).options(
            num_cpus=cpus, max_concurrency=cpus, max_restarts=int(max_restarts),
            max_task_retries=int(max_restarts), runtime_env={"env_vars": env})
        # each image in the object store once, referenced here for the executor's
        # lifetime: the actor that solves it reads it from there (fetched to its node once)
        self._pair_refs = [ray.put(p) for p in self.pairs]
        self.actors = [cls.remote(model, solver, gradient, cpus)
                       for _ in range(self.num_actors)]
        self.evaluations = 0
        self.last_indices: list = []
        nodes = self.node_ids()   # (waits until the actors are up)
        log.info("executor=ray: %d actors x %d CPUs on %d node(s) (%s); actor nodes: %s",
                 self.num_actors, cpus, len(set(nodes)),
                 "a local Ray instance" if self.started and not address else
                 f"Ray at {address or 'the running instance'}",
                 ", ".join(n[:8] for n in nodes))

    @property
    def reused(self) -> int:
        """Image results taken from the partial results, in total."""
        return 0 if self.partial is None else self.partial.reused

    # ------------------------------------------------------------------ evaluation
    def pids(self) -> list[int]:
        """The actors' worker process ids (for fault tests)."""
        ray = _ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def node_ids(self) -> list[str]:
        """The Ray node id of each actor."""
        ray = _ray()
        return ray.get([a.node_id.remote() for a in self.actors])

    @staticmethod
    def _spec(w):
        if isinstance(w, RemoteWarm):
            return [w.ref]
        return w   # None or a WarmStart (after a resume or a reused result): arrays, once

    def __call__(self, theta, indices, warm):
        ray = _ray()
        idx = list(range(len(self.pairs))) if indices is None else [int(i) for i in indices]
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        key = PartialResults.key(theta)
        done = {} if self.partial is None else self.partial.load(key, idx)
        theta_ref = ray.put(theta)   # one copy for all actors
        calls = {}
        for i in idx:
            if i in done:
                continue
            item_ref, warm_ref = self.actors[self.shard_of[i]].evaluate.options(
                num_returns=2).remote(theta_ref, self._pair_refs[i], self._spec(warm[i]))
            calls[item_ref] = (i, warm_ref)
        pending = list(calls)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending),
                                          timeout=self.poll)
                for ref in ready:
                    i, warm_ref = calls[ref]
                    item, self.seconds[i] = ray.get(ref)
                    self.cost[i] = _cost(item, np.size(self.pairs[i][0]))
                    if self.partial is not None:
                        # the one cache of both executors: this image's result and warm
                        # start (fetched from its actor's node), saved as it arrives
                        w = ray.get(warm_ref)
                        self.partial.save(key, i, item, w)
                    done[i] = (item, RemoteWarm(warm_ref, i))
                if self.on_image is not None:
                    self.on_image()
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - a running actor task cannot be cancelled
                    pass
            raise
        self.evaluations += 1
        self.last_indices = idx
        return gather(done, idx, warm)

    # ------------------------------------------------------------------ balance
    def loads(self, shard_of=None) -> list[float]:
        """The predicted work of each actor: the sum of its images' latest costs (an image
        not yet measured counts as the mean of those that were)."""
        shard_of = self.shard_of if shard_of is None else shard_of
        mean = float(np.mean(list(self.cost.values()))) if self.cost else 1.0
        load = [0.0] * self.num_actors
        for i, k in enumerate(shard_of):
            load[k] += self.cost.get(i, mean)
        return load

    def rebalance(self) -> dict | None:
        """Between evaluations (the trainer calls it at the end of each outer iteration):
        when the busiest actor's predicted work exceeds the mean by the factor
        ``imbalance``, reassign the images longest-first to the least-loaded actor
        (:func:`balance_lpt`). A moved image's warm start follows it through the object
        store (its next actor reads the reference); the sums stay in image order, so the
        loss and gradient do not change. Returns what it did (and logs one line), or None."""
        if not self.balance or self.num_actors < 2 or not self.cost:
            return None
        before = self.loads()
        ratio = max(before) / (sum(before) / len(before))
        if ratio <= self.imbalance:
            return None
        mean = float(np.mean(list(self.cost.values())))
        costs = {i: self.cost.get(i, mean) for i in range(len(self.pairs))}
        new = balance_lpt(costs, self.num_actors, self.shard_of)
        after = self.loads(new)
        ratio_after = max(after) / (sum(after) / len(after))
        if ratio_after >= ratio:
            return None
        moved = [i for i, (a, b) in enumerate(zip(self.shard_of, new)) if a != b]
        self.shard_of = new
        info = {"moved": len(moved), "images": len(new), "before": ratio,
                "after": ratio_after, "evaluation": self.evaluations}
        self.rebalances.append(info)
        log.info("executor=ray: rebalanced shards: %d of %d images moved (with their warm "
                 "starts); predicted max/mean actor work %.2f -> %.2f", len(moved), len(new),
                 ratio, ratio_after)
        return info

    # ------------------------------------------------------------------ checkpoints
    def materialize(self, warm: tuple) -> tuple:
        """The warm starts as :class:`WarmStart` arrays (fetched from the object store in
        one request), for a checkpoint."""
        ray = _ray()
        remote = [w.ref for w in warm if isinstance(w, RemoteWarm)]
        got = iter(ray.get(remote)) if remote else iter(())
        return tuple(next(got) if isinstance(w, RemoteWarm) else w for w in warm)

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this executor started)."""
        try:
            ray = _ray()
            for a in self.actors:
                ray.kill(a, no_restart=True)
            self.actors, self._pair_refs = [], []
            if self.started and ray.is_initialized():
                ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down; nothing to keep
            log.warning("closing Ray: %s", exc)


class Rebalance(Callback):
    """At the end of each outer iteration, let the executor rebalance its shards (an
    executor without :meth:`RayExecutor.rebalance` is left alone)."""

    def __init__(self, executor):
        self.executor = executor

    def on_iteration_end(self, trainer, state, metrics):
        fn = getattr(self.executor, "rebalance", None)
        last = getattr(trainer.optimizer, "max_iter", None)
        if fn is not None and (last is None or state.iteration < last):   # not after the last
            fn()


def make_executor(cfg, model, solver, gradient, pairs, *, on_image=None, partial_dir=None):
    """The executor ``cfg.executor`` names (``local`` if the config has none)."""
    from omegaconf import OmegaConf
    ex = OmegaConf.select(cfg, "executor")
    name = "local" if ex is None else ex.get("name", "local")
    if name == "local":
        return LocalExecutor(model, solver, gradient, pairs, on_image=on_image,
                             partial_dir=partial_dir)
    return RayExecutor(model, solver, gradient, pairs, address=ex.get("address"),
                       num_actors=ex.get("num_actors"),
                       cpus_per_actor=int(ex.get("cpus_per_actor") or 1),
                       num_cpus=ex.get("num_cpus"), max_restarts=int(ex.get("max_restarts", 3)),
                       on_image=on_image, partial_dir=partial_dir,
                       rebalance=bool(ex.get("rebalance", True)),
                       imbalance=float(ex.get("imbalance", 1.2)))
