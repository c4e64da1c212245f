"""gpuops-cloud-run-gpu end to end: prefect-gcp's Cloud Run v2 worker code against the emulator."""

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
def pool_emulator(tmp_path_factory):
    """The emulator running job tasks as local processes: the fake nvidia-smi (an L4 reading) and this
    venv's bin (where `prefect` is, as in Prefect's image) first on their PATH."""
    from gpuops.emulator import CloudRunEmulator
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading

    bin_dir = str(tmp_path_factory.mktemp("fake-gpu-bin"))
    install_fake_nvidia_smi(bin_dir, recorded_reading("l4"))
    with CloudRunEmulator(run_workloads=True, extra_path=[bin_dir, str(Path(sys.executable).parent)],
                          extra_env={"GPUOPS_EMULATED": "1"}) as emulator:
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


async def _deploy_and_run(pool_name: str, emulator) -> tuple[str, object]:
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
        flow_id = await client.create_flow_from_name("cloud-run-pool-check")
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"check-{pool_name}", work_pool_name=pool_name, path=str(ROOT),
            entrypoint="tests/workers/pool_flow.py:cloud_run_pool_check",
            job_variables={
                # A well-formed key made by the emulator, never sent anywhere: GcpCredentials needs one
                # to build offline, and the worker sends no credentials to an http:// endpoint. (A saved
                # block as {"$ref": {"block_document_id": ...}} is refused with 422 by the server: it is
                # valid under both branches of the template's oneOf for `credentials`.)
                "credentials": {"service_account_info": emulator.service_account_key(), "project": PROJECT},
                "region": REGION,
                "image": "us-docker.pkg.dev/gpuops-test/apps/run-app:emulated",
                "gpu_zonal_redundancy_disabled": True,
                "keep_job": True,  # so the job the emulator stored can be read back
                "env": {"GPUOPS_RUN": "pool-check"},
            },
        )
        flow_run = await client.create_flow_run_from_deployment(deployment_id, parameters={"message": "on L4"})
        async with GpuopsCloudRunWorkerV2(work_pool_name=pool_name, prefetch_seconds=30) as worker:
            await worker.get_and_submit_flow_runs()
        # Bounded wait for the flow run's own final state (reported by `prefect flow-run execute`).
        for _ in range(60):
            flow_run = await client.read_flow_run(flow_run.id)
            if flow_run.state.is_final():
                break
            await asyncio.sleep(1)
        return str(flow_run.id), flow_run


def test_a_flow_run_on_the_gpu_pool_completes_through_the_emulator(prefect_api, pool_emulator, monkeypatch):
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", pool_emulator.url)
    suffix = uuid.uuid4().hex[:8]
    pool_emulator.clear_requests()

    flow_run_id, flow_run = asyncio.run(_deploy_and_run(f"gpuops-cloud-run-gpu-{suffix}",
                                                        pool_emulator))

    assert flow_run.state.is_completed(), flow_run.state
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
    assert container["image"] == "us-docker.pkg.dev/gpuops-test/apps/run-app:emulated"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert container["command"] == ["prefect", "flow-run", "execute"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == flow_run_id and env["GPUOPS_RUN"] == "pool-check"
    assert env["PREFECT_API_URL"] == prefect_api

    # The worker's calls, in order, and the execution the emulator ran as a local process.
    requests = pool_emulator.requests()
    assert (requests[0].method, requests[0].path) == ("POST", f"/v2/projects/{PROJECT}/locations/{REGION}/jobs")
    assert [r.path.rsplit("/", 1)[-1] for r in requests if r.path.endswith(":run")] == [f"{job['name'].rsplit('/', 1)[-1]}:run"]
    assert not [r for r in pool_emulator.requests() if r.method == "DELETE"]  # keep_job
    execution_name = job["latestCreatedExecution"]["name"]
    # The flow run is Completed before its process has exited; the execution ends when it does.
    for _ in range(120):
        if pool_emulator.state.jobs.get_execution(execution_name).HasField("completion_time"):
            break
        time.sleep(0.5)
    job = json_format.MessageToDict(pool_emulator.state.jobs.get(job["name"]))
    assert job["latestCreatedExecution"]["completionStatus"] == "EXECUTION_SUCCEEDED"
    output = pool_emulator.logs(execution_name)
    assert "'message': 'on L4'" in output and "NVIDIA L4" in output, output
    assert f"'job': '{execution_name.split('/')[5]}'" in output
