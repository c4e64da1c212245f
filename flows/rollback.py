"""Flow `rollback` (runbook phase 8-B: ロールバック手順): all traffic back to the stable revision."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Optional

from google.api_core import exceptions as gexc
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run import CloudRunTarget
from flows.common import Target, connect, notify, resolve_target, where
from gpuops import cloudrun, job_plan, params, revision, state, traffic
from gpuops.errors import BadInput, CheckFailed


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _choose(target: Target) -> str:
    return (f"to send all traffic to a revision you choose: gpuops rollback --project {target.project} "
            f"--region {target.region} --service {target.service} --to REVISION")


def stable_revision(service: dict, target: Target, to_revision: str | None = None
                    ) -> tuple[str, traffic.CanaryState | None]:
    """The known-good revision: the operator's choice, else the canary state, else the describe
    snapshot; never a stale one. Refuses when the service changed since the state was recorded."""
    recorded = traffic.CanaryState.from_service(service)
    if to_revision:
        return to_revision, recorded
    if recorded:
        stale = traffic.stale_since_canary(service, recorded)
        if stale:
            raise CheckFailed(f"{target.service} changed since its canary ({stale}): not moving that traffic back "
                              f"to {recorded.stable}. Nothing was changed; {_choose(target)}.")
        return recorded.stable, recorded
    snapshot = state.load_snapshot(target.project, target.region, target.service)
    if snapshot:
        drift = traffic.drift_since_snapshot(service, snapshot)
        if drift:
            raise CheckFailed(f"no canary state on {target.service}, and it changed since the describe snapshot of "
                              f"{snapshot.get('captured_at', 'an unknown time')} ({'; '.join(drift)}): not reverting "
                              f"to {snapshot['revision']}. Nothing was changed; {_choose(target)}.")
        return snapshot["revision"], None
    raise BadInput(f"no canary state on {target.service} and no describe snapshot: nothing says which revision "
                   f"is stable; {_choose(target)}.")


@task(name="restore-stable-traffic", cache_policy=NO_CACHE, persist_result=False)
def restore_stable(cr: cloudrun.CloudRun, target: Target, reasons: tuple[str, ...] = (),
                   to_revision: str | None = None) -> list[str]:
    """100% to stable and the state marked rolled back; nothing is written when that already holds.

    Decided on the service as read, and decided again if another write lands before ours.
    """
    changes: list[str] = []

    def decide(service: dict) -> cloudrun.TrafficChange | None:
        changes.clear()
        stable, recorded = stable_revision(service, target, to_revision)
        before = traffic.serving_percent(service, stable)
        template = stable_template(cr, target, service, stable, recorded)
        state_done = recorded is None or recorded.phase == traffic.ROLLED_BACK
        if before == 100 and state_done and template is None:
            return None
        annotations = {}
        if before != 100:
            changes.append(f"traffic: {stable} {before}% -> 100%")
        if template is not None:
            changes.append(f"template: back to the configuration of {stable} (the GPU one stays on {recorded.candidate})")
        if not state_done:
            rolled = replace(recorded, phase=traffic.ROLLED_BACK, updated=now(),
                             failed_checks=reasons or recorded.failed_checks)
            annotations[traffic.STATE_ANNOTATION] = rolled.to_annotation()
            changes.append(f"canary state marked {traffic.ROLLED_BACK}")
        return cloudrun.TrafficChange(traffic.all_to(stable, service.get("traffic", [])), annotations, template)

    try:
        cloudrun.update_traffic(cr, target.service_name, decide)
    except gexc.NotFound:
        raise BadInput(f"service {target.service!r} not found: check --project, --region and --service.") from None
    return list(changes)


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
    changes = restore_stable(cr, where_to, to_revision=to_revision) + cancel_running(cr, where_to, prefix)
    after = cloudrun.get_service(cr, where_to.service_name)
    stable, _ = stable_revision(after, where_to, to_revision)
    result = {"service": where_to.service, "api": where(cr), "stable": stable, "changed": changes,
              "traffic": revision.traffic(after)}
    lines = [f"# Rollback of `{where_to.service}`", f"API: {result['api']}", "",
             *(f"- {c}" for c in changes or ["nothing to change: stable already serves 100%"])]
    create_markdown_artifact(key=f"rollback-{where_to.service}", markdown="\n".join(lines))
    if changes:
        notify(notify_block, f"gpuops rollback of {where_to.service}", "; ".join(changes))
    return result
