"""The three request bodies, planned from a live revision."""
import json

from google.cloud import run_v2

from blocks.cloud_run_blocks import GpuProfile
from gpuops import job_plan
from gpuops.cloudrun import from_dict
from gpuops.gpu_rules import check

REVISION = {
    "name": "projects/p-123456/locations/us-central1/services/svc/revisions/svc-00009-gwx",
    "serviceAccount": "sa@p-123456.iam.gserviceaccount.com",
    "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN2",
    "containers": [{
        "image": "us-docker.pkg.dev/p/r/app:1",
        "ports": [{"containerPort": 8080}],
        "resources": {"limits": {"cpu": "8", "memory": "32Gi"}},
        "env": [
            {"name": "API_KEY", "value": "test123"},
            {"name": "STORAGE_PATH", "value": "GCP"},
            {"name": "DB", "valueSource": {"secretKeyRef": {"secret": "db", "version": "3"}}},
        ],
    }],
}


def planned(**profile):
    return job_plan.plan(REVISION, "svc", GpuProfile(**profile).model_dump())


def test_three_resources_named_after_the_service_with_google_valid_bodies():
    plan = planned()
    assert {r: i["id"] for r, i in plan.items()} == {
        "cpu_job": "svc-cpu-job", "gpu_job": "svc-gpu-job", "gpu_service": "svc-gpu"}
    from_dict(run_v2.Job, plan["cpu_job"]["body"])
    from_dict(run_v2.Job, plan["gpu_job"]["body"])
    from_dict(run_v2.Service, plan["gpu_service"]["body"])


def test_cpu_job_keeps_the_source_size_and_the_runbook_job_settings():
    body = planned()["cpu_job"]["body"]
    task = body["template"]["template"]
    assert body["template"]["taskCount"] == 1
    assert task["maxRetries"] == 3 and task["timeout"] == "1800s"
    assert task["containers"][0]["resources"] == {"limits": {"cpu": "8", "memory": "32Gi"}}
    assert "nodeSelector" not in task and "ports" not in task["containers"][0]


def test_gpu_job_and_service_carry_the_gpu_and_the_same_image_env_and_account():
    plan = planned(gpu_zonal_redundancy=False)
    for role in ("gpu_job", "gpu_service"):
        template = plan[role]["body"]["template"]
        template = template.get("template", template)
        container = template["containers"][0]
        assert template["nodeSelector"] == {"accelerator": "nvidia-l4"}
        assert template["gpuZonalRedundancyDisabled"] is True
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["image"] == "us-docker.pkg.dev/p/r/app:1"
        assert container["env"] == REVISION["containers"][0]["env"]
        assert template["serviceAccount"] == REVISION["serviceAccount"]


def test_gpu_service_has_concurrency_one_no_cpu_throttling_and_passes_the_rules():
    body = planned()["gpu_service"]["body"]
    template = body["template"]
    assert template["maxInstanceRequestConcurrency"] == 1
    assert template["containers"][0]["resources"]["cpuIdle"] is False
    assert template["scaling"]["maxInstanceCount"] == 3
    assert check(job_plan.gpu_spec_of(body), "us-central1").ok


def test_redact_hides_every_plaintext_value_and_keeps_secret_references():
    plan = planned()
    text = json.dumps([job_plan.redact(i["body"]) for i in plan.values()])
    assert "test123" not in text and "GCP\"" not in text
    assert text.count(job_plan.REDACTED) == 6  # two plaintext values in each of three bodies
    assert '"secret": "db"' in text
    assert "test123" in json.dumps(plan["gpu_job"]["body"])  # the original is untouched


def test_plaintext_secret_is_carried_with_a_finding_or_refused_on_request():
    violations, findings = job_plan.secret_findings(["API_KEY"], require_refs=False)
    assert violations == [] and findings[0]["subject"] == "API_KEY"
    violations, findings = job_plan.secret_findings(["API_KEY"], require_refs=True)
    assert violations[0].rule == "secret-refs-required" and findings == []


def test_the_dry_run_shows_each_body_redacted_and_foreign_resources_are_named():
    plan = planned()
    text = job_plan.dry_run_markdown(plan, ["max instances 1"], "emulator")
    assert text.startswith("# create-jobs dry run (nothing changed)") and "- warning: max instances 1" in text
    assert "## gpu_job: job `svc-gpu-job`" in text and "test123" not in text and job_plan.REDACTED in text
    ours = {"labels": dict([job_plan.MANAGED_BY])}
    current = {"cpu_job": None, "gpu_job": ours, "gpu_service": {"labels": {"team": "ml"}}}
    [refusal] = job_plan.foreign(plan, current)
    assert (refusal.rule, refusal.field) == ("foreign-resource", "gpu_service") and "svc-gpu" in refusal.message
