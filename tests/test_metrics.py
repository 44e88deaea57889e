"""Model-selection metrics on hand-made error matrices."""

from __future__ import annotations

import numpy as np
import pytest

from taskreg.errors import TaskregError
from taskreg.selection.metrics import (
    SelectionReport,
    chance_relative_error_increase,
    evaluate_rankings,
    oracle_rankings,
    ranking_to_scores,
    relative_error_increase,
    topk_hit,
    weighted_kendall_tau,
)

# 3 tasks x 4 experts
ERRORS = np.array(
    [
        [0.10, 0.20, 0.40, 0.30],  # best 0, then 1, 3, 2
        [0.50, 0.25, 0.30, 0.60],  # best 1, then 2, 0, 3
        [0.20, 0.40, 0.40, 0.05],  # best 3, then 0, then 1/2 tied
    ]
)


def test_relative_error_increase_by_hand() -> None:
    # (0.2-0.1)/0.1 = 1, (0.25-0.25)/0.25 = 0, (0.4-0.05)/0.05 = 7  ->  mean 8/3
    assert relative_error_increase([0.2, 0.25, 0.4], [0.1, 0.25, 0.05]) == pytest.approx(8 / 3)
    assert relative_error_increase([0.3], [0.3]) == 0.0


def test_relative_error_increase_zero_oracle_is_floored() -> None:
    assert relative_error_increase([0.0], [0.0]) == 0.0
    assert relative_error_increase([0.01], [0.0]) == pytest.approx(10.0)  # 0.01 / 1e-3
    assert relative_error_increase([0.01], [0.0], min_oracle_error=0.01) == pytest.approx(1.0)


def test_topk_hit() -> None:
    assert topk_hit([0, 1, 2, 3], ERRORS[0], 1)
    assert not topk_hit([1, 0, 2, 3], ERRORS[0], 1)
    assert topk_hit([1, 0, 2, 3], ERRORS[0], 2)
    assert not topk_hit([2, 1], ERRORS[0], 5)  # partial ranking that misses the best
    assert topk_hit([1, 2], np.array([0.3, 0.1, 0.1]), 1)  # ties: either best expert counts


def test_weighted_kendall_tau_sign_and_weighting() -> None:
    err = ERRORS[0]
    assert weighted_kendall_tau(err, err) == pytest.approx(1.0)  # distances equal to errors: perfect
    assert weighted_kendall_tau(-err, err) == pytest.approx(-1.0)  # reversed
    assert weighted_kendall_tau(1 - err, err, higher_is_better=True) == pytest.approx(1.0)
    # swapping the two best experts costs more than swapping the two worst ones
    swap_top = np.array([0.20, 0.10, 0.40, 0.30])
    swap_bottom = np.array([0.10, 0.20, 0.30, 0.40])
    assert weighted_kendall_tau(swap_top, err) < weighted_kendall_tau(swap_bottom, err) < 1.0


def test_ranking_to_scores_partial_ranking_ties_unranked_last() -> None:
    np.testing.assert_array_equal(ranking_to_scores([2, 0], 4), [1.0, 2.0, 0.0, 2.0])


def test_evaluate_rankings_oracle_and_bad_method() -> None:
    oracle = oracle_rankings(ERRORS)
    assert oracle == [[0, 1, 3, 2], [1, 2, 0, 3], [3, 0, 1, 2]]
    bad = [[2, 3, 1, 0], [3, 0, 2, 1], [1, 2, 0, 3]]  # picks the worst expert each time
    reports = evaluate_rankings({"oracle": oracle, "bad": bad}, ERRORS)
    best = reports["oracle"]
    assert isinstance(best, SelectionReport)
    assert best.relative_error_increase == 0.0
    assert best.top1_rate == 1.0 and best.top3_rate == 1.0
    # tasks 0 and 1 are ranked perfectly (tau 1); task 2 has a tie in the truth the ranking must break
    tie_tau = weighted_kendall_tau(ranking_to_scores(oracle[2], 4), ERRORS[2])
    assert 0.9 < tie_tau < 1.0
    assert best.mean_weighted_tau == pytest.approx((2 + tie_tau) / 3)
    assert best.mean_error == pytest.approx((0.10 + 0.25 + 0.05) / 3)
    assert best.oracle_error == best.mean_error
    worst = reports["bad"]
    # (0.4-0.1)/0.1 = 3, (0.6-0.25)/0.25 = 1.4, (0.4-0.05)/0.05 = 7
    assert worst.relative_error_increase == pytest.approx((3 + 1.4 + 7) / 3)
    assert worst.top1_rate == 0.0 and worst.top3_rate == 0.0
    assert worst.mean_weighted_tau < 0


def test_chance_is_mean_expert() -> None:
    # task means: 0.25, 0.4125, 0.2625 ; oracle 0.1, 0.25, 0.05
    expected = np.mean([(0.25 - 0.1) / 0.1, (0.4125 - 0.25) / 0.25, (0.2625 - 0.05) / 0.05])
    assert chance_relative_error_increase(ERRORS) == pytest.approx(expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda: relative_error_increase([0.1, 0.2], [0.1]),
        lambda: relative_error_increase([np.nan], [0.1]),
        lambda: topk_hit([0, 9], ERRORS[0], 1),  # index out of range
        lambda: topk_hit([0, 0], ERRORS[0], 1),  # duplicate
        lambda: topk_hit([0], ERRORS[0], 0),
        lambda: weighted_kendall_tau([0.1, 0.2], [0.1, 0.2, 0.3]),
        lambda: evaluate_rankings({"m": [[0, 1, 2, 3]]}, ERRORS),  # 1 ranking for 3 tasks
        lambda: evaluate_rankings({"m": [[0]] * 3}, ERRORS[0]),  # errors not 2-D
    ],
)
def test_bad_inputs_raise_taskreg_error(call) -> None:
    with pytest.raises(TaskregError):
        call()


def test_bootstrap_interval_of_a_mean() -> None:
    from taskreg.selection.metrics import bootstrap

    values = np.array([0.0, 1.0] * 50)
    ci = bootstrap(lambda i: float(values[i].mean()), len(values), draws=4000, seed=1)
    assert ci.value == 0.5
    # the mean of 100 fair coin flips: standard error 0.05, so the 95% interval is about 0.5 +- 0.098
    assert 0.39 < ci.low < 0.42 and 0.58 < ci.high < 0.61
    same = bootstrap(lambda i: float(values[i].mean()), len(values), draws=4000, seed=1)
    assert same == ci  # seeded
    constant = bootstrap(lambda i: 0.25, 10)
    assert (constant.value, constant.low, constant.high) == (0.25, 0.25, 0.25)
    assert not ci.overlaps(bootstrap(lambda i: 2.0, 3)) and ci.overlaps(ci)


def test_bootstrap_refuses_empty_input() -> None:
    from taskreg.selection.metrics import bootstrap

    with pytest.raises(TaskregError, match="n_tasks >= 1"):
        bootstrap(lambda i: 0.0, 0)
