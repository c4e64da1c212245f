"""Flow `cleanup` (runbook phase 8-A: 不要リソース削除): list what the migration left, delete what is approved."""
from __future__ import annotations

from typing import Optional

from google.api_core import exceptions as gexc
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import Target, connect, resolve_target, where
from gpuops import approvals, cleanup_plan, cloudrun
from gpuops.errors import BadInput

DECLINE = {"approve": False, "resources": []}


class CleanupApproval(RunInput):
    """The answer to: delete these resources? Name each one; only names on the deletable list count."""

    approve: bool = False
    resources: list[str] = Field(default_factory=list)


@task(name="list-resources", cache_policy=NO_CACHE, persist_result=False)
def inventory(cr: cloudrun.CloudRun, target: Target) -> dict:
    service = cloudrun.get_service(cr, target.service_name)
    if service is None:
        raise BadInput(f"service {target.service!r} not found: check --project, --region and --service.")
    location = cloudrun.location(target.project, target.region)
    return {"service": service, "revisions": cloudrun.list_revisions(cr, target.service_name),
            "jobs": cloudrun.list_jobs(cr, location), "services": cloudrun.list_services(cr, location)}


def list_items(cr: cloudrun.CloudRun, target: Target) -> list[dict]:
    found = inventory(cr, target)
    return cleanup_plan.plan(found["service"], found["revisions"], found["jobs"], found["services"])


def ask_approval(service: str, names: list[str], timeout_s: int) -> dict:
    """Pause for a typed answer naming what may go; no answer in `timeout_s` is a refusal."""
    decision = approvals.ask(f"delete {len(names)} resources of {service}?", CleanupApproval, timeout_s,
                             example={"approve": True, "resources": names}, refusal=DECLINE,
                             key=f"cleanup-approval-{service}", description=cleanup_plan.approval_description(names))
    return decision.as_dict()


def recheck(cr: cloudrun.CloudRun, target: Target, item: dict) -> tuple[str | None, dict]:
    """Why not to delete now (the service may have changed during the pause), and the service as read."""
    service = cloudrun.get_service(cr, target.service_name) or {}
    why = cleanup_plan.live_blocker(service) if service else None
    if why or item["kind"] in ("job", "service"):
        return why, service
    if item["kind"] == "revision":
        return cleanup_plan.revision_blocker(service, item["name"]), service
    tag = item["name"].removeprefix("tag:")
    if cleanup_plan.tag_target(service, tag) is None:
        return None, service  # already removed: nothing to refuse, nothing to do
    return cleanup_plan.tag_blocker(service, tag), service


def remove_tag(cr: cloudrun.CloudRun, target: Target, service: dict, tag: str) -> bool:
    if cleanup_plan.tag_target(service, tag) is None:
        return False
    # The etag goes along: if the traffic changed since the re-check, the write fails instead
    # of putting back a split someone just changed.
    body = {**cloudrun.service_spec(service), "traffic": cleanup_plan.without_tag(service, tag)}
    cloudrun.update_service(cr, target.service_name, body, etag=service["etag"])
    return True


def delete_owned(cr: cloudrun.CloudRun, target: Target, item: dict) -> bool:
    """Delete a job or service gpuops made; False when already gone."""
    get, delete = ((cloudrun.get_job, cloudrun.delete_job) if item["kind"] == "job"
                   else (cloudrun.get_service, cloudrun.delete_service))
    current = get(cr, item["name"])
    if current is None:
        return False
    if not cleanup_plan.created_for(current, target.service):
        raise gexc.FailedPrecondition("its labels no longer say gpuops created it for this service")
    return delete(cr, item["name"])


@task(name="delete-resource", cache_policy=NO_CACHE, persist_result=False)
def delete_item(cr: cloudrun.CloudRun, target: Target, item: dict) -> dict:
    """Re-check, then delete one item: {"name", "kind", "result"}, or {"name", "why"} when refused."""
    why, service = recheck(cr, target, item)
    if why:
        return {"name": item["name"], "why": why}
    kind, name = item["kind"], item["name"]
    try:
        if kind == "tag":
            done = remove_tag(cr, target, service, name.removeprefix("tag:"))
        elif kind == "revision":
            done = cloudrun.delete_revision(cr, name)
        else:
            done = delete_owned(cr, target, item)
    except (gexc.FailedPrecondition, gexc.Aborted) as exc:
        return {"name": name, "why": f"refused: {exc.message}"}
    get_run_logger().info("%s %s %s", "deleted" if done else "already gone:", kind, name)
    return {"name": name, "kind": kind, "result": "deleted" if done else "already gone"}


@flow(name="cleanup")
def cleanup(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    execute: bool = False,
    approval_timeout_s: int = 3600,
    target: Optional[CloudRunTarget] = None,
) -> dict:
    """List what the GPU migration left behind and, once approved resource by resource, delete it.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        service: the source Cloud Run service whose jobs, GPU service, idle revisions and tags are listed.
        execute: False (default) is a dry run that changes nothing; True pauses for an approval naming
            each resource to delete, then deletes only those.
        approval_timeout_s: how long to wait for the approval; no answer deletes nothing.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    cr = connect(where_to, credentials)
    items = list_items(cr, where_to)
    result = {"service": where_to.service, "api": where(cr), "dry_run": not execute, "items": items,
              "deleted": [], "refused": [], "approval": None}
    create_markdown_artifact(key=f"cleanup-{where_to.service}",
                             markdown=cleanup_plan.plan_markdown(where_to.service, result["api"], items, execute))
    names = cleanup_plan.deletable(items)
    if not execute or not names:
        result["remaining"] = [i["name"] for i in items]
        return result

    result["approval"] = ask_approval(where_to.service, names, approval_timeout_s)
    chosen, result["refused"] = cleanup_plan.select(items, result["approval"]["approve"],
                                                    result["approval"]["resources"])
    for chosen_item in chosen:
        outcome = delete_item(cr, where_to, chosen_item)
        result["deleted" if "result" in outcome else "refused"].append(outcome)
    remaining = list_items(cr, where_to)
    result["remaining"] = [i["name"] for i in remaining]
    create_markdown_artifact(key=f"cleanup-result-{where_to.service}",
                             markdown=cleanup_plan.result_markdown(where_to.service, result, remaining))
    return result
