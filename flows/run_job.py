"""Flow `run-job` (runbook 1-B CPU Job実行テスト, 6-B job times): run a Cloud Run job once, bounded, and report."""
from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import connect, resolve_target, where
from gpuops import cloudrun, job_run, params, state
from gpuops.errors import BadInput, CheckFailed
from gpuops.execution_logs import read_log_tail, read_once_ingested


# Every task here handles executions, whose template holds the job's env values: nothing is persisted.
@task(name="start-job-execution", cache_policy=NO_CACHE, persist_result=False)
def start_execution(cr: cloudrun.CloudRun, job_name: str, args: Optional[list[str]]) -> str:
    """One execution, recorded as gpuops' own (so a rollback may cancel it); its name."""
    overrides = {"containerOverrides": [{"args": args}]} if args else None
    started = cloudrun.run_job(cr, job_name, overrides)
    state.record_started_execution(started["name"])
    get_run_logger().info("started %s%s", cloudrun.short(started["name"]), f" with args {args}" if args else "")
    return started["name"]


@task(name="wait-for-execution", cache_policy=NO_CACHE, persist_result=False)
def wait_for_execution(cr: cloudrun.CloudRun, name: str, timeout_s: float) -> tuple[dict, bool]:
    """The finished execution and whether it ran past the bound (then it is cancelled: no job runs on unseen)."""
    poll_s = 0.2 if cr.is_emulator else 2.0  # locally a poll costs nothing
    try:
        return cloudrun.wait_execution(cr, name, timeout_s, poll_s), False
    except TimeoutError:
        get_run_logger().warning("%s still running after %g s: cancelling it", cloudrun.short(name), timeout_s)
        cloudrun.cancel_execution(cr, name)
        return cloudrun.get_execution(cr, name) or {"name": name}, True


@task(name="read-log-tail", cache_policy=NO_CACHE, persist_result=False)
def read_tail(cr: cloudrun.CloudRun, execution: dict, lines: int, credentials=None) -> list[str]:
    return read_once_ingested(cr, lambda: read_log_tail(cr, execution, lines, credentials), bool)


def _require_job(cr: cloudrun.CloudRun, project: str, region: str, job: str) -> str:
    name = cloudrun.job_name(project, region, job)
    if cloudrun.get_job(cr, name) is None:
        raise BadInput(f"job (--job) {job!r} not found in {project}/{region}: name an existing Cloud Run job "
                       "(`gpuops create-jobs` makes <service>-cpu-job and <service>-gpu-job).")
    return name


@flow(name="run-job", persist_result=False)
def run_job(
    project: Optional[str] = None,
    region: Optional[str] = None,
    job: Optional[str] = None,
    args: Optional[list[str]] = None,
    timeout_s: float = 1800,
    log_lines: int = 20,
    target: Optional[CloudRunTarget] = None,
) -> dict:
    """Execute a Cloud Run job once, wait with a bound, report its state, measured time and log tail.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        job: the Cloud Run job to execute, e.g. my-service-cpu-job.
        args: the container's args for this execution (an override); empty keeps the job's own.
        timeout_s: how long to wait; past it the execution is cancelled and reported as timed out.
        log_lines: how many of the execution's last log lines the report shows.
        target: a gpuops Cloud Run target block for project, region, endpoint and credentials.
    """
    checked = params.run_job(job=job, args=args, timeout_s=timeout_s, log_lines=log_lines)
    # The job stands where a service would: the target block gives project, region and endpoint.
    where_to, credentials = resolve_target(project, region, checked["job"], target)
    cr = connect(where_to, credentials)
    name = _require_job(cr, where_to.project, where_to.region, checked["job"])

    execution_name = start_execution(cr, name, checked["args"])
    execution, timed_out = wait_for_execution(cr, execution_name, checked["timeout_s"])
    tail = read_tail(cr, execution, checked["log_lines"], credentials)
    result = job_run.summary(job=checked["job"], execution=execution, timed_out=timed_out,
                             timeout_s=checked["timeout_s"], args=checked["args"], log_tail=tail, api=where(cr))
    create_markdown_artifact(key=f"run-job-{checked['job']}", markdown=job_run.report_markdown(result),
                             description=f"job {checked['job']}: {result['state']} ({result['api']})")
    if not result["succeeded"]:
        raise CheckFailed(job_run.failure_message(result), [result])
    return result
