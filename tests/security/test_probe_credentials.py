"""The smoke test against a GPU service that requires credentials: fails closed naming the missing one,
passes with it, and the key's value comes to rest nowhere (logs, artifacts, console, PREFECT_HOME, server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

from flows.create_jobs import create_jobs
from flows.smoke_test import gpu_smoke_test
from gpuops import cloudrun
from gpuops.errors import BadInput, CheckFailed
from secret_search import files_holding, server_record

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
TARGET = ["--project", P, "--region", R, "--service", S]
GPU_SERVICE = cloudrun.service_name(P, R, f"{S}-gpu")
STABLE = cloudrun.service_name(P, R, S)
QUICK = dict(requests=2, timeout_s=60)


@pytest.fixture
def emu(prefect_api, gpu_cloud_run):
    create_jobs(P, R, S)
    return gpu_cloud_run


@pytest.fixture
def planted() -> str:
    return f"planted-{uuid.uuid4()}"


def by_name(checks: list[dict]) -> dict:
    return {c["check"]: c for c in checks}


def test_without_the_api_key_the_smoke_test_fails_closed_naming_it_and_passes_with_it(emu, planted, monkeypatch,
                                                                                     artifact_text):
    emu.require_auth(GPU_SERVICE, header="X-API-Key", value=planted)

    with pytest.raises(CheckFailed) as failed:
        gpu_smoke_test(P, R, S, **QUICK)
    message = str(failed.value)
    assert "requires an API key header" in message and "X-API-Key" in message and "--api-key-secret" in message
    assert not by_name(failed.value.details)["health"]["passed"]

    monkeypatch.setenv("GPU_API_KEY", planted)
    result = gpu_smoke_test(P, R, S, api_key_env="GPU_API_KEY", **QUICK)
    assert result["passed"] and "environment variable GPU_API_KEY" in result["credentials_sent"]
    report = artifact_text(f"smoke-test-{S}")
    assert "PASSED" in report and planted not in report and planted not in json.dumps(result)


def test_without_an_id_token_the_smoke_test_fails_closed_naming_it_and_passes_with_one(emu, key_file):
    emu.require_auth(GPU_SERVICE, id_token=True)
    emu.require_auth(STABLE, id_token=True)  # the CPU baseline too: a token per service URL

    with pytest.raises(CheckFailed) as failed:
        gpu_smoke_test(P, R, S, **QUICK)
    assert "requires a Google ID token" in str(failed.value) and "--id-token" in str(failed.value)

    result = gpu_smoke_test(P, R, S, id_token=True, **QUICK)
    assert result["passed"]
    assert {row["side"] for row in result["comparison"]} == {"GPU", "CPU"}  # the baseline answered too


def test_a_missing_key_stops_the_smoke_test_before_the_gpu_job_runs(emu):
    emu.clear_requests()
    with pytest.raises(BadInput, match="environment variable NO_SUCH_KEY"):
        gpu_smoke_test(P, R, S, api_key_env="NO_SUCH_KEY", **QUICK)
    assert not [r for r in emu.requests(method="POST") if r.path.endswith(":run")]


# --- the CLI, as a user runs it, with the key in a Prefect Secret block -------------------------


@pytest.fixture
def secret_block(prefect_api, planted) -> str:
    from prefect.blocks.system import Secret

    name = f"gpu-api-key-{uuid.uuid4().hex[:8]}"
    Secret(value=planted).save(name)
    return name


def run_cli(tmp_path, api_url: str, *args: str) -> subprocess.CompletedProcess:
    """`gpuops ...` in a subprocess with its own PREFECT_HOME (results and logs under it)."""
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    return subprocess.run([sys.executable, "-m", "gpuops_cli.cli", *args], env=env, capture_output=True, text=True,
                          timeout=240)


def test_the_cli_reads_the_key_from_a_secret_block_and_the_value_comes_to_rest_nowhere(emu, planted, secret_block,
                                                                                      tmp_path, artifact_text,
                                                                                      prefect_api):
    emu.require_auth(GPU_SERVICE, header="X-API-Key", value=planted)
    started = datetime.now(timezone.utc)

    refused = run_cli(tmp_path, prefect_api, "smoke-test", *TARGET, "--json")
    passed = run_cli(tmp_path, prefect_api, "smoke-test", *TARGET, "--api-key-secret", secret_block, "--json")

    assert refused.returncode == 1, refused.stderr
    error = json.loads(refused.stdout)
    assert error["error"] == "check-failed" and "X-API-Key" in error["message"] and "--api-key-secret" in error["message"]
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["passed"] is True
    for done in (refused, passed):
        assert planted not in done.stdout and planted not in done.stderr
    assert (tmp_path / "prefect-home").is_dir(), "the runs did not use their PREFECT_HOME"
    assert not files_holding(tmp_path / "prefect-home", planted)
    assert planted not in server_record(started)
    assert planted not in artifact_text(f"smoke-test-{S}") and planted not in artifact_text(f"smoke-latency-{S}")
