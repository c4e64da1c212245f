"""Safe by default, as an operator meets it: `gpuops_cli.cli.main` in this process against the emulator and
the session's Prefect server. Bad input changes nothing; stale or foreign state is left alone; an
unexpected error puts traffic back on stable; every outcome is one exit code and one JSON object."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpuops import cloudrun, state
from gpuops_cli.cli import main
from gpuops.emulator import RunsUntilCancelled

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
TARGET = ["--project", P, "--region", R, "--service", S]
NAME = cloudrun.service_name(P, R, S)
GPU_SERVICE = f"{cloudrun.location(P, R)}/services/{S}-gpu"
FAST = ["--window-s", "0.3", "--probe-requests", "8", "--min-requests", "5"]


@pytest.fixture
def gpuops(capfd, monkeypatch):
    """Run `gpuops COMMAND --project .. --json ARGS`; returns (exit code, the one JSON object, stderr)."""
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")  # main() sets it only when unset

    def run(command: str, *args: str) -> tuple[int, dict, str]:
        capfd.readouterr()
        code = main([command, *TARGET, "--json", *args])
        out, err = capfd.readouterr()
        return code, json.loads(out), err  # json.loads: exactly one object, nothing else on stdout

    return run


def writes(emu) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in emu.requests() if r.method != "GET"]


def split_of(cr) -> dict:
    service = cloudrun.get_service(cr, NAME)
    return {cloudrun.short(t["revision"]): t.get("percent", 0) for t in service["traffic"] if t.get("revision")}


# --- 1. the whole request is checked before the first write ---------------------------------------

BAD_INVOCATIONS = [
    (["migrate", "--steps", "a,b"], "--steps"),
    (["migrate", "--window-s", "-1"], "--window-s"),
    (["migrate", "--max-instances", "abc"], "--max-instances"),
    (["canary", "--window-s", "-1"], "--window-s"),
    (["canary", "--window-s", "nan"], "--window-s"),
    (["canary", "--probe-requests", "-3"], "--probe-requests"),
    (["canary", "--min-requests", "-1"], "--min-requests"),
    (["canary", "--window-s", "1", "--probe-requests", "0", "--min-requests", "0"], "--probe-requests"),
    (["canary", "--probe-requests", "5", "--min-requests", "20"], "--min-requests"),
    (["canary", "--steps", "20,80"], "--steps"),
    (["canary", "--metrics", "cloudwatch"], "--metrics"),
    (["create-jobs", "--prefix", "Bad_Name"], "--prefix"),
    (["create-jobs", "--prefix", "../x"], "--prefix"),
    (["create-jobs", "--prefix", "a b"], "--prefix"),
    (["create-jobs", "--cpu", "abc"], "--cpu"),
    (["create-jobs", "--memory", "32Gb"], "--memory"),
    (["create-jobs", "--max-instances", "-5"], "--max-instances"),
    (["smoke-test", "--min-vram-gib", "-1"], "--min-vram-gib"),
    (["rollback", "--to", "svc/../x"], "--to"),
]


@pytest.mark.parametrize("args, flag", BAD_INVOCATIONS, ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_a_bad_invocation_exits_2_naming_the_flag_and_writes_nothing(gpuops, seeded_cloud_run, prefect_api,
                                                                    args, flag):
    code, answer, err = gpuops(*args)
    assert (code, answer["error"], answer["exit_code"]) == (2, "bad-input", 2)
    assert flag in answer["message"]
    assert writes(seeded_cloud_run) == []


# --- 2. never stale, never foreign -----------------------------------------------------------------

def deploy_unrelated_release(cr) -> str:
    """Someone else's ordinary deploy: a new revision that takes all the traffic."""
    spec = cloudrun.service_spec(cloudrun.get_service(cr, NAME))
    spec["template"]["labels"] = {"release": "theirs"}
    spec["template"].pop("revision", None)
    spec["traffic"] = [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
    return cloudrun.short(cloudrun.update_service(cr, NAME, spec)["latestReadyRevision"])


def test_rollback_after_an_unrelated_deploy_refuses_and_to_moves_only_when_named(gpuops, seeded_cloud_run,
                                                                                  prefect_api):
    assert gpuops("describe")[0] == 0  # the snapshot a rollback without canary state would go back to
    cr = cloudrun.connect()
    first = cloudrun.short(cloudrun.get_service(cr, NAME)["latestReadyRevision"])
    second = deploy_unrelated_release(cr)
    before = cloudrun.get_service(cr, NAME)
    seeded_cloud_run.clear_requests()

    code, answer, _ = gpuops("rollback")
    assert (code, answer["error"]) == (1, "check-failed")
    assert "changed since the describe snapshot" in answer["message"] and "--to REVISION" in answer["message"]
    assert f"latest ready revision {first} -> {second}" in answer["message"]
    assert cloudrun.get_service(cr, NAME) == before and writes(seeded_cloud_run) == []

    code, answer, _ = gpuops("rollback", "--to", first)
    assert code == 0 and answer["stable"] == first
    assert split_of(cr) == {first: 100}


def test_rollback_to_a_revision_the_service_does_not_have_is_bad_input(gpuops, seeded_cloud_run, prefect_api):
    code, answer, _ = gpuops("rollback", "--to", f"{S}-99999-zzz")
    assert code == 2 and "is not a revision of" in answer["message"]
    assert writes(seeded_cloud_run) == []


def foreign_gpu_service(cr) -> dict:
    """A `<service>-gpu` someone made by hand: no managed-by=gpuops label."""
    body = {"template": {"containers": [{"image": "us-docker.pkg.dev/theirs/app:1",
                                         "env": [{"name": "MODE", "value": "theirs"}]}]}}
    return cloudrun.create_service(cr, GPU_SERVICE, body)


def test_create_jobs_leaves_a_foreign_gpu_service_unchanged_and_adopts_it_only_when_told(gpuops, seeded_cloud_run,
                                                                                       prefect_api):
    cr = cloudrun.connect()
    foreign_gpu_service(cr)
    before = json.dumps(cloudrun.get_service(cr, GPU_SERVICE), sort_keys=True)
    seeded_cloud_run.clear_requests()

    code, answer, _ = gpuops("create-jobs")
    assert (code, answer["error"]) == (1, "check-failed")
    [refusal] = answer["details"]
    assert refusal["rule"] == "foreign-resource" and f"{S}-gpu" in refusal["message"] and "--adopt" in refusal["fix"]
    assert json.dumps(cloudrun.get_service(cr, GPU_SERVICE), sort_keys=True) == before
    assert writes(seeded_cloud_run) == []  # refused before the first write: no job was created either

    code, answer, _ = gpuops("create-jobs", "--adopt")
    assert code == 0
    assert {r["id"]: r["action"] for r in answer["resources"]}[f"{S}-gpu"] == "updated"
    adopted = cloudrun.get_service(cr, GPU_SERVICE)
    assert adopted["labels"]["managed-by"] == "gpuops"
    assert adopted["template"]["nodeSelector"]["accelerator"] == "nvidia-l4"


def test_a_deploy_landing_between_the_canarys_read_and_write_is_not_overwritten(gpuops, gpu_cloud_run,
                                                                                prefect_api):
    cr = cloudrun.connect()
    # The second PATCH is the shift to 20%; the race writes another deploy just before it applies.
    theirs = {"template": {"revision": None, "labels": {"release": "theirs"}},
              "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]}
    gpu_cloud_run.add_fault("PATCH", f"/services/{S}$", mode="race", race=theirs, skip=1)

    code, answer, _ = gpuops("canary", *FAST)
    assert (code, answer["error"]) == (1, "check-failed")
    assert "changed during its canary" in answer["message"]
    service = cloudrun.get_service(cr, NAME)
    assert service["template"]["labels"] == {"release": "theirs"}
    assert service["traffic"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]


def test_rollback_cancels_the_executions_gpuops_started_and_leaves_the_others(gpuops, seeded_cloud_run,
                                                                            prefect_api):
    assert gpuops("create-jobs")[0] == 0
    seeded_cloud_run.runner = runner = RunsUntilCancelled()
    cr = cloudrun.connect()
    job = cloudrun.job_name(P, R, f"{S}-gpu-job")
    ours, theirs = (cloudrun.run_job(cr, job)["name"] for _ in range(2))
    state.record_started_execution(ours)  # as the smoke test does for the execution it starts

    code, answer, _ = gpuops("rollback")
    assert code == 0
    assert runner.cancelled == [ours]
    assert f"left execution {cloudrun.short(theirs)} running: gpuops did not start it" in answer["changed"]
    assert not cloudrun.execution_finished(cloudrun.get_execution(cr, theirs))


# --- 3 and 4. an unexpected error is a failed check, and says so in one object ---------------------

def test_an_error_in_a_canary_step_puts_traffic_back_on_stable_and_exits_3(gpuops, gpu_cloud_run, prefect_api):
    cr = cloudrun.connect()
    stable = cloudrun.short(cloudrun.get_service(cr, NAME)["latestReadyRevision"])
    # deploy and the 20% shift go through; the shift to 80% meets an error no retry fixes.
    gpu_cloud_run.add_fault("PATCH", f"/services/{S}$", status=400, message="injected", skip=2)

    code, answer, err = gpuops("canary", *FAST)
    assert (code, answer["error"], answer["exit_code"]) == (3, "could-not-run", 3)
    assert "traffic is back on the stable revision" in answer["message"]
    assert split_of(cr)[stable] == 100 and sum(split_of(cr).values()) == 100


def test_an_api_failing_every_retry_mid_canary_exits_3_and_rollback_finishes_the_job(gpuops, gpu_cloud_run,
                                                                                   prefect_api):
    cr = cloudrun.connect()
    stable = cloudrun.short(cloudrun.get_service(cr, NAME)["latestReadyRevision"])
    gpu_cloud_run.add_fault("PATCH", f"/services/{S}$", status=503, times=1000, skip=2)

    code, answer, _ = gpuops("canary", *FAST)
    assert (code, answer["error"]) == (3, "could-not-run")
    assert "putting traffic back on stable failed too" in answer["message"]
    assert "gpuops rollback" in answer["message"]
    assert split_of(cr)[stable] == 80  # where the canary was: its state on the service says so

    gpu_cloud_run.clear_faults()
    code, answer, _ = gpuops("rollback")
    assert code == 0 and answer["stable"] == stable and split_of(cr)[stable] == 100


# Tracebacks on stderr are judged in a subprocess, as a user sees them: in this process, Prefect's
# console handler still holds the stderr pytest captured for an earlier test.

def cli(emu, prefect_api: str, tmp_path, *args: str) -> tuple[int, dict, str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "GPUOPS_CLOUD_RUN_API": emu.url, "GPUOPS_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "gpuops_cli.cli", *args, *TARGET, "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout), done.stderr


def test_a_read_failing_every_retry_exits_3_with_one_line_and_one_json_object(seeded_cloud_run, prefect_api,
                                                                             tmp_path):
    seeded_cloud_run.add_fault("GET", f"/services/{S}$", status=503, times=1000)
    code, answer, err = cli(seeded_cloud_run, prefect_api, tmp_path, "describe")
    assert (code, answer["error"], answer["details"]) == (3, "could-not-run", [])
    assert "ServiceUnavailable" in answer["message"]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"gpuops: {answer['message']}"


def test_an_unreachable_prefect_exits_3_with_one_json_object(seeded_cloud_run, tmp_path):
    code, answer, err = cli(seeded_cloud_run, "http://127.0.0.1:1/api", tmp_path, "describe")
    assert (code, answer["error"]) == (3, "could-not-run")
    assert "127.0.0.1:1" in answer["message"] and "Traceback" not in err
