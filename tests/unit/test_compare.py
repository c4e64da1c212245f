"""Candidate against stable: the rank test and the side-by-side verdict, on plain numbers."""
import math

import pytest

from gpuops.rollout.compare import Tolerance, judge_side_by_side, mann_whitney_greater
from gpuops.traffic import Gates, Window

GATES = Gates(max_error_rate=0.05, max_p95_ms=5000, min_requests=10)
TOL = Tolerance(latency_ratio=1.5, error_margin=0.02)


def window(latencies, errors=0):
    return Window(requests=len(latencies), errors=errors, latencies_ms=tuple(float(v) for v in latencies))


def test_u_and_its_one_sided_p_value_match_the_textbook_example():
    test = mann_whitney_greater([19, 22, 16, 29, 24], [20, 11, 17, 12])
    assert test.u == 17  # U1 = R1 - n1(n1+1)/2 = 32 - 15
    z = (17 - 10 - 0.5) / math.sqrt(5 * 4 * 10 / 12)
    assert test.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert test.p_value == pytest.approx(0.0557, abs=1e-3)


def test_ties_are_averaged_and_all_equal_samples_prove_nothing():
    assert mann_whitney_greater([5, 5, 5], [5, 5, 5]).p_value == 1.0
    assert mann_whitney_greater([1, 2, 2, 3], [2, 2, 4, 5]).u == 4.0
    with pytest.raises(ValueError):
        mann_whitney_greater([], [1])


def test_a_candidate_three_times_slower_fails_even_inside_the_fixed_p95_limit():
    stable = window([100 + i for i in range(20)])
    slow = window([300 + 3 * i for i in range(20)])
    verdict, figures = judge_side_by_side(slow, stable, GATES, TOL)
    assert verdict.outcome == "fail" and "3.0x stable's" in verdict.reasons[0]
    assert figures["p_value"] < 0.001 and figures["stable_p95_ms"] == 118.0  # nearest rank


def test_a_candidate_as_fast_as_stable_passes_with_its_p_value_stated():
    stable = window([100 + i for i in range(20)])
    same = window([101 + i for i in range(20)])
    verdict, figures = judge_side_by_side(same, stable, GATES, TOL)
    assert verdict.outcome == "pass" and figures["p_value"] > 0.5
    assert any("Mann-Whitney p=" in r for r in verdict.reasons)


def test_when_stable_fails_as_much_as_the_candidate_the_window_holds():
    both = window([100] * 20, errors=10)
    verdict, _ = judge_side_by_side(both, window([100] * 20, errors=9), GATES, TOL)
    assert verdict.outcome == "inconclusive" and "stable fails too" in verdict.reasons[0]
    clean, _ = judge_side_by_side(window([100] * 20), window([100] * 20, errors=9), GATES, TOL)
    assert clean.outcome == "pass"  # a failing stable does not hold back a candidate that is fine


def test_a_candidate_erring_beyond_stable_fails_and_without_stable_the_fixed_limits_rule():
    verdict, figures = judge_side_by_side(window([100] * 40, errors=8), window([100] * 40), GATES, TOL)
    assert verdict.outcome == "fail" and any("vs stable 0.0%" in r for r in verdict.reasons)
    assert figures["errors_p_value"] < 0.01
    assert judge_side_by_side(window([100] * 20), None, GATES, TOL)[0].outcome == "pass"
