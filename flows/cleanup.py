"""Flow `cleanup` (runbook phase 8-A: 不要リソース削除): list what the migration left, delete what is approved."""
from __future__ import annotations

import contextvars
import json
import threading
from typing import Optional

from google.api_core import exceptions as gexc
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from pydantic import Field

from blocks.cloud_run import CloudRunTarget
from flows.common import Target, connect, resolve_target, where
from gpuops import cleanup_plan, cloudrun
from gpuops.errors import BadInput

POLL_S = 2  # how soon a resumed run notices; a read of one flow run costs little
# The server fails any transition out of a pause once its deadline has passed, so the flow
# answers "timed out" itself a little before the server's deadline (see ask_approval).
SERVER_GRACE_S = 30
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


def plan_markdown(target: Target, api: str, items: list[dict], execute: bool) -> str:
    mode = "asks for approval before deleting" if execute else "dry run: nothing is changed"
    rows = [f"| {i['kind']} | `{i['name']}` | {'yes' if i['deletable'] else 'no'} | {i['why_not'] or i['reason']} |"
            for i in items]
    return "\n".join([f"# cleanup of {target.service} ({mode})", f"API: {api}", "",
                      "| kind | name | deletable | why (not) |", "|---|---|---|---|", *rows])


def resume_help(flow_run_id: str, names: list[str]) -> str:
    """How an approver answers: the UI's Resume form, or the API (Prefect has no CLI verb for it)."""
    body = json.dumps({"run_input": {"approve": True, "resources": names}})
    ui = PREFECT_UI_URL.value()
    lines = [f"cleanup is waiting for approval: flow run {flow_run_id}",
             f"  UI: {ui}/runs/flow-run/{flow_run_id} -> Resume" if ui else "  UI: the flow run's Resume button",
             f"  API: curl -X POST {PREFECT_API_URL.value()}/flow_runs/{flow_run_id}/resume "
             f"-H 'Content-Type: application/json' -d '{body}'",
             "  Name only what you approve; {\"approve\": false, \"resources\": []} deletes nothing.",
             "  The answer is accepted when the response says \"status\": \"ACCEPT\" (a bad body is REJECT with 200)."]
    return "\n".join(lines)


def approval_form(names: list[str]) -> type[CleanupApproval]:
    listing = "\n".join(f"- `{n}`" for n in names)
    description = ("# Delete these Cloud Run resources?\n\n" + listing +
                   "\n\nSet **approve** and add to **resources** each name you approve, as listed; "
                   "any other name is refused. Nothing is deleted without an answer.")
    # The list goes in the description, not in `resources`' default: the UI sends only the values
    # a person entered, so a prefilled default would delete everything on a bare "approve".
    return CleanupApproval.with_initial_data(description=description)


def _answer_for_nobody(flow_run_id, expired: threading.Event) -> None:
    # Resume our own run with a refusal; if a person answered first, the server says ABORT.
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(flow_run_id, run_input=DECLINE)
    if result.status == SetStateStatus.ACCEPT:
        expired.set()


def ask_approval(names: list[str], timeout_s: int) -> dict:
    """Pause for a typed answer; no answer in `timeout_s` is a refusal, and the run still completes."""
    flow_run_id = FlowRunContext.get().flow_run.id
    get_run_logger().warning(resume_help(str(flow_run_id), names))
    expired = threading.Event()
    # The timer thread needs this run's Prefect settings (API URL), which live in context vars.
    ctx = contextvars.copy_context()
    timer = threading.Timer(timeout_s, ctx.run, args=(_answer_for_nobody, flow_run_id, expired))
    timer.daemon = True
    timer.start()
    try:
        answer = pause_flow_run(wait_for_input=approval_form(names), timeout=timeout_s + SERVER_GRACE_S,
                                poll_interval=POLL_S)
    except FlowPauseTimeout:  # the timer could not reach the API either; the server fails the run
        return {"flow_run_id": str(flow_run_id), "approve": False, "resources": [], "timed_out": True}
    finally:
        timer.cancel()
        timer.join(10)  # if it fired, let it finish so `expired` tells a timeout from a refusal
    return {"flow_run_id": str(flow_run_id), "approve": answer.approve and not expired.is_set(),
            "resources": answer.resources, "timed_out": expired.is_set()}


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


def result_markdown(target: Target, result: dict, remaining: list[dict]) -> str:
    lines = [f"# cleanup of {target.service}: result", f"API: {result['api']}", ""]
    lines += [f"- deleted {d['kind']} `{d['name']}` ({d['result']})" for d in result["deleted"]]
    lines += [f"- refused `{r['name']}`: {r['why']}" for r in result["refused"]]
    lines += ["", "Still present:"] + [f"- {i['kind']} `{i['name']}`" for i in remaining]
    return "\n".join(lines)


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
                             markdown=plan_markdown(where_to, result["api"], items, execute))
    names = cleanup_plan.deletable(items)
    if not execute or not names:
        result["remaining"] = [i["name"] for i in items]
        return result

    result["approval"] = ask_approval(names, approval_timeout_s)
    chosen, result["refused"] = cleanup_plan.select(items, result["approval"]["approve"],
                                                    result["approval"]["resources"])
    for chosen_item in chosen:
        outcome = delete_item(cr, where_to, chosen_item)
        result["deleted" if "result" in outcome else "refused"].append(outcome)
    remaining = list_items(cr, where_to)
    result["remaining"] = [i["name"] for i in remaining]
    create_markdown_artifact(key=f"cleanup-result-{where_to.service}",
                             markdown=result_markdown(where_to, result, remaining))
    return result
