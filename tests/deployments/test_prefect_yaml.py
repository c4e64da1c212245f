"""prefect.yaml deploys on a real Prefect server, and the UI form gets typed, described parameters."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployed(prefect_api):
    """`python -m deployments.apply` then `prefect deploy --all`, as an operator runs them, once per module."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "GPUOPS_HOME": str(ROOT)}
    applied = subprocess.run([sys.executable, "-m", "deployments.apply"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    return prefect_api


def test_prefect_deploy_all_creates_every_deployment_with_a_described_form(deployed):
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"describe-revision", "create-jobs", "gpu-smoke-test", "canary-shift", "rollback", "cleanup",
            "migrate-to-gpu", "build-run-publish", "run-app"} <= set(deployments)
    assert deployments["run-app"].work_pool_name == "gpuops-cloud-run-gpu"  # the run stage goes to the GPU pool
    assert deployments["canary-shift"].parameters == {"approve_final": True}
    create = deployments["create-jobs"]
    assert create.parameters == {"dry_run": True}  # destructive-ish work is a dry run unless asked
    assert create.work_pool_name == "gpuops-process"
    properties = create.parameter_openapi_schema["properties"]
    for name in ("project", "region", "service", "gpu_profile", "dry_run", "require_secret_refs"):
        assert properties[name].get("description"), f"{name} has no description in the UI form"
    assert properties["dry_run"]["type"] == "boolean"


def test_a_git_push_event_starts_the_pipeline_with_its_repo_ref_and_sha(deployed):
    """The deployment trigger in prefect.yaml: a `gpuops.git.push` event posted to the events API (as the hub
    or a script does) creates a build-run-publish flow run with the event's repo, ref and SHA."""
    import time
    import uuid

    import httpx
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.states import Cancelled

    sha = uuid.uuid4().hex + "abcdef01"
    event = {"id": str(uuid.uuid4()), "occurred": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "event": "gpuops.git.push", "resource": {"prefect.resource.id": "gpuops.repo.my-org/app"},
             "payload": {"repo": "https://github.com/my-org/app.git", "ref": "main", "sha": sha}}
    posted = httpx.post(f"{deployed}/events", json=[event], timeout=10)
    assert posted.status_code == 204, posted.text

    wanted = DeploymentFilter(name=DeploymentFilterName(any_=["build-run-publish"]))
    with get_client(sync_client=True) as client:
        deadline, runs = time.monotonic() + 60, []
        while time.monotonic() < deadline and not runs:
            runs = [r for r in client.read_flow_runs(deployment_filter=wanted) if r.parameters.get("sha") == sha]
            time.sleep(0.5)
        assert len(runs) == 1, "the trigger did not create exactly one flow run within 60 s"
        assert runs[0].parameters == {"repo": "https://github.com/my-org/app.git", "ref": "main", "sha": sha}
        client.set_flow_run_state(runs[0].id, Cancelled(message="test: nothing polls gpuops-process"), force=True)
