"""gpu-smoke-test on a real Prefect server and the emulator running the sample app and the real probe."""

import pytest

from flows.create_jobs import create_jobs
from flows.smoke_test import gpu_smoke_test
from gpuops import cloudrun
from gpuops.errors import BadInput, CheckFailed
from gpuops.smoke import EMULATED_TEXT

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
QUICK = dict(requests=2, timeout_s=60)


@pytest.fixture
def emu(prefect_api, gpu_cloud_run):
    create_jobs(P, R, S)
    return gpu_cloud_run


def by_name(checks: list[dict]) -> dict:
    return {c["check"]: c for c in checks}


def test_a_healthy_gpu_passes_with_the_probe_emulation_named_and_a_cpu_gpu_table(emu, artifact_text):
    result = gpu_smoke_test(P, R, S, **QUICK)
    checks = by_name(result["checks"])
    assert result["passed"] and result["failed"] == []
    assert result["probe"]["verdict"] == "pass" and result["probe"]["gpus"][0]["name"] == "NVIDIA L4"
    assert result["emulated"] is True and checks["gpu-emulated"]["detail"] == EMULATED_TEXT
    assert checks["generation"]["figure"]["answered_200"] == 2
    assert checks["latency"]["figure"]["generation"]["median_ms"] > 0
    sides = {row["side"]: row for row in result["comparison"]}
    assert sides["GPU"]["requests"] == sides["CPU"]["requests"] == 2
    assert sides["GPU"]["speedup_vs_cpu"] > 0 and "measured" in sides["GPU"]["how"]
    assert "emulator" in result["api"]
    report = artifact_text(f"smoke-test-{S}")
    assert EMULATED_TEXT in report and "emulator" in report and "PASSED" in report
    assert "GPU" in artifact_text(f"smoke-latency-{S}")
    assert emu.requests("POST", r"/v2/entries:list$")  # the verdict came through Cloud Logging's API


def test_health_passing_while_generation_fails_is_a_failed_smoke_test(emu, artifact_text):
    cr = cloudrun.connect()
    name = cloudrun.service_name(P, R, f"{S}-gpu")
    service = cloudrun.get_service(cr, name)
    service["template"]["containers"][0]["env"].append({"name": "SAMPLE_APP_FAIL", "value": "generate"})
    cloudrun.update_service(cr, name, {"template": service["template"]})

    with pytest.raises(CheckFailed) as failed:
        gpu_smoke_test(P, R, S, **QUICK)
    checks = by_name(failed.value.details)
    assert checks["health"]["passed"] and checks["gpu-probe"]["passed"]
    assert not checks["generation"]["passed"] and "HTTP 500" in checks["generation"]["detail"]
    assert "generation" in str(failed.value)
    report = artifact_text(f"smoke-test-{S}")  # written before the flow failed
    assert "FAILED (generation)" in report and EMULATED_TEXT in report


def test_a_gtx_1080_reading_fails_the_probe_check(emu):
    emu.use_reading("gtx1080")
    with pytest.raises(CheckFailed) as failed:
        gpu_smoke_test(P, R, S, **QUICK)
    checks = by_name(failed.value.details)
    assert not checks["gpu-probe"]["passed"] and "6.1" in checks["gpu-probe"]["detail"]
    assert "GTX 1080" in checks["gpu-probe"]["figure"]["gpus"][0]
    assert checks["gpu-emulated"]["detail"] == EMULATED_TEXT
    assert checks["generation"]["passed"]  # the service still answers: only the probe caught the card


def test_a_missing_gpu_job_is_bad_input_naming_create_jobs(prefect_api, gpu_cloud_run):
    with pytest.raises(BadInput, match="gpuops create-jobs"):
        gpu_smoke_test(P, R, S, **QUICK)
    assert not gpu_cloud_run.requests(method="POST")  # nothing was run
