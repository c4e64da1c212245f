"""migrate-to-gpu end to end on the emulator: all phases, or a stop with the service still serving."""
import json

import pytest

from flows.migrate import migrate_to_gpu
from gpuops import cloudrun, job_run
from gpuops.errors import CheckFailed

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
FAST = dict(canary_window_s=0.3, probe_requests=8, min_requests=5, approve_final=False)
NAME = cloudrun.service_name(P, R, S)


@pytest.fixture
def emu(prefect_api, gpu_cloud_run):
    return gpu_cloud_run


def test_a_healthy_migration_ends_on_the_gpu_revision_with_a_checklist_and_costs(emu, artifact_text):
    result = migrate_to_gpu(P, R, S, **FAST)
    assert [(p["phase"], p["status"], p["percent"]) for p in result["phases"]] == [
        ("describe", "done", 100), ("create-jobs", "done", 100), ("smoke-test", "done", 100), ("canary", "done", 100)]
    [serving] = [t for t in result["serving"] if t["percent"]]
    assert serving["percent"] == 100 and "-gpu-" in serving["revision"]
    assert result["cost"]["estimate"]["kind"] == "estimate"
    assert result["cost"]["measured"]["gpu_seconds"] >= 0
    checklist = artifact_text(f"migration-{S}")
    assert "GPU candidate vs CPU stable, per canary window" in checklist  # 6-B response time, measured
    windows = result["canary_windows"]
    assert [w["percent"] for w in windows] == [20, 80, 100]
    assert all(w["stable_requests"] == w["requests"] and w["p_value"] is not None for w in windows)


def test_a_failing_smoke_test_stops_before_the_canary_and_stable_keeps_serving(emu):
    emu.use_reading("gtx1080")  # sm_61: the probe fails the compute-capability guardrail
    stable = cloudrun.short(cloudrun.get_service(cloudrun.connect(), NAME)["latestReadyRevision"])
    with pytest.raises(CheckFailed, match="gpu-smoke-test failed") as failed:
        migrate_to_gpu(P, R, S, **FAST)
    phases = {p["phase"]: p["status"] for p in failed.value.details}
    assert phases == {"describe": "done", "create-jobs": "done", "smoke-test": "failed", "canary": "not run"}
    assert f"{stable} 100%" in str(failed.value)


def test_job_args_run_the_cpu_and_gpu_jobs_and_fill_the_6b_rows_with_measured_times(emu, artifact_text):
    result = migrate_to_gpu(P, R, S, job_args=["--job", "--steps", "500"], **FAST)
    assert [(p["phase"], p["status"]) for p in result["phases"]] == [
        ("describe", "done"), ("create-jobs", "done"), ("job-test", "done"), ("smoke-test", "done"),
        ("canary", "done")]
    rows = {r["ja"]: r for r in result["job_times"]}
    cr = cloudrun.connect()
    report = "".join(json.loads(artifact_text(f"migration-{S}")))  # the markdown, Japanese unescaped
    for ja, job in (("CPU Job実行時間", f"{S}-cpu-job"), ("GPU Job実行時間", f"{S}-gpu-job")):
        row = rows[ja]
        assert row["state"] == "succeeded" and row["job"] == job and row["measured_s"] > 0
        execution = cloudrun.get_execution(cr, f"{cloudrun.job_name(P, R, job)}/executions/{row['execution']}")
        assert row["measured_s"] == job_run.duration_s(execution)  # measured, not estimated
        assert ja in report and row["execution"] in report
    assert "6-B" in report and "×" in report  # the CPU-vs-GPU speedup row
