"""run-job on a real Prefect server and the emulator running the sample app as the job's container."""
import json
import os
import subprocess
import sys

import pytest

from flows.create_jobs import create_jobs
from flows.run_job import run_job
from gpuops import cloudrun, state
from gpuops.errors import BadInput, CheckFailed
from gpuops.sample_app import generate

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
CPU_JOB = f"{S}-cpu-job"
JOB_NAME = cloudrun.job_name(P, R, CPU_JOB)
QUICK_JOB = ["--job", "--prompt", "run-job test", "--steps", "200"]


@pytest.fixture
def emu(prefect_api, gpu_cloud_run):
    create_jobs(P, R, S)
    gpu_cloud_run.clear_requests()
    return gpu_cloud_run


def make_the_job_fail() -> None:
    cr = cloudrun.connect()
    job = cloudrun.get_job(cr, JOB_NAME)
    job["template"]["template"]["containers"][0].setdefault("env", []).append(
        {"name": "SAMPLE_APP_FAIL", "value": "1"})
    cloudrun.update_job(cr, JOB_NAME, {k: job[k] for k in ("template", "labels") if k in job})


def test_a_job_that_succeeds_reports_its_time_execution_and_log_tail(emu, artifact_text):
    result = run_job(P, R, CPU_JOB, args=QUICK_JOB, timeout_s=60)
    assert result["state"] == "succeeded" and result["succeeded"] and not result["timed_out"]
    assert result["duration_s"] is not None and result["duration_s"] >= 0
    assert any(generate("run-job test", 200)["output"] in line for line in result["log_tail"])
    execution = f"{JOB_NAME}/executions/{result['execution']}"
    assert state.started_executions(JOB_NAME) == [execution]  # gpuops' own: a rollback may cancel it
    assert emu.requests("POST", r"/v2/entries:list$")  # the tail came through Cloud Logging's API
    report = artifact_text(f"run-job-{CPU_JOB}")
    assert result["execution"] in report and "SUCCEEDED" in report
    assert "test123" not in json.dumps(result) + report  # the job's plaintext env value stays out


def test_a_failing_job_is_reported_failed_with_its_log_tail(emu, artifact_text):
    make_the_job_fail()
    with pytest.raises(CheckFailed, match="failed") as failed:
        run_job(P, R, CPU_JOB, args=QUICK_JOB, timeout_s=60)
    [result] = failed.value.details
    assert result["state"] == "failed" and result["tasks"]["failed"] == 1
    assert any("failing on purpose (SAMPLE_APP_FAIL=1)" in line for line in result["log_tail"])
    assert "exited with code 1" in str(failed.value)  # the last log line is in the message
    assert "failing on purpose" in artifact_text(f"run-job-{CPU_JOB}")


def test_a_job_that_overruns_its_bound_is_cancelled(emu):
    # Without --job the sample app serves forever: a job that never ends on its own.
    with pytest.raises(CheckFailed, match="cancelled it") as failed:
        run_job(P, R, CPU_JOB, args=["--port", "0"], timeout_s=2)
    [result] = failed.value.details
    assert result["state"] == "timed out" and result["timed_out"] and result["tasks"]["cancelled"] == 1
    execution = cloudrun.get_execution(cloudrun.connect(), f"{JOB_NAME}/executions/{result['execution']}")
    assert execution["cancelledCount"] == 1
    assert not [p for p in emu.processes(running_only=True) if p["kind"] == "task"]  # its process is gone
    assert any("execution cancelled" in line for line in result["log_tail"])


@pytest.mark.parametrize("kwargs, flag", [
    (dict(job="Not_A_Job"), "--job"), (dict(job=CPU_JOB, args=["a\x00b"]), "--args"),
    (dict(job=CPU_JOB, timeout_s=0), "--timeout-s"), (dict(job="no-such-job"), "--job"),
])
def test_bad_input_is_refused_before_anything_runs(emu, kwargs, flag):
    with pytest.raises(BadInput, match=flag):
        run_job(P, R, **kwargs)
    assert not emu.requests(method="POST")


def test_the_cli_prints_one_json_object_and_exits_by_outcome(emu, prefect_api):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    command = [sys.executable, "-m", "gpuops_cli.cli", "run-job", "--project", P, "--region", R, "--job", CPU_JOB,
               "--timeout-s", "60", "--json", "--", *QUICK_JOB]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "succeeded" and result["args"] == QUICK_JOB and result["execution"]

    make_the_job_fail()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)
    assert error["error"] == "check-failed" and error["details"][0]["state"] == "failed"
    assert any("failing on purpose" in line for line in error["details"][0]["log_tail"])
