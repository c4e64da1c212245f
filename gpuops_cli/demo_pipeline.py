"""`make demo`, part two: one build → run → publish pipeline (runbook 4) on local stand-ins.

push (a commit in a local git repository) → build (source runtime) → run on the process "GPU" pool
through a real Prefect worker (its runs see a fake nvidia-smi printing a recorded L4 reading) →
publish to the Hugging Face Hub emulator; status.json and logs in moto's S3; the dashboard rendered.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from gpuops_cli.demo_output import expect, say, step

POOL, BUCKET, HF_REPO = "gpuops-process", "gpuops-jobs", "demo/app-output"
DEMO_HF_TOKEN = "hf_gpuopsDemoToken"  # the local Hub emulator's write token, not a real one


def start_pipeline_stack(workdir: Path, cleanup: ExitStack) -> dict:
    """moto (S3) and the Hub emulator on 127.0.0.1, the process pool with run-app deployed, a worker polling it."""
    import boto3
    from moto.server import ThreadedMotoServer
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.run_app import run_app
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading
    from gpuops.demo_app_repo import uv_dir
    from gpuops.emulator.hf_hub_api import HfHubEmulator
    from gpuops.stack import Worker, deploy_here

    step("Starting the pipeline's stand-ins (127.0.0.1)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    cleanup.callback(s3.stop)
    host, port = s3.get_host_and_port()
    bucket_env = {"GPUOPS_S3_ENDPOINT": f"http://{host}:{port}", "GPUOPS_STATUS_BUCKET": BUCKET,
                  "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(bucket_env)
    boto3.session.Session().client("s3", endpoint_url=bucket_env["GPUOPS_S3_ENDPOINT"]).create_bucket(Bucket=BUCKET)
    say(f"   status bucket: moto S3 at {bucket_env['GPUOPS_S3_ENDPOINT']} (not R2), bucket {BUCKET}")
    shutil.rmtree(workdir / "hf-hub", ignore_errors=True)  # each demo publishes to an empty Hub
    hub = cleanup.enter_context(HfHubEmulator(data_dir=workdir / "hf-hub", token=DEMO_HF_TOKEN))
    os.environ["HF_ENDPOINT"] = hub.url
    say(f"   Hugging Face Hub: gpuops EMULATOR at {hub.url} (not huggingface.co), files under {workdir / 'hf-hub'}")

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    deploy_here(run_app, "run-app", POOL)
    install_fake_nvidia_smi(workdir / "fake-gpu-bin", recorded_reading("l4"))
    if uv_dir():  # the source runtime's `uv sync`, here and on the worker
        os.environ["PATH"] = uv_dir() + os.pathsep + os.environ.get("PATH", "")
    worker_env = {**bucket_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": DEMO_HF_TOKEN, "GPUOPS_EMULATED_GPU": "1",
                  "PATH": os.pathsep.join([str(workdir / "fake-gpu-bin"), str(Path(sys.executable).parent),
                                           uv_dir() or "", os.environ.get("PATH", "")]),
                  "GPUOPS_WORKDIR": str(workdir / "worker-jobs")}
    cleanup.enter_context(Worker(POOL, workdir / "worker.log", env=worker_env))
    say(f"   Prefect worker polling {POOL} (its flow runs see an EMULATED L4); log {workdir / 'worker.log'}")
    return {"hub": hub, "bucket_url": f"{bucket_env['GPUOPS_S3_ENDPOINT']}/{BUCKET}"}


def run_pipeline(workdir: Path, stack: dict) -> dict:
    from flows.build_run_publish import build_run_publish
    from gpuops.demo_app_repo import make_app_repo

    step("Runbook 4  build → run → publish (push → build → GPU run → Hub)")
    repo = workdir / "app-repo"
    sha = make_app_repo(repo)
    say(f"   pushed {sha[:12]} to {repo} (a local git repository standing in for GitHub)")
    doc = build_run_publish(repo=str(repo), sha=sha, ref="main", hf_repo=HF_REPO,
                            run_deployment_name="run-app/run-app", run_timeout_s=300)
    say("   status.json:")
    for line in json.dumps(doc, indent=2).splitlines():
        say(f"     {line}")
    expect(doc["overallStatus"] == "Succeeded", "the job Succeeded: built, run on the GPU pool, published")
    ours = [c for c in stack["hub"].commits(HF_REPO) if c["title"].startswith("gpuops job")]
    expect(len(ours) == 1 and sha in ours[0]["title"], f"one Hub commit in {HF_REPO} naming the source commit")
    return doc


def render_dashboard(workdir: Path, stack: dict) -> Path:
    from gpuops_cli.cli import main as cli

    page = workdir / "dashboard" / "index.html"
    with contextlib.redirect_stdout(io.StringIO()):  # its summary; the demo says what matters below
        code = cli(["dashboard", "--out", str(page), "--upload", "--object-base-url", stack["bucket_url"]])
    expect(code == 0 and page.exists(), f"dashboard written to {page} and uploaded as index.html")
    return page


def report(doc: dict, page: Path, stack: dict) -> None:
    job = doc["jobId"]
    say(f"   Pipeline:       artifacts pipeline-{job}-stages, -hub-commit; flow run {doc['prefect']['flowRunUrl']}")
    say(f"   Bucket keys:    {job}/status.json, {job}/build.log, {job}/app.log, index.html ({stack['bucket_url']})")
    say(f"   Hub commit:     {doc['run']['artifactUrl']}")
    say(f"   Dashboard:      {page}")
