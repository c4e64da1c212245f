"""Flow `rollback` (runbook phase 8-B: ロールバック手順): all traffic back to the stable revision."""
from __future__ import annotations

from typing import Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import Target, connect, notify, resolve_target, where
from gpuops import cloudrun, job_plan, params, revision, state
from gpuops.errors import BadInput
from gpuops.rollout.cloud_run import CloudRunBackend
from gpuops.rollout.engine import restore_stable


@task(name="cancel-gpu-executions", cache_policy=NO_CACHE)
def cancel_running(cr: cloudrun.CloudRun, target: Target, prefix: Optional[str]) -> list[str]:
    """Cancel the running executions gpuops started (the smoke test's); a user's own are left alone."""
    job = target.job_name(job_plan.resource_ids(prefix or target.service)["gpu_job"])
    ours = set(state.started_executions(job))
    if not ours or cloudrun.get_job(cr, job) is None:
        return []
    running = [e for e in cloudrun.list_executions(cr, job) if not cloudrun.execution_finished(e)]
    notes = []
    for execution in running:
        if execution["name"] in ours:
            cloudrun.cancel_execution(cr, execution["name"])
            notes.append(f"cancelled execution {cloudrun.short(execution['name'])}")
        else:
            notes.append(f"left execution {cloudrun.short(execution['name'])} running: gpuops did not start it")
    return notes


def _check_to_revision(cr: cloudrun.CloudRun, target: Target, to_revision: str | None) -> None:
    if to_revision and cloudrun.get_revision(cr, f"{target.service_name}/revisions/{to_revision}") is None:
        raise BadInput(f"to_revision (--to) {to_revision!r} is not a revision of {target.service}: "
                       "`gpuops describe` lists the serving revisions.")


@flow(name="rollback")
def rollback(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    prefix: Optional[str] = None,
    notify_block: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
    to_revision: Optional[str] = None,
) -> dict:
    """Send 100% of the traffic back to the stable revision and stop the GPU job executions gpuops started.

    The stable revision comes from the canary state on the service, else the describe snapshot;
    when the service changed since either was recorded, nothing is changed unless `to_revision` names
    the revision to go to.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        service: the Cloud Run service whose traffic goes back to its stable revision.
        prefix: name prefix the migration's resources were created with (default: the service name).
        notify_block: name of a Prefect notification block (Slack, webhook) told about the rollback.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
        to_revision: send all traffic to this revision (e.g. `my-service-00001-abc`) whatever the records say.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    params.prefix(prefix)
    params.revision("to_revision", to_revision)
    cr = connect(where_to, credentials)
    _check_to_revision(cr, where_to, to_revision)
    backend = CloudRunBackend(cr, where_to.project, where_to.region, where_to.service)
    changes = restore_stable(backend, to=to_revision) + cancel_running(cr, where_to, prefix)
    after = cloudrun.get_service(cr, where_to.service_name)
    stable, _ = backend.stable_revision(after, to_revision)
    result = {"service": where_to.service, "api": where(cr), "stable": stable, "changed": changes,
              "traffic": revision.traffic(after)}
    lines = [f"# Rollback of `{where_to.service}`", f"API: {result['api']}", "",
             *(f"- {c}" for c in changes or ["nothing to change: stable already serves 100%"])]
    create_markdown_artifact(key=f"rollback-{where_to.service}", markdown="\n".join(lines))
    if changes:
        notify(notify_block, f"gpuops rollback of {where_to.service}", "; ".join(changes))
    return result
