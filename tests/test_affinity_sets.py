from __future__ import annotations

import io
import math

import pytest

from taskreg.errors import TaskregError
from taskreg.selection.affinity_sets import (
    TASKONOMY_SOURCE_ONLY,
    AffinitySet,
    Transfer,
    builtin_affinity,
    builtin_winrates,
    read_affinity_csv,
    write_affinity_csv,
)

GOOD = """sources,target,order,value
self,a,1,0.6
b,a,1,0.3
c b,a,2,0.1
self,b,1,0.7
a,b,1,0.3
"""


def _read(text: str) -> AffinitySet:
    return read_affinity_csv(io.StringIO(text), name="t", source_only=("c",))


def test_read_sorts_sources_and_exposes_tasks() -> None:
    aff = _read(GOOD)
    assert aff.targets == ["a", "b"]
    assert aff.tasks == ["a", "b", "c"]
    assert aff.max_order == 2
    pair = [tr for tr in aff.transfers if tr.order == 2][0]
    assert pair.sources == ("b", "c")
    assert aff.value(["c", "b"], "a") == pytest.approx(0.1)
    assert aff.value(["self"], "b") == pytest.approx(0.7)
    assert aff.value(["c"], "a") is None
    assert [tr.sources for tr in aff.options_for("a", max_order=1)] == [("self",), ("b",)]
    assert aff.options_for("a", max_order=1)[0].is_self


def test_write_read_roundtrip(tmp_path) -> None:
    aff = _read(GOOD)
    path = tmp_path / "aff.csv"
    write_affinity_csv(aff, path)
    back = read_affinity_csv(path, source_only=("c",))
    assert back.name == "aff"
    assert back.transfers == aff.transfers


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("sources,target,order,value\n", "no rows"),
        ("sources,target,value\nb,a,0.3\n", "lacks column(s) order"),
        ("src,tgt,order,value\nb,a,1,0.3\n", "lacks column(s) sources, target"),
        ("sources,target,order,value\nb,a,1,high\n", "not a number"),
        ("sources,target,order,value\nb,a,1,nan\n", "finite"),
        ("sources,target,order,value\nb,a,1,inf\n", "finite"),
        ("sources,target,order,value\nb c,a,1,0.2\n", "order 1 but 2 source"),
        ("sources,target,order,value\nb,a,one,0.2\n", "not an integer"),
        ("sources,target,order,value\nb c,a,2,0.2\nc b,a,2,0.3\n", "duplicate transfer b c -> a"),
        ("sources,target,order,value\nb b,a,2,0.2\n", "repeated source"),
        ("sources,target,order,value\nself b,a,2,0.2\n", "cannot be combined"),
        ("sources,target,order,value\nb,c,1,0.2\n", "source-only"),
    ],
)
def test_validation_errors(text: str, needle: str) -> None:
    with pytest.raises(TaskregError) as err:
        _read(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(TaskregError, match="not found"):
        read_affinity_csv(tmp_path / "nope.csv")


def test_unknown_target_suggests_close_match() -> None:
    aff = builtin_affinity("taskonomy")
    with pytest.raises(TaskregError, match="did you mean rgb2depth"):
        aff.options_for("rgb2dept")


@pytest.mark.parametrize("name, n_tasks", [("taskonomy", 26), ("taskonomy-16k", 27), ("taskonomy-1k", 27)])
def test_builtin_sets_are_normalised(name: str, n_tasks: int) -> None:
    aff = builtin_affinity(name)
    assert len(aff.targets) == 22
    assert len(aff.tasks) == n_tasks
    assert aff.source_only == TASKONOMY_SOURCE_ONLY
    assert not set(aff.targets) & set(aff.source_only)
    for t in aff.targets:
        opts = aff.options_for(t)
        assert any(o.is_self for o in opts), t
        assert math.isclose(sum(o.value for o in opts), 1.0, abs_tol=1e-9), t
        assert all(o.value > 0 for o in opts)


def test_builtin_winrates() -> None:
    quality = builtin_winrates("taskonomy-16k", vs="task")
    gain = builtin_winrates("taskonomy", vs="pixels")
    for t in quality.targets:
        assert quality.value(["self"], t) == pytest.approx(0.5)  # the supervised net ties with itself
    assert all(0.0 <= tr.value <= 1.0 for tr in quality.transfers + gain.transfers)
    assert gain.value(["pixels"], "rgb2depth") is not None
    with pytest.raises(TaskregError, match="vs must be"):
        builtin_winrates("taskonomy", vs="scratch")
    with pytest.raises(TaskregError, match="did you mean taskonomy-16k"):
        builtin_affinity("taskonomy-16")


def test_transfer_dataclass_is_hashable() -> None:
    tr = Transfer(sources=("a", "b"), target="c", order=2, value=0.5)
    assert {tr: 1}[tr] == 1
