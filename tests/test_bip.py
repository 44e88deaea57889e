from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from PIL import Image

from taskreg.errors import TaskregError
from taskreg.selection.affinity_sets import AffinitySet, Transfer, builtin_affinity, builtin_winrates
from taskreg.selection.bip import (
    Policy,
    enumerate_policies,
    evaluate_policy,
    minimum_budget,
    random_feasible_policies,
    random_feasible_policy,
    solve_policy,
)
from taskreg.selection.taxonomy_plots import plot_affinity_matrices, plot_policy


def _random_set(rng: np.random.Generator, n_tasks: int, n_source_only: int, pair_frac: float) -> AffinitySet:
    """A random instance: every target has self, all first-order and some second-order options."""
    tasks = [f"t{i}" for i in range(n_tasks)]
    so = [f"s{i}" for i in range(n_source_only)]
    transfers = []
    for t in tasks:
        opts = [("self",)] + [(s,) for s in tasks + so if s != t]
        opts += [p for p in itertools.combinations(sorted(tasks + so), 2) if rng.random() < pair_frac]
        vals = rng.dirichlet(np.ones(len(opts)))
        transfers += [Transfer(tuple(sorted(o)), t, len(o), float(v)) for o, v in zip(opts, vals, strict=True)]
    return AffinitySet(name="random", transfers=transfers, source_only=tuple(so))


def _check_policy(pol: Policy, aff: AffinitySet, budget: float, cost: dict[str, float] | None = None,
                  free_source_only: bool = False) -> None:
    cost = cost or {}
    so = set(aff.source_only)
    targets = set(pol.targets)
    transfer_targets = [tr.target for tr in pol.transfers]
    # every target exactly once: solved by its own network or by one transfer
    assert sorted(pol.solved_by_self + transfer_targets) == sorted(targets)
    assert len(set(transfer_targets)) == len(transfer_targets)
    assert set(pol.solved_by_self) <= set(pol.supervised)
    assert not set(pol.supervised) & so
    assert set(pol.source_only_used) <= so
    available = set(pol.supervised) | set(pol.source_only_used)
    total = 0.0
    for tr in pol.transfers:
        assert set(tr.sources) - {"pixels"} <= available, tr
        assert len(tr.sources) <= pol.max_order
        assert aff.value(tr.sources, tr.target) == pytest.approx(tr.value)
        total += tr.value
    total += sum(aff.value(["self"], t) for t in pol.solved_by_self)
    used_cost = sum(cost.get(v, 0.0 if free_source_only and v in so else 1.0) for v in available)
    assert used_cost == pytest.approx(pol.cost)
    assert pol.cost <= budget + 1e-9
    if not cost:
        assert pol.objective == pytest.approx(total)


@pytest.mark.parametrize("free", [False, True], ids=["paper budget", "free source-only"])
@pytest.mark.parametrize("seed", range(6))
def test_bip_matches_brute_force(seed: int, free: bool) -> None:
    rng = np.random.default_rng(seed)
    n_tasks = 4 + seed % 3
    aff = _random_set(rng, n_tasks, n_source_only=1 + seed % 2, pair_frac=0.3)
    for max_order in (1, 2):
        for budget in (0, 1, 2, n_tasks):
            ref = enumerate_policies(aff, budget, max_order=max_order, free_source_only=free)
            if not ref:  # nothing is free under the paper's budget: 0 trains nothing, so nothing is solved
                assert not free and budget == 0
                with pytest.raises(TaskregError, match="needs a budget of at least 1"):
                    solve_policy(aff, budget, max_order=max_order, free_source_only=free)
                continue
            pol = solve_policy(aff, budget, max_order=max_order, free_source_only=free)
            assert pol.status == "optimal"
            assert pol.objective == pytest.approx(ref[0].objective, abs=1e-9)
            _check_policy(pol, aff, budget, free_source_only=free)


def test_source_only_tasks_count_against_the_budget_by_default() -> None:
    """The paper's gamma counts every task trained from scratch, source-only ones included (Sec. 3, Fig. 8)."""
    aff = AffinitySet("s", [
        Transfer(("self",), "a", 1, 0.9), Transfer(("c",), "a", 1, 0.6),
        Transfer(("self",), "b", 1, 0.3), Transfer(("c",), "b", 1, 0.7), Transfer(("a",), "b", 1, 0.5),
    ], source_only=("c",))
    paper = solve_policy(aff, 1)  # training c leaves no budget for a: supervise a (0.9 + 0.5)
    assert paper.supervised == ["a"] and paper.source_only_used == [] and paper.cost == 1.0
    assert paper.objective == pytest.approx(1.4)
    free = solve_policy(aff, 1, free_source_only=True)  # c comes free on top of a (0.9 + 0.7)
    assert free.supervised == ["a"] and free.source_only_used == ["c"] and free.cost == 1.0
    assert free.objective == pytest.approx(1.6)
    assert solve_policy(aff, 2).objective == pytest.approx(1.6)  # the paper pays 2 for the same policy
    with pytest.raises(TaskregError, match="needs a budget of at least 1"):
        solve_policy(aff, 0)
    assert solve_policy(aff, 0, free_source_only=True).objective == pytest.approx(1.3)
    assert minimum_budget(aff) == 1.0 and minimum_budget(aff, free_source_only=True) == 0.0
    # an explicit cost beats either default
    assert solve_policy(aff, 0, cost={"c": 0.0}).objective == pytest.approx(1.3)


