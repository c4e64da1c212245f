"""gpuops-cloud-run-gpu end to end: prefect-gcp's Cloud Run v2 worker code against the emulator, running
the real `run-app` flow (GPU check, the app from its repository at the SHA, app.log in the bucket, the
output published to the Hub emulator)."""

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[2]
POOL_FILE = ROOT / "deployments" / "work_pools" / "gpuops-cloud-run-gpu.json"
PROJECT, REGION = "gpuops-test", "europe-west4"


@pytest.fixture(scope="module")
def pool_emulator(hf_hub_emulator, tmp_path_factory):
    """The emulator running job tasks as local processes: the fake nvidia-smi (an L4 reading), this venv's
    bin (where `prefect` is, as in Prefect's image) and uv (the source runtime's `uv sync`) on their PATH.

    The Hub token reaches the task from here, not from a job variable: job variables are stored in
    Prefect's database and sent in the job body. On Google the pool's `env_from_secrets` would name a
    Secret Manager secret (a reference in the body, the value injected by Cloud Run); the emulator
    renders such a reference as a placeholder and has no Secret Manager, so its `extra_env` (what
    every task process gets from the platform, under the container's own env) stands in for it.
    """
    from gpuops.demo_app_repo import uv_dir
    from gpuops.emulator import CloudRunEmulator
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading

    bin_dir = str(tmp_path_factory.mktemp("fake-gpu-bin"))
    install_fake_nvidia_smi(bin_dir, recorded_reading("l4"))
    assert uv_dir(), "uv is neither on the PATH nor bootstrapped by make: the source runtime needs it"
    # uv's folder last: make's bootstrap holds a `python` too, and `prefect` must run on this venv's.
    with CloudRunEmulator(run_workloads=True, extra_path=[bin_dir, str(Path(sys.executable).parent), uv_dir()],
                          extra_env={"GPUOPS_EMULATED_GPU": "1", "HF_TOKEN": hf_hub_emulator.write_token}
                          ) as emulator:
        yield emulator


def test_the_worker_type_is_registered_and_unset_endpoint_is_google(monkeypatch):
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker
    from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

    from workers.cloud_run_endpoint_worker import WORKER_TYPE, GpuopsCloudRunWorkerV2, cloud_run_endpoint

    assert lookup_type(BaseWorker, WORKER_TYPE) is GpuopsCloudRunWorkerV2
    assert lookup_type(BaseWorker, "cloud-run-v2") is CloudRunWorkerV2  # prefect-gcp's own, untouched
    monkeypatch.delenv("GPUOPS_CLOUD_RUN_API", raising=False)
    assert cloud_run_endpoint() is None
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", "http://127.0.0.1:1")
    assert cloud_run_endpoint() == "http://127.0.0.1:1"


def test_the_emulator_answers_what_prefect_gcps_models_read(fresh_cloudrun_emulator, monkeypatch):
    """JobV2.get reads latestCreatedExecution right after a create, ExecutionV2.get reads parallelism and
    logUri: keys Google always sends, through the worker's own discovery client."""
    from prefect_gcp.credentials import GcpCredentials
    from prefect_gcp.models.cloud_run_v2 import ExecutionV2, JobV2
    from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration

    from workers.cloud_run_endpoint_worker import GpuopsCloudRunWorkerV2

    emu = fresh_cloudrun_emulator
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", emu.url)
    config = CloudRunWorkerJobV2Configuration(
        credentials=GcpCredentials(service_account_info=emu.service_account_key(), project=PROJECT),
        job_body={"template": {"template": {"containers": [{"image": "img:1", "command": ["true"]}]}}})
    cr = GpuopsCloudRunWorkerV2._get_client(config)
    JobV2.create(cr, PROJECT, REGION, "pool-check", config.job_body)
    job = JobV2.get(cr, PROJECT, REGION, "pool-check")
    assert job.is_ready() and job.latestCreatedExecution == {} and job.executionCount == 0
    execution = ExecutionV2.get(cr, JobV2.run(cr, PROJECT, REGION, "pool-check")["metadata"]["name"])
    assert (execution.parallelism, execution.taskCount) == (1, 1)
    assert execution.logUri.startswith(f"https://console.cloud.google.com/logs/viewer?project={PROJECT}&")
    assert "pool-check" in execution.logUri and not execution.is_running() and execution.succeeded()
    assert JobV2.get(cr, PROJECT, REGION, "pool-check").latestCreatedExecution["name"] == execution.name


