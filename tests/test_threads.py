"""The thread budget (taskreg.threads, issue 16): cgroup quotas and affinity read for real, the precedence
--threads > TASKREG_THREADS > detected, and the CLI putting it into effect before torch loads, leaving no trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.errors import TaskregError
from taskreg.threads import (
    ENV,
    MANAGED_VARS,
    Budget,
    applied,
    available_cpus,
    cgroup_cpu_limit,
    current_budget,
    intra_op_threads,
    thread_budget,
)

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_cpu_max(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/") is None  # unlimited
    write(tmp_path / "cpu.max", "200000 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/") == 2.0
    # the process's own cgroup, deeper in the hierarchy: the tightest level counts
    write(tmp_path / "cpu.max", "max 100000")
    write(tmp_path / "user.slice" / "cpu.max", "max 100000")
    write(tmp_path / "user.slice" / "job" / "cpu.max", "150000 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/user.slice/job") == 1.5
    write(tmp_path / "user.slice" / "cpu.max", "50000 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/user.slice/job") == 0.5
    assert available_cpus(tmp_path, "0::/user.slice/job") == 1  # floored, at least 1
    # a container: its path is not under the mount, which is its own cgroup
    assert cgroup_cpu_limit(tmp_path, "0::/docker/abc123") is None
    write(tmp_path / "cpu.max", "100000 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/docker/abc123") == 1.0
    write(tmp_path / "cpu.max", "garbage")
    assert cgroup_cpu_limit(tmp_path, "0::/docker/abc123") is None


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    membership = "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n"
    assert cgroup_cpu_limit(tmp_path, membership) is None  # nothing mounted
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path, membership) is None
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000")
    assert cgroup_cpu_limit(tmp_path, membership) == 3.0
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "25000")
    write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "50000")
    assert cgroup_cpu_limit(tmp_path, membership) == 0.5
    assert available_cpus(tmp_path, membership) == 1


def test_available_cpus_is_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    write(tmp_path / "cpu.max", f"{(affinity + 4) * 100000} 100000")
    assert available_cpus(tmp_path, "0::/") == affinity
    write(tmp_path / "cpu.max", "150000 100000")
    assert available_cpus(tmp_path, "0::/") == 1


def test_affinity_narrowed_in_a_subprocess(tmp_path: Path) -> None:
    """``taskset``-style affinity: a process pinned to one CPU gets a budget of one."""
    code = ("import os, sys; from pathlib import Path; from taskreg.threads import available_cpus\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "print(available_cpus(Path(sys.argv[1]), '0::/'))\n")
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"


def test_precedence_flag_beats_env_beats_detected(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "100000 100000")  # detected: 1
    assert thread_budget(None, {}, tmp_path, "0::/") == Budget(1, "detected")
    assert thread_budget(None, {ENV: "3"}, tmp_path, "0::/") == Budget(3, ENV)
    assert thread_budget(2, {ENV: "3"}, tmp_path, "0::/") == Budget(2, "--threads")
    assert thread_budget("5", {ENV: "3"}, tmp_path, "0::/") == Budget(5, "--threads")
    assert thread_budget("5", {ENV: "banana"}, tmp_path, "0::/").threads == 5  # the flag wins; the env is not read
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(TaskregError, match=f"^{ENV} must be a positive integer"):
            thread_budget(None, {ENV: bad}, tmp_path, "0::/")
        with pytest.raises(TaskregError, match="^--threads must be a positive integer"):
            thread_budget(bad, {}, tmp_path, "0::/")
    # the user's own OMP_NUM_THREADS is kept unless the budget is explicit
    assert intra_op_threads(Budget(2, "detected"), {"OMP_NUM_THREADS": "1"}) == 1
    assert intra_op_threads(Budget(2, ENV), {"OMP_NUM_THREADS": "1"}) == 2


def test_applied_restores_the_environment() -> None:
    before = {var: os.environ.get(var) for var in MANAGED_VARS}
    with applied(1) as budget:
        assert budget == Budget(1, "--threads") and current_budget() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        assert os.environ["OMP_WAIT_POLICY"] == (before["OMP_WAIT_POLICY"] or "PASSIVE")
    assert {var: os.environ.get(var) for var in MANAGED_VARS} == before


# A command added to the real app in a subprocess: it reports what the command body sees, after the callback ran
# and before torch loads (torch is imported inside, as the CLI's commands do).
PROBE = """
import json, os, sys
from taskreg.cli import app, main
assert 'torch' not in sys.modules and 'numpy' not in sys.modules
if sys.argv[1] == 'pin':
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

@app.command('threads-probe')
def threads_probe() -> None:
    import torch
    print(json.dumps({'torch': torch.get_num_threads(), **{v: os.environ.get(v) for v in
                     ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')}}))

main(sys.argv[2:])
"""


def probe(*args: str, pin: bool = False, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in (*MANAGED_VARS, ENV)}
    out = subprocess.run([sys.executable, "-c", PROBE, "pin" if pin else "-", *args, "threads-probe"],
                         env={**clean, "PYTHONPATH": PACKAGE_PARENT, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_cli_sets_the_budget_before_torch_loads() -> None:
    assert probe(pin=True) == {"torch": 1, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
                               "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert probe("--threads", "2", pin=True)["torch"] == 2  # the flag beats what is detected
    assert probe(pin=True, TASKREG_THREADS="2")["torch"] == 2  # so does the environment variable
    assert probe("--threads", "1", TASKREG_THREADS="2")["torch"] == 1  # and the flag beats the variable
    # the user's own settings are kept when no budget is given explicitly
    kept = probe(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="2")
    assert kept == {"torch": 1, "OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "2"}
    assert probe("--threads", "2", OMP_NUM_THREADS="1")["OMP_NUM_THREADS"] == "2"  # explicit beats it


def test_a_bad_budget_is_one_line_and_in_process_runs_leave_no_trace(tmp_path: Path) -> None:
    from taskreg.cli import app

    before = {var: os.environ.get(var) for var in MANAGED_VARS}
    runner = CliRunner()
    res = runner.invoke(app, ["--threads", "0", "--registry", str(tmp_path / "r"), "init"])
    assert res.exit_code == 2 and res.output.strip() == "error: --threads must be a positive integer (threads), " \
        "got '0'"
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, ["--registry", str(tmp_path / "r"), "init"], env={ENV: "lots"})
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "TASKREG_THREADS" in res.output
    res = runner.invoke(app, ["--threads", "1", "--registry", str(tmp_path / "r"), "init"])
    assert res.exit_code == 0, res.output
    assert {var: os.environ.get(var) for var in MANAGED_VARS} == before


def test_a_bad_budget_does_not_hide_the_help(tmp_path: Path) -> None:
    """`--help` runs nothing, so a bad TASKREG_THREADS must not replace the help with its error; the command
    itself still refuses it."""
    from taskreg.cli import app

    runner = CliRunner()
    for argv in (["select", "--help"], ["task", "--help"], ["task", "add", "--help"]):
        res = runner.invoke(app, argv, env={ENV: "lots"})
        assert res.exit_code == 0 and "Usage: " in res.output and "TASKREG_THREADS" not in res.output, argv
    res = runner.invoke(app, ["--registry", str(tmp_path / "r"), "task", "list"], env={ENV: "lots"})
    assert res.exit_code == 2 and "TASKREG_THREADS" in res.output
