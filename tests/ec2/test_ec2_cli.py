"""`gpuops ec2-migrate` as an operator runs it: one JSON object with --json, exit 0 / 1 / 2 / 3."""
from __future__ import annotations

import json

import pytest

from gpuops_cli import cli


@pytest.fixture
def gpuops(capfd, monkeypatch, prefect_api):
    """Run `gpuops ec2-migrate ARGS --json` in this process; returns (exit code, the one JSON object)."""
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    if "gpuops_cli.ec2_cli" not in cli.COMMAND_MODULES:  # until the lead wires it into the CLI
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "gpuops_cli.ec2_cli"))

    def run(*args: str) -> tuple[int, dict]:
        capfd.readouterr()
        code = cli.main(["ec2-migrate", *args, "--json"])
        out, _ = capfd.readouterr()
        return code, json.loads(out)  # exactly one object on stdout

    return run


def fast(world) -> list[str]:
    return ["--elastic-ip", world.elastic_ip, "--ami-ssm-parameter", world.ami_parameter, "--running-within-s", "30",
            "--answering-within-s", "20", "--latency-target-ms", "1000"]


def launched(world) -> list:
    mine = [{"Name": "tag:gpuops:migration-of", "Values": [world.allocation_id]}]
    return [i for r in world.ec2.describe_instances(Filters=mine)["Reservations"] for i in r["Instances"]]


@pytest.mark.parametrize("args, flag", [(["--latency-target-ms", "-5"], "--latency-target-ms"),
                                        (["--tags", "team"], "--tags"),
                                        (["--security-group-ids", "default"], "--security-group-ids"),
                                        (["--security-findings", "ignore"], "--security-findings")])
def test_bad_input_exits_2_naming_the_flag_and_launches_nothing(gpuops, world, args, flag):
    code, body = gpuops(*fast(world), *args)
    assert code == 2 and body["error"] == "bad-input" and flag in body["message"]
    assert launched(world) == []


def test_the_audit_refusal_exits_1_with_the_finding_and_its_fix(gpuops, runbook_world):
    code, body = gpuops(*fast(runbook_world))
    assert code == 1 and body["error"] == "check-failed"
    assert body["details"][0]["ports"] == [22] and "revoke-security-group-ingress" in body["details"][0]["fix"]
    assert launched(runbook_world) == []


def test_a_migration_exits_0_with_its_measured_figures(gpuops, world):
    code, body = gpuops(*fast(world), "--no-ask-to-stop-old", "--internal-ports", "8001", "--security-findings",
                        "report")
    assert code == 0 and body["outcome"] == "migrated"
    assert [len(w["samples_ms"]) for w in body["latency"]] == [5, 5]
    assert "left running (ask_to_stop_old is off)" in body["old_instance"]
    assert [f["ports"] for f in body["security_findings"]] == [[8001]]  # the runbook's GPU service, reported


def test_an_unreachable_ec2_api_exits_3_with_one_json_object(gpuops, world, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "2")
    code, body = gpuops(*fast(world))
    assert code == 3 and body["error"] == "could-not-run" and "EndpointConnectionError" in body["message"]


def test_sigterm_mid_migration_exits_3_with_one_object_naming_what_is_left(world, prefect_api):
    import os
    import signal
    import subprocess
    import sys
    import time

    # The new instance's app never answers healthy: the run waits for it, with the instance launched.
    args = [*fast(world), "--answering-within-s", "120", "--tags", "gpuops-emulator:app-fail=all", "--json"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    cli_run = subprocess.Popen([sys.executable, "-m", "gpuops_cli.cli", "ec2-migrate", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not launched(world) and time.monotonic() < deadline and cli_run.poll() is None:
        time.sleep(0.2)
    [new] = launched(world)
    time.sleep(1.0)  # into the wait for its app
    cli_run.send_signal(signal.SIGTERM)
    out, err = cli_run.communicate(timeout=60)
    assert cli_run.returncode == 3, err[-2000:]
    body = json.loads(out)  # exactly one object
    assert body["error"] == "could-not-run" and "SIGTERM" in body["message"]
    assert new["InstanceId"] in body["message"] and "--rollback" not in body["message"]  # the IP never moved
    assert "did not move" in body["message"] and "terminate-instances" in body["message"]
    assert "gpuops ec2-migrate --elastic-ip" in body["message"]  # the resume command
