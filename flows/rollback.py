"""Flow `rollback` (runbook phase 8-B: ロールバック手順): all traffic back to the stable revision."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run import CloudRunTarget
from flows.common import Target, connect, notify, resolve_target, where
from gpuops import cloudrun, job_plan, revision, state, traffic
from gpuops.errors import BadInput


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_revision(service: dict, target: Target) -> tuple[str, traffic.CanaryState | None]:
    """The known-good revision: from the canary state on the service, else the describe snapshot."""
    recorded = traffic.CanaryState.from_service(service)
    if recorded:
        return recorded.stable, recorded
    snapshot = state.load_snapshot(target.project, target.region, target.service)
    if snapshot:
        return snapshot["revision"], None
    raise BadInput(f"no canary state on {target.service} and no describe snapshot: nothing says which "
                   "revision is stable. Run `gpuops describe` first, or set traffic by hand.")


@task(name="restore-stable-traffic", cache_policy=NO_CACHE, persist_result=False)
def restore_stable(cr: cloudrun.CloudRun, target: Target, reasons: tuple[str, ...] = ()) -> list[str]:
    """100% to stable and the state marked rolled back; nothing is written when that already holds."""
    service = cloudrun.get_service(cr, target.service_name)
    if service is None:
        raise BadInput(f"service {target.service!r} not found: check --project, --region and --service.")
    stable, recorded = stable_revision(service, target)
    before = traffic.serving_percent(service, stable)
    template = stable_template(cr, target, service, stable, recorded)
    state_done = recorded is None or recorded.phase == traffic.ROLLED_BACK
    if before == 100 and state_done and template is None:
        return []
    annotations = {}
    if recorded:
        rolled = replace(recorded, phase=traffic.ROLLED_BACK, updated=now(),
                         failed_checks=reasons or recorded.failed_checks)
        annotations[traffic.STATE_ANNOTATION] = rolled.to_annotation()
    targets = traffic.all_to(stable, service.get("traffic", []))
    cloudrun.update_traffic(cr, target.service_name, targets, annotations, template=template)
    changes = [f"traffic: {stable} {before}% -> 100%"] if before != 100 else []
    if template is not None:
        changes.append(f"template: back to the configuration of {stable} (the GPU one stays on {recorded.candidate})")
    if not state_done:
        changes.append(f"canary state marked {traffic.ROLLED_BACK}")
    return changes


def stable_template(cr, target: Target, service: dict, stable: str, recorded) -> dict | None:
    """The stable revision's configuration, when the service's template is still the canary's.

    Left as the GPU template, the next ordinary deploy would build on it and start GPU instances
    nobody asked for. Restoring it makes a new revision like stable, with no traffic.
    """
    if recorded is None or (service.get("template") or {}).get("revision") != recorded.candidate:
        return None
    revision = cloudrun.get_revision(cr, f"{target.service_name}/revisions/{stable}")
    return job_plan.template_from_revision(revision) if revision else None


@task(name="cancel-gpu-executions", cache_policy=NO_CACHE)
def cancel_running(cr: cloudrun.CloudRun, target: Target, prefix: Optional[str]) -> list[str]:
    job = target.job_name(job_plan.resource_ids(prefix or target.service)["gpu_job"])
    if cloudrun.get_job(cr, job) is None:
        return []
    running = [e for e in cloudrun.list_executions(cr, job) if not cloudrun.execution_finished(e)]
    for execution in running:
        cloudrun.cancel_execution(cr, execution["name"])
    return [f"cancelled execution {cloudrun.short(e['name'])}" for e in running]


@flow(name="rollback")
def rollback(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    prefix: Optional[str] = None,
    notify_block: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
) -> dict:
    """Send 100% of the traffic back to the stable revision and stop running GPU job executions.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        service: the Cloud Run service whose traffic goes back to its stable revision.
        prefix: name prefix the migration's resources were created with (default: the service name).
        notify_block: name of a Prefect notification block (Slack, webhook) told about the rollback.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    cr = connect(where_to, credentials)
    changes = restore_stable(cr, where_to) + cancel_running(cr, where_to, prefix)
    after = cloudrun.get_service(cr, where_to.service_name)
    stable, _ = stable_revision(after, where_to)
    result = {"service": where_to.service, "api": where(cr), "stable": stable, "changed": changes,
              "traffic": revision.traffic(after)}
    lines = [f"# Rollback of `{where_to.service}`", f"API: {result['api']}", "",
             *(f"- {c}" for c in changes or ["nothing to change: stable already serves 100%"])]
    create_markdown_artifact(key=f"rollback-{where_to.service}", markdown="\n".join(lines))
    if changes:
        notify(notify_block, f"gpuops rollback of {where_to.service}", "; ".join(changes))
    return result