IMAGE = "us-docker.pkg.dev/gpuops-test/apps/run-app:emulated"
BUCKET = "gpuops-status"
HF_REPO = "demo/app-output"
# The app's command, run by run-app in the checkout: it names the Cloud Run job it ran in and whether
# the Hub token reached it (run-app withholds it from the app), then runs the demo app on the checkout's
# .venv (made by `uv sync`), as run-app's own `python main.py` does.
APP_COMMAND = ["sh", "-c", 'echo "app: in cloud run job $CLOUD_RUN_JOB, HF_TOKEN ${HF_TOKEN:-withheld}"; '
                           "exec .venv/bin/python main.py"]


def _job_variables(emulator, env: dict[str, str]) -> dict:
    """The pool's job variables for a run on the emulator, `env` the task's plain variables."""
    return {
        # A well-formed key made by the emulator, never sent anywhere: GcpCredentials needs one to build
        # offline, and the worker sends no credentials to an http:// endpoint. (A saved block as
        # {"$ref": {"block_document_id": ...}} is refused with 422 by the server: it is valid under both
        # branches of the template's oneOf for `credentials`.)
        "credentials": {"service_account_info": emulator.service_account_key(), "project": PROJECT},
        "region": REGION,
        "image": IMAGE,
        "gpu_zonal_redundancy_disabled": True,
        "keep_job": True,  # so the job the emulator stored can be read back
        "env": env,
    }


async def _deploy_and_run(pool_name: str, entrypoint: str, flow_name: str, parameters: dict,
                          job_variables: dict, wait_s: float = 120) -> tuple[str, object]:
    """Create a pool from the pool file, deploy `entrypoint` on it, run it once through
    GpuopsCloudRunWorkerV2 and wait (bounded) for the flow run's final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from workers.cloud_run_endpoint_worker import WORKER_TYPE, GpuopsCloudRunWorkerV2

    # The pool file as written (type gpuops-cloud-run-v2, this worker's), under a name of its own on the
    # shared server.
    pool = json.loads(POOL_FILE.read_text())
    assert pool["type"] == WORKER_TYPE
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=pool_name, type=pool["type"],
                                                     base_job_template=pool["base_job_template"]))
        flow_id = await client.create_flow_from_name(flow_name)
        # prefect.yaml's pull step as `prefect deploy` stores it with GPUOPS_HOME set to this checkout: the
        # task runs the code in place (a deployment `path` instead makes `prefect flow-run execute` copy the
        # whole checkout, .venv included, into a temporary folder first: ~25 s here).
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"{flow_name}-{pool_name}", work_pool_name=pool_name, entrypoint=entrypoint,
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
            job_variables=job_variables)
        flow_run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        # Leaving the worker's context waits for its run: the worker follows the Cloud Run execution to its end.
        async with GpuopsCloudRunWorkerV2(work_pool_name=pool_name, prefetch_seconds=30) as worker:
            await worker.get_and_submit_flow_runs()
        # The flow run's own final state (reported by `prefect flow-run execute` in the task process).
        deadline = time.monotonic() + wait_s
        while not flow_run.state.is_final() and time.monotonic() < deadline:
            await asyncio.sleep(1)
            flow_run = await client.read_flow_run(flow_run.id)
        return str(flow_run.id), flow_run


def _built_job(sha: str) -> None:
    """The job's status.json as build-run-publish leaves it before starting run-app: build Succeeded."""
    from datetime import datetime, timezone

    from gpuops import job_status as js
    from gpuops.status_store import StatusStore

    now = datetime.now(timezone.utc)
    doc = js.transition(js.transition(js.new_status(sha, now), "build", js.RUNNING, now), "build", js.SUCCEEDED, now)
    assert StatusStore.from_env().create(doc)


