"""Executors: run many independent jobs, yielding each result as soon as it is ready.

The caller persists every ``(job, result)`` pair as it arrives, so an interrupted run resumes by
skipping jobs whose key is already stored. The interface is deliberately tiny::

    class Executor(Protocol):
        def map(self, fn, jobs, *, progress=None) -> Iterator[tuple[job, result]]: ...

``fn`` must be a picklable top-level function and each job a picklable (dataclass) value, e.g.
:func:`taskreg.trainers.transfer.run_job` and :class:`~taskreg.trainers.transfer.TransferJob`.
Jobs should carry file paths (``.npy`` feature caches) and small references rather than large arrays.

:class:`LocalExecutor` with ``workers=1`` runs in the calling process (results in job order, torch
threads untouched). With ``workers > 1`` it uses a process pool with the 'spawn' start method
(forking a process that has initialised torch's thread pools is unsafe); results arrive in completion order.
Workers never oversubscribe the machine: with ``cpus`` the thread budget (:func:`taskreg.threads.current_budget`:
``--threads``, ``TASKREG_THREADS`` or the CPUs this process may use, affinity and cgroup quota), at most ``cpus``
workers run, each with ``max(1, cpus // workers)`` torch threads (OpenMP/MKL variables set before the worker
imports torch, passive waiting), so ``workers x threads <= cpus``.

:class:`RayExecutor` (optional dependency, ``pip install 'taskreg[ray]'``) runs each job as a Ray
task, on a local Ray runtime it starts itself (``address=None``) or on an existing Ray cluster
(``"auto"``, ``"HOST:6379"`` from a cluster node, ``"ray://HOST:10001"`` from anywhere). Results
come back in completion order, by value. A job's ``feature_paths`` are read by whichever node runs
it, so on a multi-node cluster those files (the registry's cache directory) must be on a filesystem
shared by all nodes, at the same path; on a single machine nothing extra is needed.

Executor specs (:func:`get_executor`, the CLI's ``--executor``): ``local``, ``local:N``, ``ray``
(local Ray runtime, one worker per core), ``ray:N`` (local Ray runtime, N workers), ``ray:auto``,
``ray:HOST:PORT``, ``ray:ray://HOST:PORT``.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.threads import current_budget, set_torch_threads, worker_environment

J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn(job)`` for every job and yields ``(job, result)`` as results become available."""

    def map(self, fn: Callable[[J], R], jobs: Iterable[J], *, progress: Progress = None) -> Iterator[tuple[J, R]]:
        ...


def _init_worker(threads: int) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent answers it (it terminates the pool), so a worker
    # ignores it instead of turning it into a traceback and going on with its next queued job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(worker_environment(threads))  # read by OpenMP/MKL when torch loads, just below
    set_torch_threads(threads, interop=threads)


def _terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool's worker processes now (their jobs' results are not wanted: an interrupted run resumes),
    then shut the pool down without waiting for the jobs they were running."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # Python < 3.14 has no public API
    pool.shutdown(wait=False, cancel_futures=True)  # forgets the processes: read them first
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


