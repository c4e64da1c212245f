"""prefect.yaml deploys on a real Prefect server, and the UI form gets typed, described parameters."""
import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_deploy_all_creates_every_deployment_with_a_described_form(prefect_api):
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "GPUOPS_HOME": str(ROOT)}
    applied = subprocess.run([sys.executable, "-m", "deployments.apply"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"describe-revision", "create-jobs", "gpu-smoke-test", "canary-shift", "rollback", "cleanup",
            "migrate-to-gpu"} <= set(deployments)
    assert deployments["canary-shift"].parameters == {"approve_final": True}
    create = deployments["create-jobs"]
    assert create.parameters == {"dry_run": True}  # destructive-ish work is a dry run unless asked
    assert create.work_pool_name == "gpuops-process"
    properties = create.parameter_openapi_schema["properties"]
    for name in ("project", "region", "service", "gpu_profile", "dry_run", "require_secret_refs"):
        assert properties[name].get("description"), f"{name} has no description in the UI form"
    assert properties["dry_run"]["type"] == "boolean"