@pytest.mark.parametrize("seed", range(3))
def test_bip_with_importance_and_cost_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    aff = _random_set(rng, 5, n_source_only=2, pair_frac=0.4)
    importance = {t: float(rng.uniform(0.1, 3.0)) for t in aff.targets}
    cost = {t: float(rng.choice([0.5, 1.0, 2.0])) for t in aff.targets}
    cost["s0"] = 1.0  # a source-only task that must be paid for
    cost["s1"] = 0.0  # and one made free explicitly
    for budget in (0.5, 1.5, 3.0):
        ref = enumerate_policies(aff, budget, max_order=2, importance=importance, cost=cost)
        pol = solve_policy(aff, budget, max_order=2, importance=importance, cost=cost)
        assert pol.objective == pytest.approx(ref[0].objective, abs=1e-9)
        _check_policy(pol, aff, budget, cost)
        expected = sum(importance[t] * aff.value(pol.choice(t), t) for t in pol.targets)
        assert pol.objective == pytest.approx(expected)


def test_target_subset_and_supervised_task_outside_targets() -> None:
    # b is not requested, but it is the only good source for a: it is supervised, not a target
    aff = AffinitySet("s", [
        Transfer(("self",), "a", 1, 0.1), Transfer(("b",), "a", 1, 0.9),
        Transfer(("self",), "b", 1, 0.5), Transfer(("a",), "b", 1, 0.5),
    ], source_only=())
    pol = solve_policy(aff, 1, targets=["a"])
    assert pol.targets == ["a"] and pol.supervised == ["b"] and pol.solved_by_self == []
    assert pol.choice("a") == ("b",) and pol.objective == pytest.approx(0.9)


def test_supervised_target_may_use_a_better_transfer_in_the_papers_variant() -> None:
    # a must be supervised to serve b; a's own network (0.2) loses to transfer c->a (0.8); c is free here
    aff = AffinitySet("s", [
        Transfer(("self",), "a", 1, 0.2), Transfer(("c",), "a", 1, 0.8),
        Transfer(("self",), "b", 1, 0.1), Transfer(("a",), "b", 1, 0.9),
    ], source_only=("c",))
    pol = solve_policy(aff, 1, pin_supervised=False, free_source_only=True)
    assert pol.supervised == ["a"] and pol.source_only_used == ["c"]
    assert pol.choice("a") == ("c",) and pol.choice("b") == ("a",)
    assert pol.objective == pytest.approx(1.7)
    _check_policy(pol, aff, 1, free_source_only=True)
    assert enumerate_policies(aff, 1, pin_supervised=False, free_source_only=True)[0].objective == pytest.approx(1.7)

    # default: a supervised task is solved by its own network, so every target appears exactly once
    pinned = solve_policy(aff, 1, free_source_only=True)
    assert pinned.choice("a") == ("self",) and pinned.choice("b") == ("a",)
    assert pinned.objective == pytest.approx(1.1)
    assert enumerate_policies(aff, 1, free_source_only=True)[0].objective == pytest.approx(1.1)
    transfer_targets = {t.target for t in pinned.transfers}
    assert not transfer_targets & set(pinned.supervised)
    assert transfer_targets | set(pinned.supervised) == set(pinned.targets)


