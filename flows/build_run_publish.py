"""Flow `build-run-publish` (the fourth runbook: push → build → run → publish), job id = the commit SHA.

- build: the `source` runtime checks the repo out at the SHA and installs it (`uv sync --frozen`); the
  `container` runtime builds and pushes an image tagged with the SHA. Its lines stream to `{jobId}/build.log`.
- run and publish: the `run-app` deployment on a GPU work pool, started and awaited: it checks the GPU it
  landed on, runs the app (streaming `{jobId}/app.log`) and publishes the output folder to the Hub.

status.json (CONTRACTS §7) is written at every transition with conditional writes, so the flow and
run-app (two writers) never lose each other's updates. The job is claimed first: a second run of the
same job id while one is active is refused, so the same job never runs twice at once.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.pipeline_blocks import status_store
from flows.stage_log import stage_log
from gpuops import job_status, params, pipeline_report
from gpuops.errors import BadInput, CheckFailed, CouldNotRun

RUN_DEPLOYMENT = "run-app/run-app"


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@task(name="claim-job", cache_policy=NO_CACHE, persist_result=False)
def claim_job(store, job_id: str, prefect_fields: dict) -> dict:
    """Create the job's status.json, or take it over when no active flow run owns it (JobBusy otherwise)."""
    me = prefect_fields["flow_run_id"]
    rest = {k: v for k, v in prefect_fields.items() if k != "flow_run_id"}
    first = job_status.set_prefect(job_status.new_status(job_id, _now()), _now(), flow_run_id=me, **rest)
    if store.create(first):
        return first
    return store.update(job_id, lambda d: job_status.claim(d, me, _now(), _flow_run_active, **rest))


