"""A real PostgreSQL cluster and an ``mlflow server --serve-artifacts`` over it on 127.0.0.1, in a temporary directory
(tests/test_tracking_server.py and benchmarks/tracking_server_bench.py). :func:`tracking_server` raises
:class:`Unavailable` with a one-line reason where they cannot start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVER_WAIT = 90.0  # seconds: the first start runs MLflow's migrations on the empty database


class Unavailable(RuntimeError):
    """PostgreSQL or the MLflow server cannot run here (the message says why, in one line)."""


class TrackingServer:
    """The running ``mlflow server``: its URI, its artifact store, and :meth:`stop` / :meth:`start` to kill it (as a
    crash would: SIGKILL to its process group, PostgreSQL and the artifacts stay) and bring it back on the same
    port."""

    def __init__(self, argv: list[str], env: dict[str, str], uri: str, artifacts: Path, log: Path) -> None:
        self.argv, self.env, self.uri, self.artifacts, self.log = argv, env, uri, artifacts, log
        self.proc: subprocess.Popen | None = None
        self._server: tuple[list[str], dict[str, str]] | None = None  # the uvicorn command `mlflow server` ran

    def start(self) -> None:
        """Start the server (if it is not running) and wait until it answers ``/health``.

        The first start runs ``mlflow server``, which checks the database and then runs uvicorn on MLflow's app as
        its child, with the settings in that child's environment; a restart runs that same uvicorn command with the
        same environment directly (the same server, about 3 s sooner: one heavy Python start instead of two)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        argv, env = self._server or (self.argv, self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + SERVER_WAIT
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"mlflow server did not come up: {_last_line(self.log.read_text())}")
            time.sleep(0.2)

    def _record_server_command(self) -> None:
        """Remember the command and environment of the uvicorn process `mlflow server` started (Linux /proc; without
        it a restart runs `mlflow server` again)."""
        assert self.proc is not None
        try:
            (child,) = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")[:-1]
            pairs = [item.split("=", 1) for item in Path(f"/proc/{child}/environ").read_bytes().decode().split("\0")]
        except (OSError, ValueError, UnicodeDecodeError):
            return
        if "uvicorn" in argv:
            self._server = (argv, {k: v for k, v in (pair for pair in pairs if len(pair) == 2)})

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server and every process of its group (default: killed, as a crash would)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        port = int(self.uri.rsplit(":", 1)[1])
        for _ in range(200):  # until the group's server process (uvicorn, a child of `mlflow server`) is gone too
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run it as the ``postgres`` user of Debian's package."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


@contextmanager
def tracking_server() -> Iterator[TrackingServer]:
    """Start PostgreSQL (initdb in a temporary directory, a free port, its socket directory there too), create a
    database, start ``mlflow server`` on it with served artifacts; stop both and remove everything on exit."""
    try:
        import psycopg  # noqa: F401  (the backend store's driver, the `team` extra)
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install 'taskreg[team]')") from None
    tools = {name: _pg_bin(name) for name in ("initdb", "pg_ctl", "createdb")}
    if None in tools.values():
        raise Unavailable(f"PostgreSQL binaries not found ({', '.join(k for k, v in tools.items() if not v)})")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise Unavailable("running as root without runuser to start PostgreSQL as another user")
    base = Path(tempfile.mkdtemp(prefix="taskreg-pg-"))  # not pytest's tmp dir: the postgres user must reach it
    data, sock, pg_port, ml_port = base / "data", base / "sock", free_port(), free_port()
    sock.mkdir()
    pg_started, mlflow = False, None
    try:
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(sock, "postgres")
        init = subprocess.run(_as_postgres([str(tools["initdb"]), "-D", str(data), "-A", "trust", "-U", "taskreg",
                                            "--no-sync"]), capture_output=True, text=True)
        if init.returncode:
            raise Unavailable(f"initdb failed: {_last_line(init.stderr)}")
        start = subprocess.run(_as_postgres([str(tools["pg_ctl"]), "-D", str(data), "-l", str(base / "pg.log"), "-w",
                                             "-o", f"-h 127.0.0.1 -p {pg_port} -k {sock} -F", "start"]),
                               capture_output=True, text=True)
        if start.returncode:
            raise Unavailable(f"PostgreSQL did not start: {_last_line(start.stderr)}")
        pg_started = True
        made = subprocess.run([str(tools["createdb"]), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "taskreg",
                               "mlflow"], capture_output=True, text=True)
        if made.returncode:
            raise Unavailable(f"createdb failed: {_last_line(made.stderr)}")
        artifacts = base / "artifacts"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process: taskreg runs no MLflow jobs
        argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                f"postgresql+psycopg://taskreg@127.0.0.1:{pg_port}/mlflow", "--serve-artifacts",
                "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(ml_port),
                "--workers", "1"]
        mlflow = TrackingServer(argv, env, f"http://127.0.0.1:{ml_port}", artifacts, base / "mlflow.log")
        mlflow.start()
        mlflow._record_server_command()
        yield mlflow
    finally:
        if mlflow is not None:
            mlflow.stop(signal.SIGTERM)
        if pg_started:
            subprocess.run(_as_postgres([str(tools["pg_ctl"]), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