def test_infeasible_budget_names_minimum() -> None:
    aff = builtin_affinity("taskonomy")
    assert minimum_budget(aff, source_only=()) == 1.0
    with pytest.raises(TaskregError, match="at least 1"):
        solve_policy(aff, 0, source_only=())
    small = AffinitySet("s", [Transfer(("self",), "a", 1, 1.0), Transfer(("self",), "b", 1, 1.0)], source_only=())
    with pytest.raises(TaskregError, match="needs a budget of at least 2"):
        solve_policy(small, 1.5)
    with pytest.raises(TaskregError, match="no option of order"):
        solve_policy(AffinitySet("s", [Transfer(("b", "c"), "a", 2, 1.0)], source_only=()), 5, max_order=1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(budget=-1), "budget must be"),
        (dict(budget=float("nan")), "budget must be"),
        (dict(budget=3, targets=["rgb2dept"]), "did you mean rgb2depth"),
        (dict(budget=3, targets=["jigsaw"]), "source-only"),
        (dict(budget=3, importance={"rgb2detph": 2.0}), "importance given for unknown task"),
        (dict(budget=3, importance={"rgb2depth": -2.0}), "must be a finite number >= 0"),
        (dict(budget=3, cost={"normals": 1.0}), "cost given for unknown task"),
        (dict(budget=3, max_order=0), "max_order must be"),
        (dict(budget=3, source_only=["colorisation"]), "did you mean colorization"),
        (dict(budget=3, time_limit=-1), "time_limit"),
    ],
)
def test_argument_errors(kwargs: dict, needle: str) -> None:
    aff = builtin_affinity("taskonomy")
    budget = kwargs.pop("budget")
    with pytest.raises(TaskregError, match=needle):
        solve_policy(aff, budget, **kwargs)


def test_taskonomy_full_every_budget() -> None:
    aff = builtin_affinity("taskonomy")
    n_tasks = len(aff.tasks)
    assert n_tasks == 26
    prev = -math.inf
    best_possible = sum(max(o.value for o in aff.options_for(t)) for t in aff.targets)
    for budget in range(1, n_tasks + 1):
        pol = solve_policy(aff, budget, max_order=2)
        _check_policy(pol, aff, budget)
        assert pol.objective >= prev - 1e-9  # more budget never hurts
        prev = pol.objective
        transfer_targets = {t.target for t in pol.transfers}  # a partition of the targets
        assert not transfer_targets & set(pol.supervised)
        assert transfer_targets | (set(pol.supervised) & set(pol.targets)) == set(pol.targets)
    paper = solve_policy(aff, n_tasks, max_order=2, pin_supervised=False)
    assert paper.objective == pytest.approx(best_possible)  # full budget: every target gets its best option
    assert paper.objective >= pol.objective - 1e-9
    assert len(paper.supervised) >= 18  # at full budget most tasks are supervised


@pytest.mark.parametrize("name", ["taskonomy-16k", "taskonomy-1k"])
def test_other_builtin_sets_solve(name: str) -> None:
    aff = builtin_affinity(name)
    prev = -math.inf
    for budget in (1, 4, 12, len(aff.tasks)):
        pol = solve_policy(aff, budget, max_order=2)
        _check_policy(pol, aff, budget)
        assert pol.objective >= prev - 1e-9
        prev = pol.objective
    pol4 = solve_policy(aff, 4, max_order=4)
    assert pol4.objective >= solve_policy(aff, 4, max_order=2).objective - 1e-9


def test_random_policies_are_feasible_and_not_better_than_bip() -> None:
    aff = builtin_affinity("taskonomy-16k")
    quality = builtin_winrates("taskonomy-16k")
    best = solve_policy(aff, 5, max_order=2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pol = random_feasible_policy(aff, 5, rng, max_order=2)
        _check_policy(pol, aff, 5)
        assert pol.objective <= best.objective + 1e-9
        q = evaluate_policy(pol, quality)
        assert set(q) == set(aff.targets) and all(0 <= v <= 1 for v in q.values())
    a = random_feasible_policy(aff, 5, np.random.default_rng(7), max_order=2)
    b = random_feasible_policy(aff, 5, np.random.default_rng(7), max_order=2)
    assert a == b
    many = random_feasible_policies(aff, 5, 3, np.random.default_rng(7), max_order=2)
    assert len(many) == 3 and many[0] == a
    q = evaluate_policy(best, quality)
    assert all(q[t] == pytest.approx(0.5) for t in best.solved_by_self)


def test_plots_write_pngs(tmp_path) -> None:
    aff = builtin_affinity("taskonomy")
    pol = solve_policy(aff, 4, max_order=2)
    path = tmp_path / "policy.png"
    plot_policy(pol, str(path))
    with Image.open(path) as im:
        assert im.size[0] > 600 and im.size[1] > 400
    wins = builtin_winrates("taskonomy")
    targets, sources, A = aff.first_order_matrix(fill=np.nan)
    _, _, W = wins.first_order_matrix(sources=sources, targets=targets, fill=np.nan)
    path2 = tmp_path / "aff.png"
    plot_affinity_matrices(np.array(W), np.array(A), sources, targets, str(path2))
    assert path2.stat().st_size > 10_000
    with pytest.raises(TaskregError, match="shape"):
        plot_affinity_matrices(np.zeros((2, 2)), np.zeros((2, 2)), sources, targets, str(path2))