@task(name="build", cache_policy=NO_CACHE, persist_result=False)
def build(store, checked: dict, job_id: str, image_repo: Optional[str], registry_credentials) -> dict:
    """The build stage: Running, then Succeeded with the image (container) or Failed with its log kept."""
    store.update(job_id, lambda d: job_status.transition(d, "build", job_status.RUNNING, _now()))
    # A folder of this run's own: another run of the same commit on this machine (another bucket, a
    # test) must not share, or remove, this checkout.
    (Path(tempfile.gettempdir()) / "gpuops-builds").mkdir(exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{job_id[:12]}-", dir=Path(tempfile.gettempdir()) / "gpuops-builds")) / "src"
    try:
        with stage_log(store, job_id, "build") as say:
            built = _build(checked, dest, image_repo, registry_credentials, say)
    except BaseException as exc:
        store.update(job_id, lambda d: _stage_failed(d, "build", exc))
        raise
    finally:
        # The run checks out its own copy where the GPU is; this one only proved the commit builds.
        shutil.rmtree(dest.parent, ignore_errors=True)
    store.update(job_id, lambda d: job_status.transition(d, "build", job_status.SUCCEEDED, _now(),
                                                        imageUri=built.get("imageUri")))
    return built


def _build(checked: dict, dest: Path, image_repo: Optional[str], registry_credentials, say) -> dict:
    if checked["runtime"] == "container":
        from gpuops.container_build import build_container

        return build_container(checked["repo"], checked["sha"], dest, image_repo, say,
                               credentials=registry_credentials)
    from gpuops.source_build import build_from_source

    return build_from_source(checked["repo"], checked["sha"], dest, say)


@task(name="run-on-gpu-pool", cache_policy=NO_CACHE, persist_result=False)
def run_on_gpu_pool(store, deployment: str, job_id: str, parameters: dict, job_variables: dict,
                    timeout_s: float) -> dict:
    """Start run-app on its GPU pool and wait; a run that never started or ran past the bound is cancelled.

    run-app writes the run's own transitions; whatever it could not write (it never started, its
    infrastructure crashed) is written here, so no job stays Running.
    """
    from prefect.deployments import run_deployment

    from prefect import runtime

    flow_run = run_deployment(deployment, parameters=parameters, job_variables=job_variables or None,
                              timeout=timeout_s, poll_interval=1,
                              idempotency_key=f"{job_id}:{runtime.flow_run.id}")
    state = flow_run.state
    if state is None or not state.is_final():
        _cancel(flow_run.id)
        started = state is not None and state.is_running()
        why = (f"run-app ran past the {timeout_s:g} s bound and was cancelled" if started else
               f"no worker started run-app within {timeout_s:g} s (Fix: start a worker on the deployment's "
               f"work pool, e.g. `prefect worker start --pool gpuops-process`)")
        store.update(job_id, lambda d: _stage_failed(d, "run", RuntimeError(why)))
    elif not state.is_completed():
        why = f"run-app flow run {flow_run.name} ended {state.name}: {state.message or 'no message'}"
        store.update(job_id, lambda d: _stage_failed(d, "run", RuntimeError(why)))
    return {"flow_run_id": str(flow_run.id), "state": state.name if state else None}


@flow(name="build-run-publish", persist_result=False)
def build_run_publish(
    repo: str,
    sha: str,
    ref: str = "main",
    runtime: str = "source",
    hf_repo: Optional[str] = None,
    hf_revision: str = "main",
    image_repo: Optional[str] = None,
    app_command: Optional[list[str]] = None,
    output_dir: str = "output",
    need_vram_gib: Optional[float] = None,
    min_compute_cap: str = "7.0",
    run_timeout_s: float = 3600,
    run_deployment_name: str = RUN_DEPLOYMENT,
    run_job_variables: Optional[dict] = None,
    status_bucket_block: Optional[str] = None,
    hf_hub_block: Optional[str] = None,
    registry_credentials_block: Optional[str] = None,
) -> dict:
    """Build the commit, run it on a GPU work pool, publish its output to the Hugging Face Hub.

    Args:
        repo: the app's git repository: a clone URL or a local path (no credentials in the URL).
        sha: the commit to build; it is also the job id (`{sha}/status.json` in the bucket).
        ref: the branch or tag pushed (recorded; the build checks out the SHA itself).
        runtime: `source` (git clone + uv sync, the runbook's lesson) or `container` (image built and pushed).
        hf_repo: the Hugging Face repo to publish to, e.g. my-org/my-model; empty: not published.
        hf_revision: the branch of hf_repo the commit goes to.
        image_repo: the container runtime's image repository, e.g. ghcr.io/my-org/my-app (tagged with the SHA).
        app_command: the app's command; `python` means the project's interpreter. Default `python main.py`.
        output_dir: the folder the app writes its results to (its $GPUOPS_OUTPUT_DIR), published as is.
        need_vram_gib: VRAM the app needs; the run refuses a card whose real reading is smaller.
        min_compute_cap: lowest CUDA compute capability the app runs on (7.0 for PyTorch 2.x).
        run_timeout_s: how long run-app may take, from being scheduled to its end.
        run_deployment_name: the run stage's deployment, `flow/deployment` (its work pool is the GPU pool).
        run_job_variables: job variables for the run (e.g. env); the container runtime adds `image`.
        status_bucket_block: a gpuops-status-bucket block; empty: GPUOPS_STATUS_BUCKET / GPUOPS_S3_ENDPOINT.
        hf_hub_block: a gpuops-hf-hub block for run-app; empty: HF_ENDPOINT / HF_TOKEN on its worker.
        registry_credentials_block: a prefect-docker DockerRegistryCredentials block, for the container runtime.
    """
    checked = params.pipeline(repo=repo, ref=ref, sha=sha, runtime=runtime, hf_repo=hf_repo,
                              hf_revision=hf_revision, app_command=app_command, output_dir=output_dir,
                              need_vram_gib=need_vram_gib, min_compute_cap=min_compute_cap,
                              run_timeout_s=run_timeout_s)
    if checked["runtime"] == "container" and not image_repo:
        raise BadInput("image_repo (--image-repo) is needed by the container runtime: pass e.g. "
                       "--image-repo ghcr.io/my-org/my-app (the image is tagged with the SHA).")
    job_id = checked["sha"]
    store = status_store(status_bucket_block)
    _require_deployment(run_deployment_name)
    credentials = _registry_credentials(registry_credentials_block)

    claimed = _claim(store, job_id)
    get_run_logger().info("job %s claimed (attempt %s); status at %s/status.json", job_id,
                          claimed.get("attempt", 1), job_id)
    try:
        built = build(store, checked, job_id, image_repo, credentials)
        ran = run_on_gpu_pool(store, run_deployment_name, job_id, _run_parameters(checked, status_bucket_block,
                                                                                  hf_hub_block),
                              _job_variables(run_job_variables, built), checked["run_timeout_s"])
        get_run_logger().info("run-app flow run %s ended %s", ran["flow_run_id"], ran["state"])
    except BaseException as exc:
        store.update(job_id, lambda d: _unfinished_failed(d, exc))
        doc = store.read(job_id)
        _artifacts(store, doc)
        if isinstance(exc, BadInput) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, CheckFailed):
            stage = pipeline_report.failed_stage(doc) or "a stage"
            raise CheckFailed(f"job {job_id} Failed at {stage}: {exc}", [doc]) from None
        raise CouldNotRun(f"job {job_id}: {type(exc).__name__}: {exc}. status.json says {doc['overallStatus']}; "
                          "nothing is left running. Re-run the same SHA to start it again.") from None
    doc = store.read(job_id)
    _artifacts(store, doc)
    if doc["overallStatus"] != job_status.SUCCEEDED:
        raise CheckFailed(f"job {job_id} {doc['overallStatus']}: {doc['run'].get('error', 'see app.log')}", [doc])
    return doc