def test_a_run_app_flow_run_on_the_gpu_pool_completes_through_the_emulator(
        prefect_api, pool_emulator, status_bucket, fresh_hf_hub, monkeypatch, tmp_path):
    import boto3

    from gpuops.demo_app_repo import make_app_repo
    from gpuops.status_store import StatusStore

    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", pool_emulator.url)
    pool_emulator.clear_requests()
    sha = make_app_repo(tmp_path / "app")
    _built_job(sha)
    task_env = {  # plain values only: the Hub token comes from the platform (see pool_emulator)
        "GPUOPS_S3_ENDPOINT": status_bucket.url, "GPUOPS_STATUS_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1", "HF_ENDPOINT": fresh_hf_hub.url,
        "GPUOPS_WORKDIR": str(tmp_path / "jobs")}
    parameters = {"job_id": sha, "repo": str(tmp_path / "app"), "sha": sha, "ref": "main", "runtime": "source",
                  "app_command": APP_COMMAND, "need_vram_gib": 16, "min_compute_cap": "8.0",
                  "hf_repo": HF_REPO, "app_timeout_s": 60}

    flow_run_id, flow_run = asyncio.run(_deploy_and_run(
        f"gpuops-cloud-run-gpu-{uuid.uuid4().hex[:8]}", "flows/run_app.py:run_app", "run-app", parameters,
        _job_variables(pool_emulator, task_env)))

    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["job_id"] == sha
    # status.json: run Succeeded, its artifact the Hub commit, which holds the app's output.
    doc = StatusStore.from_env().read(sha)
    assert (doc["build"]["status"], doc["run"]["status"], doc["overallStatus"]) == ("Succeeded",) * 3
    (commit, *_) = fresh_hf_hub.commits(HF_REPO)
    assert doc["run"]["artifactUrl"] == f"{fresh_hf_hub.url}/{HF_REPO}/commit/{commit['oid']}"
    assert sha in commit["title"]
    assert json.loads(fresh_hf_hub.files(HF_REPO)["result.json"]) == {"steps": 3, "gpu": "NVIDIA L4"}
    # app.log in the bucket: the GPU check against the emulated L4, the install, then the app's own lines.
    s3 = boto3.session.Session().client("s3", endpoint_url=status_bucket.url, region_name="us-east-1")
    app_log = s3.get_object(Bucket=BUCKET, Key=f"{sha}/app.log")["Body"].read().decode()
    assert "gpu-check: NVIDIA L4 23034 MiB compute 8.9 (EMULATED reading)" in app_log, app_log
    assert "gpu-check: pass (need 16.0 GiB, compute >= 8.0)" in app_log
    assert "Creating virtual environment" in app_log  # `uv sync --frozen` ran in the task
    assert "app: starting on GPU 'NVIDIA L4'" in app_log and "app: step 3/3" in app_log
    assert "app: wrote result.json" in app_log and "publish: 2 files in one commit" in app_log
    assert app_log.index("gpu-check: pass") < app_log.index("Creating virtual environment") < app_log.index(
        "app: starting")

    # The job body the emulator received, field by field.
    jobs, _ = pool_emulator.state.jobs.list(f"projects/{PROJECT}/locations/{REGION}")
    assert len(jobs) == 1
    job = json_format.MessageToDict(jobs[0])
    assert job["client"] == "prefect" and job["launchStage"] == "BETA"
    assert job["labels"]["prefect-io-flow-run-id"] == flow_run_id
    task = job["template"]["template"]
    assert task["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert task["gpuZonalRedundancyDisabled"] is True
    assert task["maxRetries"] == 0 and task["timeout"] == "600s"
    assert "serviceAccount" not in task and "vpcAccess" not in task
    (container,) = task["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert container["command"] == ["prefect", "flow-run", "execute"] and "args" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The job variables' env as given, and the worker's own Prefect settings (the test harness's among them).
    assert {k: v for k, v in env.items() if not k.startswith("PREFECT_")} == task_env
    assert env["PREFECT__FLOW_RUN_ID"] == flow_run_id and env["PREFECT_API_URL"] == prefect_api
    assert env["PREFECT__DEPLOYMENT_ID"] == str(flow_run.deployment_id)
    assert all("valueSource" not in e for e in container["env"])
    assert "HF_TOKEN" not in env and fresh_hf_hub.write_token not in json.dumps(job)

    # The worker's calls, in order: create, wait until ready, run once, then follow the execution (the one
    # the emulator ran as a local process) until it ended; keep_job, so no DELETE.
    execution_name = job["latestCreatedExecution"]["name"]
    job_path = f"/v2/{job['name']}"
    calls = [(r.method, r.path.removeprefix(job_path)) for r in pool_emulator.requests()]
    assert [c for i, c in enumerate(calls) if i == 0 or c != calls[i - 1]] == [
        ("POST", f"/v2/projects/{PROJECT}/locations/{REGION}/jobs"), ("GET", ""), ("POST", ":run"),
        ("GET", f"/executions/{execution_name.rsplit('/', 1)[-1]}")]
    assert calls.count(("POST", ":run")) == 1
    job = json_format.MessageToDict(pool_emulator.state.jobs.get(job["name"]))
    assert job["latestCreatedExecution"]["completionStatus"] == "EXECUTION_SUCCEEDED"
    output = pool_emulator.logs(execution_name)
    assert "gpu-check: NVIDIA L4" in output and "app: step 3/3" in output, output
    # The app ran inside that Cloud Run job's task, without the token run-app holds for publishing.
    assert f"app: in cloud run job {job['name'].rsplit('/', 1)[-1]}, HF_TOKEN withheld" in app_log
    assert fresh_hf_hub.write_token not in app_log + output
