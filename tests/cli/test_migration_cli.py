"""`gpuops describe` and `gpuops create-jobs` as a user runs them: a subprocess, JSON on stdout, exit codes."""
import json
import os
import subprocess
import sys

import pytest

TARGET = ["--project", "nca-toolkit-438301", "--region", "us-central1", "--service", "no-code-architects-toolkit"]


@pytest.fixture
def gpuops(prefect_api, seeded_cloud_run):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "gpuops_cli.cli", *args], env=env,
                              capture_output=True, text=True, timeout=180)

    return run


def test_describe_json_is_one_object_on_stdout_with_the_contract_keys(gpuops):
    done = gpuops("describe", *TARGET, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"service", "revision", "image", "execution_environment", "service_account", "cpu", "memory",
            "env_names", "secret_env", "plaintext_secret_suspects", "traffic"} <= set(result)
    assert result["traffic"][0].keys() >= {"revision", "percent", "tag"}
    assert "test123" not in done.stdout + done.stderr


def test_a_failed_guardrail_exits_1_and_names_the_rule(gpuops):
    done = gpuops("create-jobs", *TARGET, "--cpu", "2", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["details"][0]["rule"] == "gpu-min-cpu"


def test_bad_input_exits_2_naming_the_field(gpuops):
    done = gpuops("describe", "--project", "X", "--region", "us-central1", "--service", "s", "--json")
    assert done.returncode == 2
    assert "--project" in json.loads(done.stdout)["message"]
    assert gpuops("describe", "--region", "us-central1").returncode == 2  # argparse usage error


def test_dry_run_prints_redacted_bodies_and_creates_nothing(gpuops, seeded_cloud_run):
    done = gpuops("create-jobs", *TARGET, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    bodies = json.loads(done.stdout)["bodies"]
    assert bodies["gpu_job"]["body"]["template"]["template"]["nodeSelector"]["accelerator"] == "nvidia-l4"
    assert "test123" not in done.stdout + done.stderr
    assert not [r for r in seeded_cloud_run.requests() if r.method != "GET"]
