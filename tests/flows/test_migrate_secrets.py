"""Flow migrate-secrets on the emulator running the runbook's service (the sample app) with gpuops' jobs and
GPU service: plaintext API_KEY into Secret Manager, the service switched only once its new revision serves."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuops import cloudrun, job_plan, secret_manager
from gpuops.errors import CheckFailed, CouldNotRun

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from secret_search import files_holding, holds, server_record  # noqa: E402  the planted-value search, shared

PROJECT, REGION, SERVICE = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
TARGET = dict(project=PROJECT, region=REGION, service=SERVICE)
SECRET = f"{SERVICE}-api-key"
SECRET_NAME = f"projects/{PROJECT}/secrets/{SECRET}"
IDS = job_plan.resource_ids(SERVICE)
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture
def planted(fresh_workload_emulator, monkeypatch, tmp_path):
    """The runbook's service (sample app) with a unique plaintext API_KEY, and the CPU job, GPU job and GPU
    service as create-jobs makes them (copies of its env, labelled managed-by=gpuops)."""
    from blocks.cloud_run_blocks import GpuProfile
    from gpuops.demo_seed import workload_seed

    emu, value = fresh_workload_emulator, f"planted-{uuid.uuid4()}"
    seed = workload_seed()
    env = seed["services"][0]["template"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "API_KEY")["value"] = value
    emu.seed(seed)
    cr = cloudrun.connect(emu.url)
    name = cloudrun.service_name(PROJECT, REGION, SERVICE)
    first = cloudrun.short(cloudrun.get_service(cr, name)["latestReadyRevision"])
    plan = job_plan.plan(cloudrun.get_revision(cr, f"{name}/revisions/{first}"), SERVICE, GpuProfile().model_dump())
    location = cloudrun.location(PROJECT, REGION)
    emu.seed({"jobs": [{"name": f"{location}/jobs/{plan[r]['id']}", **plan[r]["body"]} for r in ("cpu_job", "gpu_job")],
              "services": [{"name": f"{location}/services/{plan['gpu_service']['id']}", **plan["gpu_service"]["body"]}]})
    emu.clear_requests()
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", emu.url)
    monkeypatch.setenv("GPUOPS_STATE_DIR", str(tmp_path / "state"))
    return SimpleNamespace(emu=emu, value=value, cr=cr, sm=secret_manager.connect(emu.url), name=name, first=first,
                           location=location)


def run(**kwargs) -> dict:
    from flows.migrate_secrets import migrate_secrets

    return migrate_secrets(**TARGET, **kwargs)


def writes(emu) -> list[str]:
    return [f"{r.method} {r.path}" for r in emu.requests() if r.method in WRITES]


def env_of(resource: dict) -> dict[str, dict]:
    from gpuops.secret_plan import template_containers

    return {e["name"]: e for c in template_containers(resource) for e in c.get("env", [])}


def serving(p) -> dict[str, int]:
    from gpuops.cloud_run_traffic import serving as shares

    return shares(cloudrun.get_service(p.cr, p.name))


def process_env(emu, revision: str) -> dict[str, str]:
    """The environment the emulator gave a revision's running process (what the app really sees)."""
    proc = next(p for p in emu.processes(running_only=True) if p["name"].endswith("/revisions/" + revision))
    raw = Path(f"/proc/{proc['pid']}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_dry_run_lists_names_and_changes_nothing(prefect_api, planted, capfd, artifact_text):
    result = run()

    assert result["execute"] is False
    assert [(r["name"], r["secret"], r["secret_state"]) for r in result["variables"]] == \
        [("API_KEY", SECRET, "absent")]  # GCP_SA_CREDENTIALS is a reference already
    assert sorted(result["variables"][0]["resources"]) == sorted([SERVICE, *IDS.values()])
    assert {i["id"]: i["action"] for i in result["resources"]} == {SERVICE: "switch", **{i: "switch" for i in IDS.values()}}
    assert any("deploy a revision" in s for s in result["plan"]) and "dry run" in result["notes"][0]
    assert writes(planted.emu) == []
    assert secret_manager.get_secret(planted.sm, SECRET_NAME) is None
    shown = json.dumps(result) + artifact_text(f"migrate-secrets-{SERVICE}") + "".join(capfd.readouterr())
    assert planted.value not in shown and "API_KEY" in shown


def test_execute_moves_the_value_switches_after_the_probe_and_a_second_run_changes_nothing(prefect_api, planted, capfd):
    result = run(execute=True)

    # The value is in Secret Manager, once, in a secret gpuops labelled.
    secret = secret_manager.get_secret(planted.sm, SECRET_NAME)
    assert secret["labels"]["managed-by"] == "gpuops"
    assert secret_manager.access(planted.sm, f"{SECRET_NAME}/versions/latest") == \
        (f"{SECRET_NAME}/versions/1", planted.value.encode())
    ref = {"valueSource": {"secretKeyRef": {"secret": SECRET, "version": "1"}}}

    # The service: a new revision on the reference serves everything, as LATEST did before; it was probed first.
    service = cloudrun.get_service(planted.cr, planted.name)
    new = service["template"]["revision"]
    assert serving(planted) == {new: 100} and new != planted.first
    assert service["traffic"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
    latest = cloudrun.get_revision(planted.cr, service["latestReadyRevision"])
    assert env_of(latest)["API_KEY"] == {"name": "API_KEY", **ref}
    assert env_of(latest)["GCP_BUCKET_NAME"]["value"] == "nca-toolkit-bucket-erec"  # the rest untouched
    checked = result["services"][SERVICE]["verified"]
    assert checked["passed"] and [r["status"] for r in checked["requests"]] == [200, 200, 200]
    assert process_env(planted.emu, new)["API_KEY"] == planted.value  # the app gets the value from Secret Manager

    # gpuops' GPU service and jobs: references too.
    gpu = cloudrun.get_service(planted.cr, f"{planted.location}/services/{IDS['gpu_service']}")
    assert env_of(cloudrun.get_revision(planted.cr, gpu["latestReadyRevision"]))["API_KEY"] == {"name": "API_KEY", **ref}
    for role in ("cpu_job", "gpu_job"):
        job = cloudrun.get_job(planted.cr, f"{planted.location}/jobs/{IDS[role]}")
        assert env_of(job)["API_KEY"] == {"name": "API_KEY", **ref}, role

    # Only the old revisions keep the plaintext, and the result says so and who removes them.
    assert planted.first in result["old_revisions_with_plaintext"]
    assert any("gpuops cleanup" in n for n in result["notes"])
    assert result["suspects_after"] == []

    planted.emu.clear_requests()
    again = run(execute=True)
    assert again["variables"] == [] and writes(planted.emu) == []
    assert {i["action"] for i in again["resources"]} == {"unchanged"}
    assert planted.value not in json.dumps([result, again]) + "".join(capfd.readouterr())


def test_a_failure_after_the_secret_was_made_leaves_the_service_serving_and_says_how_to_resume(
        prefect_api, planted, monkeypatch, capfd):
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "2")
    planted.emu.add_fault(method="PATCH", path=rf"/services/{SERVICE}$", status=500, times=50)

    with pytest.raises(CouldNotRun) as failed:
        run(execute=True)

    message = str(failed.value)
    assert "InternalServerError" in message and f"traffic stays on {planted.first}" in message
    assert f"Created in this run: secret {SECRET} (version 1)" in message
    assert "run the same command again" in message and f"gcloud secrets delete {SECRET}" in message
    assert serving(planted) == {planted.first: 100}  # the service serves as before
    assert "value" in env_of(cloudrun.get_service(planted.cr, planted.name))["API_KEY"]  # nothing half-switched
    job = cloudrun.get_job(planted.cr, f"{planted.location}/jobs/{IDS['cpu_job']}")
    assert "value" in env_of(job)["API_KEY"]  # jobs wait for the verified service
    assert secret_manager.access(planted.sm, f"{SECRET_NAME}/versions/latest")[0].endswith("/versions/1")

    planted.emu.clear_faults()
    resumed = run(execute=True)
    assert resumed["variables"][0]["version"] == "1"  # the secret made before is reused, no second version
    assert [v.name for v in planted.sm.client.list_secret_versions(parent=SECRET_NAME)] == [f"{SECRET_NAME}/versions/1"]
    assert planted.first not in serving(planted)
    assert planted.value not in message + json.dumps(resumed) + "".join(capfd.readouterr())


def test_a_revision_that_fails_its_probe_gets_no_traffic_and_the_next_run_resumes(prefect_api, planted):
    with pytest.raises(CheckFailed) as failed:
        run(execute=True, probe_path="/no-such-path", probe_requests=1)

    assert "did not pass its check" in str(failed.value) and "traffic was not moved" in str(failed.value)
    assert "HTTP 404" in str(failed.value)
    assert serving(planted) == {planted.first: 100}
    job = cloudrun.get_job(planted.cr, f"{planted.location}/jobs/{IDS['gpu_job']}")
    assert "value" in env_of(job)["API_KEY"]

    resumed = run(execute=True)
    actions = {i["id"]: i["action"] for i in resumed["resources"]}
    assert actions[SERVICE] == "resume"  # its template is on the reference; only traffic had to move
    service = cloudrun.get_service(planted.cr, planted.name)
    assert serving(planted) == {service["template"]["revision"]: 100}
    assert service["traffic"][0]["type"] == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"  # the form it had at first


def test_an_error_after_the_deploy_took_is_judged_by_the_verification(prefect_api, planted):
    planted.emu.add_fault(method="PATCH", path=rf"/services/{SERVICE}$", status=400, mode="after")  # answer lost

    result = run(execute=True)

    assert [(r.status, r.fault) for r in planted.emu.requests("PATCH", rf"/services/{SERVICE}$")][0] == (400, "after")
    assert result["services"][SERVICE]["verified"]["passed"]
    assert serving(planted) == {cloudrun.get_service(planted.cr, planted.name)["template"]["revision"]: 100}


def test_a_secret_gpuops_did_not_make_is_refused_unless_adopted(prefect_api, planted):
    planted.sm.client.create_secret(parent=f"projects/{PROJECT}", secret_id=SECRET,
                                    secret={"replication": {"automatic": {}}})

    with pytest.raises(CheckFailed, match=rf"secret {SECRET} exists and gpuops did not create it") as refused:
        run(execute=True)
    assert refused.value.details[0]["rule"] == "foreign-secret" and writes(planted.emu) == ["POST " + f"/v1/projects/{PROJECT}/secrets"]

    adopted = run(adopt=True)
    assert adopted["variables"][0]["secret_state"] == "foreign" and adopted["variables"][0]["adopted"]


def test_the_value_never_reaches_output_logs_artifacts_or_prefect_home(prefect_api, planted, tmp_path, artifact_text,
                                                                       capfd):
    """The CLI as a user runs it, in its own PREFECT_HOME, failing part way (a job update refused with 500s after
    the service moved: its exception is what Prefect persists), then the run that resumes it. The planted value
    is searched for everywhere, plain or base64."""
    home, state = tmp_path / "prefect-home", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
                "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "GPUOPS_CLOUD_RUN_API": planted.emu.url, "GPUOPS_STATE_DIR": str(state),
                "GPUOPS_RETRY_ATTEMPTS": "2", "GPUOPS_RETRY_INITIAL_S": "0.01",
                "GOOGLE_SDK_PYTHON_LOGGING_SCOPE": "google"})  # Google's clients log requests at DEBUG too
    script = ("import sys; from gpuops_cli import cli; m = 'gpuops_cli.secrets_cli'; "
              "cli.COMMAND_MODULES += () if m in cli.COMMAND_MODULES else (m,); sys.exit(cli.main(sys.argv[1:]))")
    argv = [sys.executable, "-c", script, "migrate-secrets", "--project", PROJECT, "--region", REGION,
            "--service", SERVICE, "--execute", "--json", "--verbose"]
    started = datetime.now(timezone.utc)
    planted.emu.add_fault(method="PATCH", path=rf"/jobs/{IDS['cpu_job']}$", status=500, times=50)

    failed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    planted.emu.clear_faults()
    resumed = run(execute=True)  # in this process: a second CLI start costs ~15 s here, and persists nothing

    assert failed.returncode == 3, failed.stderr[-2000:]
    answer = json.loads(failed.stdout)
    assert answer["error"] == "could-not-run" and "run the same command again" in answer["message"]
    assert f"Already on secret references: {SERVICE}" in answer["message"]
    assert {i["id"]: i["action"] for i in resumed["resources"]}[IDS["cpu_job"]] == "switch"
    assert secret_manager.access(planted.sm, f"{SECRET_NAME}/versions/latest")[1] == planted.value.encode()
    assert "Sending request" in failed.stderr  # Google's client did log its requests at DEBUG
    output = failed.stdout + failed.stderr + json.dumps(resumed) + "".join(capfd.readouterr())
    assert not holds(output.encode(), planted.value)  # plain or base64 (a request's payload.data is base64)
    for root in (home, state):
        assert root.is_dir() and not files_holding(root, planted.value), root
    assert not holds(server_record(started).encode(), planted.value)
    for key in (f"migrate-secrets-{SERVICE}", f"describe-{SERVICE}", f"env-{SERVICE}"):
        assert not holds(artifact_text(key).encode(), planted.value)


def test_cli_registers_migrate_secrets_dry_run_by_default():
    from gpuops_cli import secrets_cli

    parser = argparse.ArgumentParser(prog="gpuops")
    secrets_cli.register(parser.add_subparsers(dest="command"))
    base = ["migrate-secrets", "--project", PROJECT, "--region", REGION, "--service", SERVICE]
    args = parser.parse_args(base + ["--json"])
    assert (args.execute, args.adopt, args.json, args.probe_path, args.uses_prefect) == (False, False, True, "/healthz", True)
    assert parser.parse_args(base + ["--execute", "--adopt"]).execute is True
    assert parser.parse_args(base + ["--api-key-env", "PROBE_KEY"]).api_key_env == "PROBE_KEY"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--execute", "--dry-run"])
