"""Executors: spec parsing, and in-process vs. process-pool vs. local Ray runtime runs of real transfer jobs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from taskreg.errors import TaskregError
from taskreg.threads import applied
from taskreg.trainers import transfer as T
from taskreg.trainers.executors import LocalExecutor, RayExecutor, get_executor
from taskreg.trainers.taskonomy_dictionary import RANDOM_TASK, DictionaryRef

REF = DictionaryRef(tiny=True)
# find_spec, not importorskip: the executor sets Ray's environment (quiet, loopback) before ray is first imported
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'taskreg[ray]')"
)


def test_get_executor() -> None:
    assert get_executor("local").workers == 1
    with applied(4):  # a 4-CPU budget, whatever this machine has
        ex = get_executor("local:2")
        assert isinstance(ex, LocalExecutor) and ex.workers == 2 and ex.threads == 2
        assert get_executor(" LOCAL:3 ").workers == 3
    bad_specs = [("dask", "unknown executor"), ("local:x", "not an integer"), ("local:0", ">= 1"), ("", "unknown"),
                 ("ray:", "worker count or a cluster address"), ("ray:0", ">= 1"), ("ray:-2", ">= 1")]
    for bad, msg in bad_specs:
        with pytest.raises(TaskregError, match=msg):
            get_executor(bad)
    with pytest.raises(TaskregError):
        LocalExecutor(workers=0)


def test_local_workers_never_oversubscribe_the_thread_budget() -> None:
    """workers x threads <= the budget (issue 16): extra workers are not started, threads are split between them,
    and the worker processes really run with that many torch threads, waiting passively."""
    import operator

    with applied(4):
        assert [(e.workers, e.threads) for e in (LocalExecutor(2), LocalExecutor(8), LocalExecutor(3, threads=2))] == [
            (2, 2), (4, 1), (2, 2)]
        assert LocalExecutor(8).requested == 8
        ex = LocalExecutor(2)
        env = dict(ex.map(os.getenv, ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"]))
        assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}
        assert [n for _, n in ex.map(operator.call, [torch.get_num_threads] * 2)] == [2, 2]
    with applied(1):
        assert (get_executor("local:2").workers, get_executor("local:2").threads) == (1, 1)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> list[T.TransferJob]:
    """Deterministic jobs: transfers from the (seeded, untrained) random projection, plus a scratch job."""
    d = REF.load()
    path = tmp_path_factory.mktemp("feats") / "random__image.npy"
    np.save(path, T.encode_for_transfers(T.source_encoder(d, RANDOM_TASK, {}), d, "image"))
    kw = {"epochs": 1, "batch_size": 16, "dictionary": REF}
    return [
        T.TransferJob((RANDOM_TASK,), "edges2d", feature_paths=(str(path),), **kw),
        T.TransferJob((RANDOM_TASK,), "photo", feature_paths=(str(path),), **kw),
        T.TransferJob((RANDOM_TASK,), "orientation", feature_paths=(str(path),), **kw),
        T.TransferJob((), "keypoints2d", "scratch", **kw),
    ]


SELF_JOB = T.TransferJob(("edges2d",), "edges2d", "self", epochs=1, batch_size=16, dictionary=REF)


@pytest.fixture(scope="module")
def serial(jobs: list[T.TransferJob]) -> dict[T.TransferJob, T.TransferResult | T.TaskNetwork]:
    """In-process results of the jobs and of one 'self' job (a TaskNetwork), the reference for other executors."""
    seen: list[tuple[int, int]] = []
    out = dict(LocalExecutor(1).map(T.run_job, [*jobs, SELF_JOB], progress=lambda a, b: seen.append((a, b))))
    n = len(jobs) + 1
    assert seen == [(i, n) for i in range(n + 1)]  # in-process: job order, one call per job after (0, n)
    return out


def _assert_same(a: T.TransferResult | T.TaskNetwork, b: T.TransferResult | T.TaskNetwork) -> None:
    """Same job outcome. Same seed and data; only the torch thread count may differ between the two runs, which
    changes the order of float sums, and those differences grow a little over the training steps."""
    assert type(a) is type(b)
    ra = a.as_result() if isinstance(a, T.TaskNetwork) else a
    rb = b.as_result() if isinstance(b, T.TaskNetwork) else b
    assert (rb.sources, rb.target, rb.kind, rb.order, rb.train_size) == (ra.sources, ra.target, ra.kind, ra.order,
                                                                         ra.train_size)
    assert ra.per_image_loss.shape == (len(REF.load().test_idx),)
    np.testing.assert_allclose(ra.per_image_loss, rb.per_image_loss, rtol=1e-3, atol=1e-5)


def test_one_and_two_workers_agree(jobs: list[T.TransferJob], serial: dict) -> None:
    seen: list[tuple[int, int]] = []
    parallel = dict(get_executor("local:2").map(T.run_job, jobs, progress=lambda a, b: seen.append((a, b))))
    assert seen == [(i, len(jobs)) for i in range(len(jobs) + 1)]
    assert set(parallel) == set(jobs)
    for job in jobs:
        assert isinstance(parallel[job], T.TransferResult)
        _assert_same(serial[job], parallel[job])


def test_errors_propagate(tmp_path: Path) -> None:
    bad = T.TransferJob(("edges2d",), "photo", feature_paths=(str(tmp_path / "missing.npy"),), dictionary=REF)
    with pytest.raises(TaskregError, match="feature cache"):
        list(LocalExecutor(1).map(T.run_job, [bad]))


def test_missing_ray_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the package is not installed
    for spec in ("ray", "ray:2", "ray:auto"):
        with pytest.raises(TaskregError, match=r"pip install 'taskreg\[ray\]'"):
            get_executor(spec)


@needs_ray
def test_get_ray_executor() -> None:
    ex = get_executor("ray")  # constructing does not start Ray
    assert isinstance(ex, RayExecutor) and ex.address is None and ex.workers >= 1 and ex.threads >= 1
    ex = get_executor(" Ray:2 ")
    assert ex.address is None and ex.workers == 2
    assert get_executor("ray:auto").address == "auto"
    assert get_executor("ray:head-node:6379").address == "head-node:6379"
    ex = get_executor("ray:ray://head-node:10001")
    assert ex.address == "ray://head-node:10001" and ex.workers is None and ex.threads == 1
    assert RayExecutor(workers=2, threads=3).threads == 3
    for kwargs in ({"workers": 0}, {"threads": 0}):
        with pytest.raises(TaskregError, match=">= 1"):
            RayExecutor(**kwargs)


@needs_ray
def test_ray_executor_matches_local(jobs: list[T.TransferJob], serial: dict, tmp_path: Path) -> None:
    todo = [*jobs, SELF_JOB]
    seen: list[tuple[int, int]] = []
    with RayExecutor(workers=2) as ex:  # a local Ray runtime with 2 CPUs, 1 torch thread per task
        import ray  # after the executor: it sets Ray's environment before the first import
        results = dict(ex.map(T.run_job, todo, progress=lambda a, b: seen.append((a, b))))
        assert ray.is_initialized()
        # a job's TaskregError reaches the caller as itself (one line), in the same runtime
        bad = T.TransferJob(("edges2d",), "photo", feature_paths=(str(tmp_path / "missing.npy"),), dictionary=REF)
        with pytest.raises(TaskregError, match="cannot read feature cache"):
            list(ex.map(T.run_job, [bad]))
    assert not ray.is_initialized()  # the runtime this executor started is stopped
    assert seen == [(i, len(todo)) for i in range(len(todo) + 1)]
    assert set(results) == set(todo)
    for job in todo:
        _assert_same(serial[job], results[job])
    net = results[SELF_JOB]  # a whole nn.Module came back by value, usable and writable here
    assert isinstance(net, T.TaskNetwork) and net.per_image_loss.flags.writeable
    x = torch.from_numpy(REF.load().input_of("edges2d")[:4])
    with torch.no_grad():
        torch.testing.assert_close(net(x), serial[SELF_JOB](x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c to the group", "SIGINT to the parent"])
def test_sigint_stops_a_local_pool_at_once(group: bool) -> None:
    """A Ctrl-C during a local:N run exits in seconds, not after the running (and queued) jobs finish."""
    import signal
    import subprocess
    import sys
    import time

    # The child starts as a terminal's foreground command does: SIGINT delivered and turned into KeyboardInterrupt.
    # A blocked or ignored SIGINT is inherited through fork and exec, and in the full suite the child was once
    # started with SIGINT not delivered (it then ran its 60 s jobs): the test sets the state it is about.
    script = ("import signal, time\nsignal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from taskreg.trainers.executors import LocalExecutor\n"
              "it = LocalExecutor(workers=2, threads=1).map(time.sleep, [0.01, 60, 60, 60, 60])\n"
              "next(it)\nprint('running', flush=True)\nlist(it)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        time.sleep(1.0)
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert elapsed < 10, elapsed
    assert err.count("KeyboardInterrupt") <= 2, err  # the parent's traceback only, none from the workers
