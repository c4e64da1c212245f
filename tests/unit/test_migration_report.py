"""Planner of the migration checklist: a failed canary's progress counts its own steps."""
import pytest

from gpuops import migration_report


def history(*verdicts: str) -> list[dict]:
    """One window per verdict; a pass moves to the next step, a hold stays."""
    out, step = [], 1
    for verdict in verdicts:
        out.append({"step": step, "percent": 0, "verdict": verdict})
        step += verdict == "pass"
    return out


@pytest.mark.parametrize("steps, verdicts, expected", [
    (2, ("pass", "fail"), 50),
    (2, ("fail",), 0),
    (2, ("pass", "pass"), 100),
    (4, ("pass", "fail"), 25),
    (4, ("pass", "hold", "pass", "pass", "fail"), 75),
    (4, ("pass", "pass", "hold", "hold", "fail"), 50),
    (3, ("pass", "fail"), 33),
])
def test_failure_progress_counts_the_canarys_own_steps(steps, verdicts, expected):
    assert migration_report.failure_progress(history(*verdicts), steps) == expected


def test_a_resumed_canarys_history_counts_from_the_step_it_resumed_at():
    resumed = [{"step": 3, "percent": 80, "verdict": "pass"}, {"step": 4, "percent": 100, "verdict": "fail"}]
    assert migration_report.failure_progress(resumed, 4) == 75


def test_without_step_numbers_passes_are_counted():
    assert migration_report.failure_progress([{"verdict": "pass"}, {"verdict": "fail"}], 4) == 25
    assert migration_report.failure_progress([], 4) == 0


def test_the_checklist_shows_each_canary_window_gpu_beside_cpu():
    from gpuops import migration_report

    windows = [{"step": 1, "percent": 20, "requests": 30, "errors": 0, "p95_ms": 41.0, "verdict": "pass",
                "stable_requests": 30, "stable_errors": 0, "stable_p95_ms": 120.5, "median_ratio": 0.35,
                "p_value": 1.0}]
    lines = migration_report.response_time_markdown(windows)
    assert lines[0].startswith("## 6-B") and "| 1 | 20% | 30 | 41.0 | 30 | 120.5 | 0.35 | 1.0 | pass |" in lines
    costs = {"estimate": {"price_source": "p", "inputs": {}, "usd_per_month": 1, "rate": {"total": 1, "gpu": 1,
                                                                                        "instance": 0}}}
    text = migration_report.checklist_markdown("svc", "api", [], costs, [], None, windows)
    assert "GPU candidate vs CPU stable" in text and "say nothing about a GPU" not in text
    assert "say nothing about a GPU" in migration_report.checklist_markdown("svc", "gpuops Cloud Run emulator", [],
                                                                            costs, [], None, windows)
    assert "GPU candidate vs CPU stable" not in migration_report.checklist_markdown("svc", "api", [], costs, [])
