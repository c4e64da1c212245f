"""The smoke-test planner: finding the probe's report in job output, judging checks, the CPU-vs-GPU table."""
import json

import pytest

from gpuops.smoke import EMULATED_TEXT, REAL_TEXT, comparison_table, judge_smoke, percentile, \
    probe_result_from_output

PASS = {"verdict": "pass", "reasons": [], "emulated": True,
        "gpus": [{"name": "NVIDIA L4", "memory_total_mib": 23034, "compute_cap": "8.9"}], "compute": {"seconds": 0.02}}
SUCCEEDED = {"name": "projects/p/locations/r/jobs/j/executions/j-abc", "succeededCount": 1,
             "conditions": [{"type": "Completed", "state": "CONDITION_SUCCEEDED"}]}
FAILED = {"name": "projects/p/locations/r/jobs/j/executions/j-def", "failedCount": 1,
          "conditions": [{"type": "Completed", "state": "CONDITION_FAILED", "message": "Task j-def-0 failed"}]}


def ok(ms=10.0, fields=("output", "steps")):
    return {"status": 200, "ms": ms, "fields": list(fields), "error": None}


def err(status=500, ms=5.0):
    return {"status": status, "ms": ms, "fields": ["error"], "error": '{"error": "generation failed"}'}


def checks(result):
    return {c["check"]: c for c in result["checks"]}


def test_the_last_json_line_with_a_verdict_is_the_probe_report():
    output = "\n".join([
        "[gpuops emulator] image x not pulled; running command locally",
        json.dumps({"verdict": "fail", "attempt": 1}),
        '{"severity": "INFO", "message": "not a probe"}',
        "{broken json",
        json.dumps({"verdict": "pass", "attempt": 2}),
        "[gpuops emulator] task 0 exited with code 0",
    ])
    assert probe_result_from_output(output) == {"verdict": "pass", "attempt": 2}


@pytest.mark.parametrize("output", ["", None, "no json here\n", '["verdict"]\n', '{"status": "ok"}\n'])
def test_no_probe_report_is_none(output):
    assert probe_result_from_output(output) is None


def test_everything_healthy_passes_and_names_the_emulated_gpu():
    result = judge_smoke(SUCCEEDED, PASS, [ok(3), ok(4)], [ok(10), ok(30)])
    assert result["passed"] and result["failed"] == [] and result["emulated"] is True
    named = checks(result)
    assert named["gpu-emulated"]["detail"] == EMULATED_TEXT == result["gpu_label"]
    assert "NVIDIA L4" in named["gpu-probe"]["detail"]
    assert named["latency"]["figure"]["generation"] == {"requests": 2, "answered_200": 2, "median_ms": 20.0,
                                                        "p95_ms": 30.0}


def test_a_real_gpu_is_labelled_as_one():
    result = judge_smoke(SUCCEEDED, {**PASS, "emulated": False}, [ok()], [ok()])
    assert result["gpu_label"] == REAL_TEXT and result["emulated"] is False


def test_health_alone_is_never_enough():
    result = judge_smoke(SUCCEEDED, PASS, [ok(), ok()], [ok(), err()])
    named = checks(result)
    assert not result["passed"] and result["failed"] == ["generation"]
    assert named["health"]["passed"] and "1/2 generations failed: HTTP 500" in named["generation"]["detail"]
    assert named["latency"]["figure"]["generation"]["answered_200"] == 1


def test_a_200_without_the_expected_field_fails_the_generation():
    result = judge_smoke(SUCCEEDED, PASS, [ok()], [ok(fields=("status",))])
    assert "without the field 'output'" in checks(result)["generation"]["detail"]
    assert judge_smoke(SUCCEEDED, PASS, [ok()], [ok(fields=("image",))], expect_field="image")["passed"]


def test_no_answer_and_no_requests_fail():
    no_answer = {"status": None, "ms": 1.0, "fields": None, "error": "ConnectError: refused"}
    result = judge_smoke(SUCCEEDED, PASS, [no_answer], [])
    assert set(result["failed"]) == {"health", "generation"}
    assert "no answer (ConnectError: refused)" in checks(result)["health"]["detail"]


def test_a_failed_probe_and_execution_are_named_with_their_reasons():
    probe = {**PASS, "verdict": "fail", "reasons": ["GPU 0 (NVIDIA GeForce GTX 1080): compute capability 6.1 < 7.0"]}
    result = judge_smoke(FAILED, probe, [ok()], [ok()])
    named = checks(result)
    assert result["failed"] == ["job-execution", "gpu-probe"]
    assert "6.1" in named["gpu-probe"]["detail"] and "Task j-def-0 failed" in named["job-execution"]["detail"]
    assert named["gpu-emulated"]["passed"]  # recorded, never failed


def test_a_missing_probe_report_and_a_timed_out_execution_fail():
    result = judge_smoke({**SUCCEEDED, "timedOutAfterS": 600}, None, [ok()], [ok()])
    named = checks(result)
    assert "after 600 s" in named["job-execution"]["detail"]
    assert "entrypoint" in named["gpu-probe"]["detail"] and named["gpu-emulated"]["detail"].startswith("unknown")
    assert judge_smoke(None, PASS, [ok()], [ok()])["failed"] == ["job-execution"]


def test_percentile_is_nearest_rank():
    assert percentile([], 95) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile(list(range(1, 21)), 95) == 19
    assert percentile([3, 1, 2], 50) == 2


def test_comparison_table_has_both_sides_and_the_speedup():
    rows = comparison_table([10.0, 12.0, 50.0], [100.0, 120.0, 110.0])
    gpu, cpu = rows
    assert (gpu["side"], gpu["requests"], gpu["median_ms"], gpu["p95_ms"]) == ("GPU", 3, 12.0, 50.0)
    assert (cpu["median_ms"], cpu["p95_ms"]) == (110.0, 120.0)
    assert gpu["speedup_vs_cpu"] == round(110 / 12, 2) and cpu["speedup_vs_cpu"] == 1.0
    assert all(r["how"] == "measured: 3 sequential requests" for r in rows)


def test_comparison_table_without_a_baseline_has_the_gpu_row_only():
    assert comparison_table([10.0], []) == [{"side": "GPU", "requests": 1, "median_ms": 10.0, "p95_ms": 10.0,
                                             "speedup_vs_cpu": None, "how": "measured: 1 sequential requests"}]
    assert comparison_table([], [5.0])[0]["median_ms"] is None


def test_the_report_shows_every_check_and_the_measured_comparison_and_escapes_pipes():
    from gpuops.smoke import comparison_note, report_markdown

    judged = judge_smoke(SUCCEEDED, PASS, [ok()], [ok(), err()])
    result = {**judged, "gpu_service": "svc-gpu", "api": "emulator", "gpu_job": "svc-gpu-job", "execution": "e-1",
              "gpu_uri": "http://gpu", "comparison": comparison_table([10.0, 12.0], [30.0, 36.0]),
              "comparison_note": comparison_note(True, "http://cpu", "svc")}
    result["checks"][0] = {**result["checks"][0], "detail": "a | b\nc"}
    text = report_markdown(result)
    assert text.startswith("# GPU smoke test of `svc-gpu`: FAILED (generation)")
    assert "a \\| b c" in text and "| GPU | 2 |" in text and "| CPU | 2 |" in text
    assert "says nothing about a GPU" in text
    assert comparison_note(False, None, "svc") == "No CPU baseline: service `svc` has no URL."
