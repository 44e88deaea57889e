"""Honest progress (issue 16): every count the real code paths report has a real total, and a step whose amount
of work is unknown names itself (``describe``, a spinner in the CLI) instead of sitting at ``0/?``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.registry import Registry
from tests.procs import save_random_expert

QUERY = "builtin:digits?classes=6,7&n=40"


class Recorder:
    """A progress callback that keeps every event: ("count", done, total) and ("stage", text)."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def __call__(self, done: int, total: int) -> None:
        self.events.append(("count", done, total))

    def describe(self, text: str) -> None:
        self.events.append(("stage", text))

    def check(self) -> list[tuple[object, ...]]:
        """Every count has a total >= 1 and 0 <= done <= total; something is counted; the first event names a
        stage or counts (never a silent start)."""
        counts = [e for e in self.events if e[0] == "count"]
        assert counts, self.events
        for _, done, total in counts:
            assert isinstance(total, int) and total >= 1 and isinstance(done, int) and 0 <= done <= total, counts
        return counts


@pytest.fixture(scope="module")
def lab(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    d = tmp_path_factory.mktemp("progress")
    root = d / "reg"
    shutil.copytree(registry_template, root)
    reg = Registry.open(root)
    reg.add_probe("default", arch="cifar_resnet8", weights=save_random_expert(d / "probe.pt", 0))
    for name, classes in {"d01": "0,1", "d23": "2,3", "d45": "4,5"}.items():
        reg.add_task(name, f"builtin:digits?classes={classes}&n=40", max_samples=30)
    for i, task in enumerate(("d01", "d23")):
        reg.add_expert(f"e{i}", arch="cifar_resnet8", weights=save_random_expert(d / f"e{i}.pt", i + 1),
                       trained_on=task)
    reg.evaluate()
    return reg


@pytest.mark.parametrize("method", ["asym", "logme", "two-stage"])
def test_select_counts_real_work_with_totals(lab: Registry, method: str) -> None:
    rec = Recorder()
    lab.select(QUERY, method=method, top=2, max_samples=30, progress=rec, shortlist=2)
    counts = rec.check()
    stages = [str(e[1]) for e in rec.events if e[0] == "stage"]
    assert rec.events[0][0] == "stage"  # says what runs before the first count
    if method != "logme":  # an index method: the query's probe pass is counted, then the ranking is named
        assert any(s.startswith("embedding the query") for s in stages), stages
    if method != "asym":  # a forward method: one unit per expert scored
        assert ("count", 2, 2) in counts


def test_model2vec_fit_counts_its_adam_steps(lab: Registry) -> None:
    rec = Recorder()
    lab.fit_model2vec(epochs=7, l2=0.1, progress=rec)
    assert rec.check() == [("count", i, 7) for i in range(8)]


def test_the_cli_bar_shows_a_named_spinner_until_a_real_total_arrives(lab: Registry) -> None:
    from io import StringIO

    from rich.console import Console

    from taskreg.cli import _Bar, _bars, app

    bars = _bars()
    bar = _Bar(bars, "scoring experts")

    def shown() -> str:
        out = Console(file=StringIO(), width=120)
        out.print(bars.get_renderable())
        return out.file.getvalue()  # type: ignore[attr-defined]

    assert "scoring experts" in shown() and "?" not in shown()
    bar.describe("embedding the query")
    assert "scoring experts: embedding the query" in shown() and "?" not in shown()
    bar(3, 7)
    assert "3/7" in shown()
    res = CliRunner().invoke(app, ["--registry", str(lab.root), "select", "--data", QUERY, "--method", "logme",
                                   "--top", "2"])
    assert res.exit_code == 0 and "/?" not in res.output, res.output