# What status.json keeps for the dashboard's re-run link. The bucket may be public, so nothing that can hold a
# value: run_job_variables (its env) is left out, and a re-run takes the deployment's own job variables.
RERUN_PARAMETERS = ("repo", "sha", "ref", "runtime", "hf_repo", "hf_revision", "image_repo", "app_command",
                    "output_dir", "need_vram_gib", "min_compute_cap", "run_timeout_s", "run_deployment_name",
                    "status_bucket_block", "hf_hub_block", "registry_credentials_block")


def rerun_parameters(parameters: dict) -> dict:
    return {name: value for name, value in parameters.items() if name in RERUN_PARAMETERS}


def _claim(store, job_id: str) -> dict:
    from prefect import runtime
    from prefect.utilities.urls import url_for

    # url_for, not runtime.flow_run.ui_url: that one says /flow-runs/flow-run/, a page the UI does not have.
    fields = {"flow_run_id": str(runtime.flow_run.id), "flow_run_url": url_for("flow-run", obj_id=runtime.flow_run.id),
              "deployment_id": str(runtime.deployment.id) if runtime.deployment.id else None,
              "parameters": rerun_parameters(runtime.flow_run.parameters)}
    try:
        return claim_job(store, job_id, fields)
    except job_status.JobBusy as busy:
        raise CheckFailed(f"{busy}: the same job never runs twice at once (Fix: wait for it, or cancel that "
                          "flow run; a crashed one is taken over automatically)", [{"owner": busy.owner}]) from None


def _run_parameters(checked: dict, status_bucket_block: Optional[str], hf_hub_block: Optional[str]) -> dict:
    return {"job_id": checked["sha"], "repo": checked["repo"], "sha": checked["sha"], "ref": checked["ref"],
            "runtime": checked["runtime"], "app_command": checked["app_command"],
            "output_dir": checked["output_dir"], "need_vram_gib": checked["need_vram_gib"],
            "min_compute_cap": checked["min_compute_cap"], "hf_repo": checked["hf_repo"],
            "hf_revision": checked["hf_revision"], "app_timeout_s": checked["run_timeout_s"],
            "status_bucket_block": status_bucket_block, "hf_hub_block": hf_hub_block}


def _job_variables(given: Optional[dict], built: dict) -> dict:
    variables = dict(given or {})
    if built.get("imageUri"):
        variables["image"] = built["imageUri"]  # the container runtime: the GPU job runs the image just built
    return variables


def _artifacts(store, doc: dict) -> None:
    """What happened, in Prefect: the stage durations, the Hub commit, a failed stage's log tail."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key = f"pipeline-{doc['jobId']}"
    create_table_artifact(key=f"{key}-stages", table=pipeline_report.stage_durations(doc),
                          description=f"job {doc['jobId']}: {doc['overallStatus']}, seconds per stage "
                                      "(from status.json's started/finished, to the second)")
    if doc["run"].get("artifactUrl"):
        create_link_artifact(key=f"{key}-hub-commit", link=doc["run"]["artifactUrl"], link_text="Hub commit",
                             description=f"job {doc['jobId']}: the output published in one commit")
    failed = pipeline_report.failed_stage(doc)
    if failed:
        tail = pipeline_report.log_tail_markdown(doc, store.read_log(doc["jobId"], failed))
        create_markdown_artifact(key=f"{key}-failed-log", markdown=tail,
                                 description=f"job {doc['jobId']}: the end of the {failed} log")


def _stage_failed(doc: dict, stage: str, exc: BaseException) -> dict:
    """`stage` Failed with the first line of why, unless it already finished (run-app may have said so)."""
    if doc[stage]["status"] in (job_status.SUCCEEDED, job_status.FAILED):
        return doc
    failed = job_status.transition(doc, stage, job_status.FAILED, _now())
    failed[stage]["error"] = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
    return failed


def _unfinished_failed(doc: dict, exc: BaseException) -> dict:
    """After an unexpected error: the stage that was under way Failed, so no job stays Running."""
    if doc["build"]["status"] != job_status.SUCCEEDED:
        return _stage_failed(doc, "build", exc)
    return _stage_failed(doc, "run", exc)


def _require_deployment(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if "/" not in name:
        raise BadInput(f"run_deployment_name (--run-deployment) {name!r} is not `flow/deployment`: pass e.g. "
                       f"{RUN_DEPLOYMENT}")
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise BadInput(f"run_deployment_name (--run-deployment) {name!r}: no such deployment (Fix: `prefect deploy "
                       "--name run-app` from this repository, with its GPU work pool applied)") from None


def _registry_credentials(block_name: Optional[str]):
    if not block_name:
        return None
    from prefect_docker.credentials import DockerRegistryCredentials

    return DockerRegistryCredentials.load(block_name)


def _flow_run_active(flow_run_id: str) -> bool:
    """Whether a flow run may still be working (not in a final state); an unknown one is not."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except ObjectNotFound:
        return False
    return state is not None and not state.is_final()


def _cancel(flow_run_id) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="build-run-publish: past its bound"), force=True)
