"""`prefect worker start` for the gpuops-cloud-run-gpu pool, as an operator runs it: a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POOL_FILE = ROOT / "deployments" / "work_pools" / "gpuops-cloud-run-gpu.json"
START_TIMEOUT_S = 90  # a cold `prefect` import and first poll take ~10-20 s on a 2-core machine


def _pool_seen_polled(client, pool_name: str):
    """The pool's workers and whether its default queue has been polled (None when not yet)."""
    workers = client.read_workers_for_work_pool(pool_name)
    queue = client.read_work_queue_by_name("default", work_pool_name=pool_name)
    return workers, queue.last_polled


def _stop(worker: subprocess.Popen) -> str:
    """Ctrl-C the worker (its normal stop), kill it if it does not exit; return its output."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    return worker.stdout.read() if worker.stdout else ""


def test_prefect_worker_start_serves_the_cloud_run_gpu_pool(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = json.loads(POOL_FILE.read_text())
    pool_name = f"{pool['name']}-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool_name, type=pool["type"],
                                               base_job_template=pool["base_job_template"]))
    # The console script from another directory: the worker type must come from the installed
    # package's `prefect.collections` entry point, not from this checkout being on sys.path.
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("GPUOPS_CLOUD_RUN_API", None)  # polling needs no Cloud Run endpoint
    prefect = str(Path(sys.executable).parent / "prefect")
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", pool_name, "--type", "gpuops-cloud-run-v2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        workers, last_polled = [], None
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and worker.poll() is None:
                workers, last_polled = _pool_seen_polled(client, pool_name)
                if workers and last_polled is not None:
                    break
                time.sleep(0.5)
            live_pool = client.read_work_pool(pool_name)
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{_stop(worker)}"
        assert last_polled is not None, f"the pool was not polled in {START_TIMEOUT_S} s"
        (seen,) = workers
        # Its default name is the class's: prefect-gcp's worker subclassed by gpuops, not cloud-run-v2's.
        assert seen.name.startswith("GpuopsCloudRunWorkerV2 "), seen.name
        assert seen.status.value == "ONLINE" and seen.last_heartbeat_time is not None
        assert seen.work_pool_id == live_pool.id and live_pool.type == "gpuops-cloud-run-v2"
        assert live_pool.status.value == "READY"
    finally:
        output = _stop(worker)
    assert f"Worker '{seen.name}' started!" in output, output
