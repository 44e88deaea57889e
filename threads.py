"""How many threads torch and the BLAS libraries may use here: one budget shared by every command (issue 16).

The budget is the number of CPUs this process may actually run on: its CPU affinity (``os.sched_getaffinity``,
which ``taskset`` and container cpusets narrow) and its cgroup CPU quota (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us / cpu.cfs_period_us``: a container limited to 1.5 CPUs gets 1), floored, at least 1 —
not ``os.cpu_count()``, which counts the host's cores. ``TASKREG_THREADS`` overrides the detected value and the
CLI's ``--threads`` beats ``TASKREG_THREADS``.

:func:`applied` puts the budget into effect: it sets ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads starve
every other process on a small machine: one ranking went from ~1.5 s to 20-65 s next to other load), the OpenMP /
MKL thread counts, and ``OPENBLAS_NUM_THREADS=1`` (OpenBLAS's own threads next to torch's OpenMP pool made one
800 x 1,280 SVD take 14 s instead of 2 s). These variables are read when torch (or numpy) loads, so this must run
before either is imported; torch's intra-op pool then has the budget's size. If torch is already loaded,
``torch.set_num_threads`` is called instead (and ``set_num_interop_threads`` while torch still allows it). Values the
user put in the environment are kept unless ``--threads`` or ``TASKREG_THREADS`` was given. On exit everything is
restored, so an in-process caller (a test's CliRunner) is left as it was.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taskreg.errors import TaskregError

ENV = "TASKREG_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MANAGED_VARS = ("OMP_WAIT_POLICY", *THREAD_VARS, "OPENBLAS_NUM_THREADS")

_current: list[Budget] = []  # the budgets in effect (innermost last), pushed and popped by :func:`applied`


@dataclass(frozen=True)
class Budget:
    """A thread budget: ``threads`` (>= 1) CPUs, and where that number came from (--threads, TASKREG_THREADS or
    detected)."""

    threads: int
    source: str

    @property
    def explicit(self) -> bool:
        return self.source != "detected"


def parse_threads(text: str, what: str) -> int:
    """A positive thread count from ``text``; anything else is a one-line TaskregError naming ``what``."""
    try:
        value = int(text.strip())
    except (ValueError, AttributeError):
        raise TaskregError(f"{what} must be a positive integer (threads), got {text!r}") from None
    if value < 1:
        raise TaskregError(f"{what} must be a positive integer (threads), got {text!r}")
    return value


def affinity_cpus() -> int:
    """The CPUs this process may be scheduled on (``os.cpu_count()`` where affinity is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _membership(text: str) -> list[tuple[str, str]]:
    """``(controllers, path)`` of every line of a /proc/PID/cgroup text (``ID:CONTROLLERS:PATH``)."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def _levels(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup directory of ``path`` under ``mount`` and each of its ancestors up to the mount itself.

    Inside a container the process's path (``/docker/abc``) often does not exist under the mount (the mount is the
    container's own cgroup); the levels that exist are the ones read.
    """
    parts = [p for p in path.strip("/").split("/") if p and p not in (".", "..")]
    for n in range(len(parts), -1, -1):
        level = mount.joinpath(*parts[:n])
        if level.is_dir():
            yield level


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(level: Path) -> float | None:
    """CPUs allowed by ``cpu.max`` (``"max 100000"``: unlimited -> None; ``"200000 100000"`` -> 2.0)."""
    text = _read(level / "cpu.max")
    fields = text.split() if text else []
    if not fields or fields[0] == "max":
        return None
    try:
        quota = float(fields[0])
        period = float(fields[1]) if len(fields) > 1 else 100000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(level: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us / cpu.cfs_period_us`` (quota -1: unlimited -> None)."""
    quota_text, period_text = _read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us")
    try:
        quota, period = float(quota_text or "-1"), float(period_text or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), the tightest along its hierarchy; None when
    unlimited or unknown.

    root : where the cgroup filesystems are mounted (``/sys/fs/cgroup``): cgroup v2's unified hierarchy there
        (``cpu.max``), or v1's ``cpu`` controller in ``root/cpu`` (or ``cpu,cpuacct``), or a v2 hierarchy in
        ``root/unified`` (hybrid mode).
    membership : the text of ``/proc/self/cgroup`` (read when None; tests pass their own).
    """
    if membership is None:
        membership = _read(PROC_SELF_CGROUP) or ""
    entries = _membership(membership) or [("", "/")]
    limits: list[float] = []
    for controllers, path in entries:
        if controllers == "":  # cgroup v2 (or a v1 named hierarchy without controllers: it has no cpu.max)
            mounts = [root, root / "unified"]
            limits += [q for m in mounts for level in _levels(m, path) if (q := _quota_v2(level)) is not None]
        elif "cpu" in controllers.split(","):
            mounts = [root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            limits += [q for m in mounts for level in _levels(m, path) if (q := _quota_v1(level)) is not None]
    return min(limits) if limits else None


def available_cpus(cgroup_root: Path = CGROUP_ROOT, membership: str | None = None) -> int:
    """CPUs available to this process: affinity and the cgroup quota (floored), at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(cgroup_root, membership)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def thread_budget(flag: int | str | None = None, environ: Mapping[str, str] | None = None,
                  cgroup_root: Path = CGROUP_ROOT, membership: str | None = None) -> Budget:
    """The budget: ``flag`` (the CLI's --threads) beats ``TASKREG_THREADS`` beats the detected CPUs.

    A flag or variable that is not a positive integer is a one-line TaskregError.
    """
    if flag is not None:
        value = flag if isinstance(flag, int) and not isinstance(flag, bool) else parse_threads(str(flag), "--threads")
        if value < 1:
            raise TaskregError(f"--threads must be a positive integer (threads), got {flag!r}")
        return Budget(value, "--threads")
    env = os.environ if environ is None else environ
    text = env.get(ENV, "").strip()
    if text:
        return Budget(parse_threads(text, ENV), ENV)
    return Budget(available_cpus(cgroup_root, membership), "detected")


def current_budget() -> int:
    """The budget in effect: the innermost :func:`applied` one, else ``TASKREG_THREADS`` or the detected CPUs."""
    return _current[-1].threads if _current else thread_budget().threads


def intra_op_threads(budget: Budget, environ: Mapping[str, str] | None = None) -> int:
    """torch's intra-op threads for ``budget``: the budget, unless the user set OMP_NUM_THREADS themselves and
    gave no explicit budget (then theirs)."""
    env = os.environ if environ is None else environ
    if not budget.explicit:
        try:
            user = int(env.get("OMP_NUM_THREADS", "").strip())
        except ValueError:
            user = 0
        if user >= 1:
            return user
    return budget.threads


def set_torch_threads(threads: int, interop: int | None = None) -> None:
    """``torch.set_num_threads(threads)``, and ``set_num_interop_threads(interop)`` when torch still allows it (only
    before its inter-op pool has started; later calls raise, and are skipped). Imports torch."""
    import torch

    torch.set_num_threads(threads)
    if interop is not None and torch.get_num_interop_threads() != interop:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError:  # the inter-op pool already started: it keeps its size
            pass


def worker_environment(threads: int) -> dict[str, str]:
    """The variables a worker process running ``threads`` torch threads sets before importing torch."""
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "OPENBLAS_NUM_THREADS": "1",
            **{var: str(threads) for var in THREAD_VARS}}


@contextmanager
def applied(flag: int | str | None = None) -> Iterator[Budget]:
    """Put the thread budget into effect for the block (see the module docstring); yields it, restores on exit.

    Raises TaskregError (before changing anything) for a bad ``flag`` or ``TASKREG_THREADS``.
    """
    budget = thread_budget(flag)
    saved = {var: os.environ.get(var) for var in MANAGED_VARS}
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    threads = intra_op_threads(budget)
    for var in THREAD_VARS:
        if budget.explicit:
            os.environ[var] = str(threads)
        else:
            os.environ.setdefault(var, str(threads))
    if torch is not None:
        set_torch_threads(threads)
    _current.append(budget)
    try:
        yield budget
    finally:
        _current.pop()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if saved_torch is not None:
            set_torch_threads(saved_torch)


__all__ = ["ENV", "Budget", "affinity_cpus", "applied", "available_cpus", "cgroup_cpu_limit", "current_budget",
           "intra_op_threads", "parse_threads", "set_torch_threads", "thread_budget", "worker_environment"]
