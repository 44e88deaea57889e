"""Real ``taskreg`` processes for the crash and concurrency tests, started in milliseconds.

A fresh ``taskreg`` spends seconds importing torch, mlflow, duckdb and faiss before it touches the
registry, so killing fresh processes at random delays would mostly hit the imports, and starting
eight of them at once would mostly measure the import. A *fork server* imports everything once and
then forks one child per command. Each child runs the real CLI entry point
(``taskreg.cli.main(argv)``) as its own OS process: its own pid, file descriptors, registry lock,
DuckDB and sqlite connections; it is killed with SIGKILL like any ``taskreg`` process. Children run
with one OpenMP thread (``OMP_NUM_THREADS=1``) so that several of them share two cores politely.

Also here: a tiny probe registry shared by the process tests (a cifar_resnet8 probe trained for one
epoch on 300 digits; conftest's session fixture ``probe_template`` builds it once a session and
``copy_registry`` copies it), and raw, repair-free views of a registry's state (DuckDB read-only,
sqlite, index manifests) to tell which phase a killed command reached.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER = r"""
import json, os, sys, time, traceback
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import numpy, torch, duckdb, faiss, sqlalchemy, alembic  # noqa: F401  the heavy imports, done once
import mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
from mlflow.tracking import MlflowClient  # noqa: F401
import taskreg.cli
from taskreg.data import load as load_dataset
from taskreg.registry import Registry
import taskreg.embedders.task2vec, taskreg.embedders.probes, taskreg.trainers.experts  # noqa: F401
import taskreg.selection.affinity_sets  # noqa: F401
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (seconds)

for source in json.loads(sys.argv[1]):
    load_dataset(source)  # builtin arrays are cached in-process: every child inherits them
if sys.argv[2]:
    try:
        taskreg.cli.main(["--registry", sys.argv[2], "check"])  # imports MLflow's store code; on a scratch copy
    except SystemExit:
        pass
print("ready", flush=True)