class LocalExecutor:
    """Run jobs on this machine: in-process (``workers=1``) or in a spawn-based process pool.

    workers : processes asked for (>= 1); at most ``cpus // threads`` run (``cpus``: the thread budget), so that
        ``self.workers x self.threads <= cpus``; ``self.requested`` keeps the number asked for
    threads : torch threads per worker process (default ``max(1, cpus // workers)``; ignored
        for ``workers=1``, which keeps the caller's setting)
    cpus : the CPU budget (default :func:`taskreg.threads.current_budget`)
    """

    def __init__(self, workers: int = 1, threads: int | None = None, cpus: int | None = None) -> None:
        if workers < 1:
            raise TaskregError(f"workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise TaskregError(f"threads must be >= 1, got {threads}")
        cpus = current_budget() if cpus is None else max(1, cpus)
        self.requested = workers
        self.workers = min(workers, max(1, cpus // (threads or 1)))
        self.threads = threads if threads is not None else max(1, cpus // self.workers)

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers}, threads={self.threads})"

    def map(
        self, fn: Callable[[J], R], jobs: Iterable[J], *, progress: Progress = None
    ) -> Iterator[tuple[J, R]]:
        """Yield ``(job, fn(job))`` for every job; an exception in a job propagates (after the pool
        is shut down), results already yielded stay valid."""
        jobs = list(jobs)
        total = len(jobs)
        if progress is not None:
            progress(0, total)
        if self.workers == 1 or total <= 1:
            for done, job in enumerate(jobs, start=1):
                result = fn(job)
                if progress is not None:
                    progress(done, total)
                yield job, result
            return
        ctx = mp.get_context("spawn")
        pool = cf.ProcessPoolExecutor(
            max_workers=min(self.workers, total), mp_context=ctx, initializer=_init_worker, initargs=(self.threads,)
        )
        try:
            futures: dict[cf.Future[Any], J] = {pool.submit(fn, job): job for job in jobs}
            for done, fut in enumerate(cf.as_completed(futures), start=1):
                result = fut.result()
                if progress is not None:
                    progress(done, total)
                yield futures[fut], result
        except BaseException:
            # Ctrl-C, a failed job or a caller that stopped iterating: waiting for the running jobs would
            # hold the user for as long as the longest of them (28 s was seen for a Taskonomy build).
            _terminate_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------

RAY_MISSING = "the Ray executor needs the 'ray' package, which is not installed: pip install 'taskreg[ray]'"


def _import_ray(local: bool) -> Any:
    """Import ray after setting the environment that keeps it quiet and, for a local runtime, on loopback.

    The variables are only defaults (``setdefault``): a team's own settings win. The two local ones
    are read when ray is imported, so they are set only if ray was not imported earlier in the process.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage statistics
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")  # collapse repeated worker log lines
    if local and "ray" not in sys.modules:  # both are read when ray is imported; changing them later breaks Ray
        # bind the runtime's servers to 127.0.0.1, not to the machine's network address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray's own default for a new local runtime (token authentication), made explicit so it does not warn
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise TaskregError(RAY_MISSING) from None
    return ray


def _run_ray_task(fn: Callable[[Any], Any], job: Any, threads: int) -> bytes:
    """Body of every Ray task: run ``fn(job)`` with ``threads`` torch threads; return the pickled result.

    Returning bytes (unpickled by the driver) gives the caller ordinary writable objects that it owns,
    as with :class:`LocalExecutor`, instead of read-only arrays pinned in Ray's object store.
    """
    set_torch_threads(threads)
    return pickle.dumps(fn(job), protocol=pickle.HIGHEST_PROTOCOL)


class RayExecutor:
    """Run jobs as Ray tasks on a local Ray runtime or on a Ray cluster; yield results as they finish.

    address : None (default) starts a local Ray runtime on this machine (bound to 127.0.0.1, no
        dashboard), stopped by :meth:`close`, at the end of a ``with`` block, or at interpreter exit.
        ``"auto"`` (a cluster started on this machine with ``ray start --head`` or named by
        ``RAY_ADDRESS``), ``"HOST:6379"`` (from a node of the cluster) or ``"ray://HOST:10001"``
        (Ray Client, from any machine) connect to a running cluster; :meth:`close` only disconnects.
    workers : jobs running at once. Local runtime: default one per CPU of the thread budget
        (:func:`taskreg.threads.current_budget`), at most ``budget // threads``, and the runtime is given
        ``workers * threads`` CPUs. Cluster: default the cluster's CPUs // threads.
    threads : torch threads, and Ray CPUs requested, per job; default ``max(1, budget // workers)``
        locally, 1 on a cluster.

    Ray is started (or connected to) by :meth:`start` or the first :meth:`map`, and reused by later
    ones. If ray is already initialised in this process, that runtime is used and left running. The
    package ``taskreg`` (same version), Ray and Python must match on the driver and every cluster
    node, and the files named in jobs (feature caches, a user ``.npz`` dictionary) must be readable at
    the same path on every node.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise TaskregError(f"workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise TaskregError(f"threads must be >= 1, got {threads}")
        self.address = (address or "").strip() or None
        self._ray = _import_ray(local=self.address is None)
        if self.address is None:
            cpus = current_budget()  # as LocalExecutor: workers x threads <= the CPUs this process may use
            self.workers: int | None = min(workers, max(1, cpus // (threads or 1))) if workers else cpus
            self.threads = threads if threads is not None else max(1, cpus // self.workers)
        else:
            self.workers = workers  # None: known once connected (cluster CPUs // threads)
            self.threads = threads if threads is not None else 1
        self._owns_runtime = False

    def __repr__(self) -> str:
        where = self.address or "local runtime"
        return f"RayExecutor(address={where!r}, workers={self.workers}, threads={self.threads})"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> RayExecutor:
        """Start the local runtime or connect to the cluster now (``map`` does it otherwise); idempotent.

        Raises TaskregError if Ray cannot start or the address cannot be reached.
        """
        ray = self._ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                      "ignore_reinit_error": True}
            if self.address is None:  # "local": a new runtime even if `ray start` or RAY_ADDRESS name a cluster
                n_cpus = self.workers * self.threads  # type: ignore[operator]
                kwargs.update(address="local", num_cpus=n_cpus, include_dashboard=False)
            else:
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray runtime"
                why = " ".join(str(exc).split())[:300] or type(exc).__name__  # one line for the CLI
                raise TaskregError(f"cannot start or reach {where}: {why}") from exc
            self._owns_runtime = True
            atexit.register(self.close)
        if self.workers is None:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            self.workers = max(1, int(cpus // self.threads))
        return self

    def close(self) -> None:
        """Stop the local runtime (or disconnect from the cluster) if this executor started it; idempotent."""
        if self._owns_runtime:
            self._owns_runtime = False
            if self._ray.is_initialized():
                self._ray.shutdown()

    def map(
        self, fn: Callable[[J], R], jobs: Iterable[J], *, progress: Progress = None
    ) -> Iterator[tuple[J, R]]:
        """Yield ``(job, fn(job))`` for every job, in completion order.

        At most ``2 * workers`` tasks are submitted ahead. A job that raises TaskregError re-raises it
        here (other exceptions surface as Ray's ``RayTaskError``); the tasks not yet finished are
        cancelled, as they are when the caller stops iterating. Results already yielded stay valid.
        """
        jobs = list(jobs)
        total = len(jobs)
        if progress is not None:
            progress(0, total)
        if not jobs:
            return
        self.start()
        ray = self._ray
        assert self.workers is not None  # set by start()
        task = ray.remote(_run_ray_task).options(num_cpus=self.threads)
        queue = iter(jobs)
        pending: dict[Any, J] = {}

        def submit(n: int) -> None:
            for job in itertools.islice(queue, n):
                pending[task.remote(fn, job, self.threads)] = job

        submit(2 * self.workers)
        try:
            for done in range(1, total + 1):
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    payload = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, TaskregError):
                        raise exc.cause from None
                    raise
                submit(1)
                if progress is not None:
                    progress(done, total)
                yield job, pickle.loads(payload)
        finally:
            if pending and ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref)


# ----------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------


def _worker_count(spec: str, arg: str) -> int:
    try:
        workers = int(arg)
    except ValueError:
        raise TaskregError(f"executor {spec!r}: worker count {arg!r} is not an integer") from None
    if workers < 1:
        raise TaskregError(f"executor {spec!r}: worker count must be >= 1")
    return workers


def get_executor(spec: str) -> LocalExecutor | RayExecutor:
    """Parse an executor spec (the CLI's ``--executor``).

    ``"local"``: in-process, 1 worker. ``"local:N"``: N spawned processes.
    ``"ray"``: a local Ray runtime with one worker per core. ``"ray:N"``: a local Ray runtime with N workers.
    ``"ray:ADDRESS"``: an existing Ray cluster, e.g. ``"ray:auto"``, ``"ray:HOST:6379"``,
    ``"ray:ray://HOST:10001"``. Ray specs raise TaskregError if the ``ray`` package is missing.
    """
    text = (spec or "").strip()
    name, colon, arg = text.partition(":")
    name, arg = name.lower(), arg.strip()
    if name == "local":
        return LocalExecutor(_worker_count(spec, arg)) if colon else LocalExecutor(1)
    if name == "ray":
        if not colon:
            return RayExecutor()
        if not arg:
            raise TaskregError(f"executor {spec!r}: give a worker count or a cluster address after 'ray:'")
        if arg.lstrip("+-").isdigit():
            return RayExecutor(workers=_worker_count(spec, arg))
        return RayExecutor(address=arg)
    raise TaskregError(
        f"unknown executor {spec!r}; use 'local', 'local:N', 'ray', 'ray:N' or 'ray:ADDRESS' (e.g. ray:auto)"
    )


__all__ = ["RAY_MISSING", "Executor", "LocalExecutor", "RayExecutor", "get_executor"]
