"""describe-revision and create-jobs as Prefect flows, on a real Prefect server and the emulator."""
import json

import pytest

from blocks.cloud_run_blocks import GpuProfile
from flows.create_jobs import create_jobs
from flows.describe_revision import describe_revision
from gpuops import cloudrun, job_plan
from gpuops.errors import BadInput, CheckFailed

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
SECRET_VALUE = "test123"  # the seeded plaintext API_KEY


@pytest.fixture
def emu(prefect_api, seeded_cloud_run):
    return seeded_cloud_run


def writes(emu):
    return [r for r in emu.requests() if r.method in ("POST", "PATCH", "DELETE")]


def test_describe_reports_six_names_the_plaintext_secret_and_no_value(emu, artifact_text):
    summary = describe_revision(P, R, S)
    assert summary["env_names"] == [
        "API_KEY", "GCP_BUCKET_NAME", "STORAGE_PATH", "GUNICORN_TIMEOUT", "GUNICORN_WORKERS", "GCP_SA_CREDENTIALS"]
    assert summary["plaintext_secret_suspects"] == ["API_KEY"]
    assert summary["secret_env"][0]["name"] == "GCP_SA_CREDENTIALS"
    assert (summary["execution_environment"], summary["cpu"], summary["memory"]) == ("gen2", "8", "32Gi")
    assert summary["concurrency"] == 80 and summary["traffic"][0]["percent"] == 100
    assert "emulator" in summary["api"]
    assert SECRET_VALUE not in json.dumps(summary)
    with open(summary["snapshot_path"]) as f:
        assert SECRET_VALUE not in f.read()
    markdown = artifact_text(f"describe-{S}")
    assert "API_KEY" in markdown and SECRET_VALUE not in markdown
    assert writes(emu) == []


def test_create_jobs_twice_leaves_exactly_three_resources_with_the_planned_bodies(emu):
    first = create_jobs(P, R, S)
    assert [r["action"] for r in first["resources"]] == ["created", "created", "created"]
    assert first["findings"][0]["subject"] == "API_KEY"
    second = create_jobs(P, R, S)
    assert [r["action"] for r in second["resources"]] == ["unchanged"] * 3

    cr = cloudrun.connect()
    loc = cloudrun.location(P, R)
    jobs = sorted(j["name"] for j in cr_list(cr.jobs.list_jobs, loc))
    services = sorted(s["name"] for s in cr_list(cr.services.list_services, loc))
    assert jobs == [f"{loc}/jobs/{S}-cpu-job", f"{loc}/jobs/{S}-gpu-job"]
    assert services == [f"{loc}/services/{S}", f"{loc}/services/{S}-gpu"]
    assert len(cloudrun.list_revisions(cr, f"{loc}/services/{S}-gpu")) == 1

    gpu_job = cloudrun.get_job(cr, f"{loc}/jobs/{S}-gpu-job")
    task = gpu_job["template"]["template"]
    assert task["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert task["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {e["name"] for e in task["containers"][0]["env"]} >= {"API_KEY", "GCP_SA_CREDENTIALS"}
    gpu_service = cloudrun.get_service(cr, f"{loc}/services/{S}-gpu")
    assert gpu_service["template"]["maxInstanceRequestConcurrency"] == 1
    assert gpu_service["template"]["timeout"] == "1800s"


def cr_list(method, parent):
    return [cloudrun.to_dict(x) for x in method(parent=parent)]


def test_a_changed_profile_updates_in_place(emu):
    create_jobs(P, R, S)
    changed = create_jobs(P, R, S, gpu_profile=GpuProfile(max_instances=5))
    assert [r["action"] for r in changed["resources"]] == ["unchanged", "unchanged", "updated"]


def test_two_cpu_with_an_l4_is_refused_before_any_api_call(emu):
    with pytest.raises(CheckFailed, match=r"gpu-min-cpu.*at least 4"):
        create_jobs(P, R, S, gpu_profile=GpuProfile(cpu="2"))
    assert emu.requests() == []


def test_a_region_without_gpus_is_refused_before_any_api_call(emu):
    with pytest.raises(CheckFailed, match="gpu-region"):
        create_jobs(P, "asia-northeast1", S)
    assert emu.requests() == []


def test_dry_run_shows_redacted_bodies_and_changes_nothing(emu):
    result = create_jobs(P, R, S, dry_run=True)
    assert set(result["bodies"]) == {"cpu_job", "gpu_job", "gpu_service"}
    text = json.dumps(result)
    assert SECRET_VALUE not in text and job_plan.REDACTED in text
    assert writes(emu) == []


def test_require_secret_refs_refuses_the_plaintext_api_key(emu):
    with pytest.raises(CheckFailed, match="API_KEY"):
        create_jobs(P, R, S, require_secret_refs=True)
    assert writes(emu) == []


def test_an_unknown_service_is_bad_input_naming_the_flags(emu):
    with pytest.raises(BadInput, match="--service"):
        describe_revision(P, R, "no-such-service")