for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0)
                fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 1)
                fd = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 2)
                os.environ.update(req["env"])
                if req.get("prelude"):  # test code run in the child first (e.g. a hook that stops a server)
                    exec(req["prelude"], {})
                try:
                    taskreg.cli.main(req["argv"])
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif req["op"] == "wait":
        deadline = time.monotonic() + req["timeout"]
        code = None
        while True:
            done, status = os.waitpid(req["pid"], os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        print(json.dumps({"code": code}), flush=True)
"""

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "1"}


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


class Child:
    """One forked ``taskreg`` process."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path) -> None:
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.code: int | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def running(self) -> bool:
        """Still running (not exited; an exited child stays a zombie until :meth:`wait` reaps it)."""
        try:
            state = Path(f"/proc/{self.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return self.code is None
        return self.code is None and state != b"Z"

    def wait(self, timeout: float = 300.0) -> Done:
        """Reap the child; its exit code is negative (-9) when it was killed."""
        if self.code is None:
            self.code = self.server._request({"op": "wait", "pid": self.pid, "timeout": timeout})["code"]
            if self.code is None:
                self.kill()
                self.server._request({"op": "wait", "pid": self.pid, "timeout": 30})
                raise AssertionError(f"taskreg child {self.pid} did not finish within {timeout} s")
        return Done(self.code, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))


class ForkServer:
    """Start with the builtin sources the children will load and, optionally, a registry to warm up on
    (a scratch copy is made; the original is not touched)."""

    def __init__(self, warm_sources: tuple[str, ...] = (), warm_registry: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="taskreg-forkserver-"))
        scratch = ""
        if warm_registry is not None:
            shutil.copytree(warm_registry, self.tmp / "warm")
            scratch = str(self.tmp / "warm")
        env = {**os.environ, **CHILD_ENV}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(list(warm_sources)), scratch],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                     cwd=self.tmp)
        line = self.proc.stdout.readline()
        while line and line.strip() != "ready":  # the warm-up `check` prints its own lines first
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the taskreg fork server did not start")
        self.count = 0

    def _request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, prelude: str = "") -> Child:
        """Fork a child that runs ``taskreg argv`` with ``env`` added, after executing the Python code ``prelude``."""
        self.count += 1
        out, err = self.tmp / f"{self.count}.out", self.tmp / f"{self.count}.err"
        pid = self._request({"op": "spawn", "argv": [str(a) for a in argv], "env": env or {}, "out": str(out),
                             "err": str(err), "prelude": prelude})["pid"]
        return Child(self, pid, out, err)

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300.0,
            prelude: str = "") -> Done:
        return self.spawn(argv, env, prelude).wait(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- a tiny probe registry

PROBE_SOURCES = ("builtin:digits?n=300",)


def make_probe_registry(template: Path, root: Path) -> Path:
    """Copy the empty ``template`` registry to ``root`` and register the tiny default probe."""
    from taskreg.registry import Registry

    shutil.copytree(template, root)
    Registry.open(root).train_probe("default", arch="cifar_resnet8", epochs=1, sources=PROBE_SOURCES)
    return root


def copy_registry(source: Path, root: Path) -> Path:
    """A private copy of a built registry (e.g. the session's ``probe_template``) at ``root``, opened once: the
    first open of a copy points MLflow's artifact paths at it, which would otherwise show up in 'registry
    unchanged' checks."""
    from taskreg.registry import Registry

    shutil.copytree(source, root)
    Registry.open(root)
    return root


def save_random_expert(path: Path, seed: int = 0) -> Path:
    """A cifar_resnet8 state_dict (random weights, 10 classes) for ``expert add``."""
    import torch

    from taskreg.embedders.probes import create_model

    torch.manual_seed(seed)
    torch.save(create_model("cifar_resnet8", num_classes=10).state_dict(), path)
    return path


# --------------------------------------------------------------------------- raw views of a registry

def catalog_rows(root: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Run a query on the catalog read-only (no Registry.open, so nothing is repaired first)."""
    import duckdb

    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def mlflow_rows(root: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(root / "mlflow.db", timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def runs_named(root: Path, name: str) -> list[tuple[str, str]]:
    """(run id, 'pending' | 'committed') of the active MLflow runs called ``name``."""
    return mlflow_rows(root, "SELECT r.run_uuid, coalesce(t.value, 'committed') FROM runs r LEFT JOIN tags t "
                             "ON t.run_uuid = r.run_uuid AND t.key = 'taskreg.state' "
                             "WHERE r.name = ? AND r.lifecycle_stage = 'active'", (name,))


def run_state(root: Path, run_id: str) -> str | None:
    """'pending' | 'committed' | 'deleted', None for an unknown run."""
    rows = mlflow_rows(root, "SELECT r.lifecycle_stage, coalesce(t.value, 'committed') FROM runs r LEFT JOIN tags t "
                             "ON t.run_uuid = r.run_uuid AND t.key = 'taskreg.state' WHERE r.run_uuid = ?", (run_id,))
    if not rows:
        return None
    return "deleted" if rows[0][0] == "deleted" else rows[0][1]


def registered_models(root: Path) -> set[str]:
    return {r[0] for r in mlflow_rows(root, "SELECT name FROM registered_models")}


def index_fresh(root: Path, kind: str) -> bool:
    """Whether the persisted index of ``kind`` matches the catalog (generation and vector count)."""
    stem = kind.replace("/", "__")
    gen = catalog_rows(root, "SELECT generation FROM index_state WHERE kind = ?", [kind])
    family, probe, method = kind.split("/")
    table, key = ("task_embeddings", "task_id") if family == "task" else ("model2vec", "expert_id")
    count = catalog_rows(root, f"SELECT count(*) FROM {table} WHERE probe = ? AND method = ?", [probe, method])[0][0]
    manifest = root / "index" / f"{stem}.json"
    if count == 0:
        return not manifest.exists()
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    faiss_file = root / "index" / f"{stem}.faiss"
    return (bool(gen) and m["generation"] == gen[0][0] and m["ntotal"] == count and faiss_file.exists()
            and faiss_file.stat().st_size == m["file_size"])


def index_ids(root: Path, kind: str) -> set[int]:
    """Catalog ids held by the persisted Faiss index of ``kind`` (empty when there is none)."""
    import faiss
    import numpy as np

    path = root / "index" / f"{kind.replace('/', '__')}.faiss"
    if not path.exists():
        return set()
    index = faiss.read_index(str(path))
    return {int(i) for i in np.asarray(faiss.vector_to_array(faiss.downcast_index(index).id_map))}


RECORD_RUN_KINDS = ("task_embedding", "expert", "probe", "task_network")


def assert_whole(root: Path) -> None:
    """After `check --fix`: every record is whole and nothing of a partial one is left anywhere."""
    referenced = {r[0] for r in catalog_rows(
        root, "SELECT run_id FROM task_embeddings UNION ALL SELECT run_id FROM experts UNION ALL "
              "SELECT run_id FROM probes UNION ALL SELECT run_id FROM transfers") if r[0]}
    for run_id in referenced:
        assert run_state(root, run_id) == "committed", f"catalog references run {run_id}: {run_state(root, run_id)}"
    active = mlflow_rows(root, "SELECT r.run_uuid, coalesce(s.value, 'committed'), k.value FROM runs r "
                               "LEFT JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'taskreg.state' "
                               "LEFT JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'taskreg.kind' "
                               "WHERE r.lifecycle_stage = 'active'")
    for run_id, state, kind in active:
        assert state == "committed", f"run {run_id} is still {state} after check --fix"
        assert run_id in referenced or kind not in RECORD_RUN_KINDS, f"run {run_id} ({kind}) has no catalog row"
    experts = {f"expert-{r[0]}" for r in catalog_rows(root, "SELECT name FROM experts")}
    assert {m for m in registered_models(root) if m.startswith("expert-")} == experts
    for (kind,) in catalog_rows(root, "SELECT kind FROM index_state"):
        assert index_fresh(root, kind), f"index {kind} is stale after check"
        if kind.startswith("task/"):
            ids = {r[0] for r in catalog_rows(root, "SELECT task_id FROM task_embeddings WHERE probe = ? AND "
                                                    "method = ?", kind.split("/")[1:])}
            assert index_ids(root, kind) == ids
    assert not list((root / "index").glob("*.tmp"))
