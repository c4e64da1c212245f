"""Judge the candidate against stable, side by side (Kayenta's automated canary analysis is the model).

Both samples come from the same window and the same requests, interleaved, so what they share
(a downstream outage, a slow network) cancels out and what differs is the release.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gpuops.traffic import Gates, Verdict, Window


@dataclass(frozen=True)
class Tolerance:
    """How much worse than stable the candidate may be before the comparison fails it."""

    latency_ratio: float = 1.5  # candidate latencies may run up to 1.5x stable's
    error_margin: float = 0.02  # candidate error rate may exceed stable's by 2 points
    alpha: float = 0.05  # significance of the one-sided rank test
    min_samples: int = 8  # per side, for a rank test to say anything


@dataclass(frozen=True)
class RankTest:
    u: float
    p_value: float
    n_candidate: int
    n_stable: int


def _ranks(values: list[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) of values, and the tie term sum(t^3 - t) over tied groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks, ties, i = [0.0] * len(values), 0.0, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_greater(x: list[float], y: list[float]) -> RankTest:
    """One-sided Mann-Whitney U: how likely values like x's exceed y's only by chance.

    Normal approximation with tie and continuity corrections; good from about 8 values a side.
    """
    n1, n2 = len(x), len(y)
    if not n1 or not n2:
        raise ValueError("both samples need values")
    ranks, ties = _ranks([*x, *y])
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:  # every value equal: no evidence either way
        return RankTest(u, 1.0, n1, n2)
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return RankTest(u, 0.5 * math.erfc(z / math.sqrt(2)), n1, n2)


def errors_exceed(candidate: Window, stable: Window, tolerance: Tolerance) -> float | None:
    """One-sided two-proportion z-test: how likely the candidate's error rate exceeds stable's by more
    than the margin only by chance (None without requests on both sides)."""
    n1, n2 = candidate.requests, stable.requests
    if not n1 or not n2:
        return None
    pooled = (candidate.errors + stable.errors) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    excess = candidate.error_rate - stable.error_rate - tolerance.error_margin
    if spread == 0:
        return 0.0 if excess > 0 else 1.0
    return 0.5 * math.erfc(excess / spread / math.sqrt(2))


def compare(candidate: Window, stable: Window, gates: Gates, tolerance: Tolerance) -> tuple[Verdict, dict]:
    """The side-by-side verdict, and the figures behind it for the report.

    Fails a candidate slower than stable beyond the tolerance (rank test on candidate latencies vs
    stable's scaled by the ratio) or erring more beyond the margin. When stable itself breaks the
    error limit as much as the candidate, the window proves nothing about the candidate: inconclusive.
    """
    figures = {"stable_requests": stable.requests, "stable_errors": stable.errors,
               "stable_p95_ms": None if stable.p95_ms is None else round(stable.p95_ms, 1), "p_value": None}
    failed, why = [], []
    errs_more = errors_exceed(candidate, stable, tolerance)
    figures["errors_p_value"] = None if errs_more is None else round(errs_more, 4)
    candidate_errs_more = errs_more is not None and errs_more < tolerance.alpha
    both_fail = stable.error_rate > gates.max_error_rate and candidate.error_rate > gates.max_error_rate
    if stable.requests and both_fail and not candidate_errs_more:
        return Verdict("inconclusive", (f"stable fails too ({stable.errors}/{stable.requests} errors, candidate "
                                        f"{candidate.errors}/{candidate.requests}): not the candidate's doing; "
                                        "holding",)), figures
    if candidate_errs_more:
        failed.append(f"error rate {candidate.error_rate:.1%} vs stable {stable.error_rate:.1%}, "
                      f"beyond the {tolerance.error_margin:.0%} margin (p={errs_more:.3g})")
    fast, slow = stable.latencies_ms, candidate.latencies_ms
    if len(fast) >= tolerance.min_samples and len(slow) >= tolerance.min_samples:
        test = mann_whitney_greater(list(slow), [v * tolerance.latency_ratio for v in fast])
        figures["p_value"] = round(test.p_value, 4)
        ratio = _median(slow) / _median(fast) if _median(fast) else math.inf
        figures["median_ratio"] = round(ratio, 2)
        text = (f"median latency {ratio:.1f}x stable's (tolerance {tolerance.latency_ratio:.1f}x, "
                f"Mann-Whitney p={test.p_value:.3g})")
        (failed if test.p_value < tolerance.alpha else why).append(text)
    else:
        why.append(f"latency not compared: fewer than {tolerance.min_samples} answers on a side")
    if failed:
        return Verdict("fail", tuple(failed)), figures
    return Verdict("pass", tuple(why)), figures


def _median(values) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def judge_side_by_side(candidate: Window, stable: Window | None, gates: Gates,
                       tolerance: Tolerance) -> tuple[Verdict, dict]:
    """The fixed limits and the comparison together. A stable failing as much as the candidate makes
    the window inconclusive even when the candidate broke a fixed limit: hold, do not blame it."""
    from gpuops.traffic import judge

    fixed = judge(candidate, gates)
    if stable is None or candidate.refused:  # refused probes measure nothing, on either side
        return fixed, {}
    side, figures = compare(candidate, stable, gates, tolerance)
    if side.outcome == "inconclusive":
        return side, figures
    if "fail" in (fixed.outcome, side.outcome):
        reasons = [r for v in (fixed, side) if v.outcome == "fail" for r in v.reasons]
        return Verdict("fail", tuple(reasons)), figures
    if fixed.outcome == "inconclusive":
        return fixed, figures
    return Verdict("pass", fixed.reasons + side.reasons), figures
