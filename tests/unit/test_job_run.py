"""Planner of one job execution: outcome, measured duration, report, the migration's 6-B rows."""
import pytest

from gpuops import job_run, params
from gpuops.errors import BadInput

DONE = {"startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T00:01:30.500Z"}


@pytest.mark.parametrize("execution, timed_out, expected", [
    ({**DONE, "succeededCount": 1, "conditions": [{"type": "Completed", "state": "CONDITION_SUCCEEDED"}]},
     False, "succeeded"),
    ({**DONE, "failedCount": 1, "conditions": [{"type": "Completed", "state": "CONDITION_FAILED"}]}, False, "failed"),
    ({**DONE, "cancelledCount": 1, "conditions": [{"type": "Completed", "state": "CONDITION_FAILED",
                                                   "executionReason": "CANCELLED"}]}, False, "cancelled"),
    ({**DONE, "cancelledCount": 1}, True, "timed out"),
    ({"startTime": DONE["startTime"], "runningCount": 1}, False, "unfinished"),
])
def test_outcome(execution, timed_out, expected):
    assert job_run.outcome(execution, timed_out) == expected


def test_duration_is_start_to_completion_and_none_while_running():
    assert job_run.duration_s(DONE) == 90.5
    assert job_run.duration_s({"startTime": DONE["startTime"]}) is None


def result(job: str, state: str, seconds: float | None, execution: str = "exec-1") -> dict:
    execution_doc = {**DONE, "name": f"projects/p/locations/r/jobs/{job}/executions/{execution}", "taskCount": 1,
                     "failedCount": int(state == "failed"), "succeededCount": int(state == "succeeded"),
                     "conditions": [{"type": "Completed", "state": "CONDITION_SUCCEEDED" if state == "succeeded"
                                     else "CONDITION_FAILED"}]}
    summary = job_run.summary(job=job, execution=execution_doc, timed_out=False, timeout_s=60, args=["--job"],
                              log_tail=["line a", "failing | on purpose"], api="test")
    return {**summary, "duration_s": seconds}


def test_summary_carries_no_template_and_the_report_shows_the_tail():
    summary = result("svc-cpu-job", "failed", 2.0)
    assert "template" not in summary and summary["execution"] == "exec-1" and summary["state"] == "failed"
    report = job_run.report_markdown(summary)
    assert "`exec-1`" in report and "FAILED" in report and "failing | on purpose" in report
    assert "failing | on purpose" in job_run.failure_message(summary)


def test_job_time_rows_measure_both_sides_and_the_speedup():
    rows = job_run.job_time_rows({"cpu": result("s-cpu-job", "succeeded", 12.0, "c-1"),
                                  "gpu": result("s-gpu-job", "succeeded", 3.0, "g-1")})
    assert [(r["ja"], r["measured_s"], r["execution"]) for r in rows[:2]] == [
        ("CPU Job実行時間", 12.0, "c-1"), ("GPU Job実行時間", 3.0, "g-1")]
    assert rows[2]["speedup"] == 4.0
    text = "\n".join(job_run.job_time_markdown(rows, emulated=True))
    assert "| CPU job `s-cpu-job` | CPU Job実行時間 | 12 | succeeded | `c-1` |" in text
    assert "×4.0" in text and "say nothing about a GPU" in text


def test_job_time_rows_without_a_gpu_run_have_no_speedup():
    rows = job_run.job_time_rows({"cpu": result("s-cpu-job", "failed", 1.0), "gpu": None})
    assert [r["state"] for r in rows] == ["failed", "not run"]


@pytest.mark.parametrize("kwargs, flag", [
    (dict(job="Bad_Name"), "--job"), (dict(job="j", args="--job"), "--args"), (dict(job="j", args=[3]), "--args"),
    (dict(job="j", timeout_s=-1), "--timeout-s"), (dict(job="j", timeout_s=8 * 86400), "--timeout-s"),
    (dict(job="j", log_lines=5000), "--log-lines"),
])
def test_run_job_parameters_name_the_flag(kwargs, flag):
    with pytest.raises(BadInput, match=flag):
        params.run_job(**kwargs)


def test_run_job_parameters_pass_through():
    assert params.run_job(job="svc-cpu-job", args=("--job",)) == {
        "job": "svc-cpu-job", "args": ["--job"], "timeout_s": 1800.0, "log_lines": 20}
