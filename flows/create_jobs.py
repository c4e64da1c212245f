"""Flow `create-jobs` (runbook phases 1-A and 2-A/2-B): the CPU job, GPU job and GPU service."""
from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget, GpuProfile
from flows.common import Target, connect, resolve_target, where
from flows.describe_revision import describe_revision
from gpuops import cloudrun, gpu_rules, job_plan, params, state
from gpuops.dicts import is_subset
from gpuops.errors import BadInput, CheckFailed

_GET = {"job": cloudrun.get_job, "service": cloudrun.get_service}
_CREATE = {"job": cloudrun.create_job, "service": cloudrun.create_service}
_UPDATE = {"job": cloudrun.update_job, "service": cloudrun.update_service}


def refuse(violations: list[gpu_rules.Violation], what: str) -> None:
    if violations:
        lines = "\n".join(f"  - {v}" for v in violations)
        raise CheckFailed(f"{what} refused before any change:\n{lines}", [v.__dict__ for v in violations])


@task(name="plan-resources", cache_policy=NO_CACHE, persist_result=False)
def plan_resources(cr: cloudrun.CloudRun, target: Target, snapshot: dict, profile: dict,
                   prefix: Optional[str]) -> dict:
    """Read the snapshot's revision (env values stay in memory) and plan the three bodies."""
    name = f"{target.service_name}/revisions/{snapshot['revision']}"
    source = cloudrun.get_revision(cr, name)
    if source is None:
        raise BadInput(f"revision {snapshot['revision']} from the snapshot no longer exists: run describe again.")
    return job_plan.plan(source, target.service, profile, prefix)


def full_name(target: Target, item: dict) -> str:
    if item["kind"] == "job":
        return target.job_name(item["id"])
    return cloudrun.service_name(target.project, target.region, item["id"])


@task(name="read-current", cache_policy=NO_CACHE, persist_result=False)
def read_current(cr: cloudrun.CloudRun, target: Target, plan: dict) -> dict[str, dict | None]:
    """Each planned resource as it is now (None: absent); read before any write is decided."""
    return {role: _GET[item["kind"]](cr, full_name(target, item)) for role, item in plan.items()}


def _message_type(kind: str):
    from google.cloud import run_v2  # only when a body is compared: importing it costs every command

    return {"job": run_v2.Job, "service": run_v2.Service}[kind]


@task(name="apply-resource", cache_policy=NO_CACHE, persist_result=False)
def apply_resource(cr: cloudrun.CloudRun, target: Target, item: dict, current: dict | None) -> dict:
    """Create, update (with the etag read) or leave alone: running it twice changes nothing the second time."""
    kind, name, body = item["kind"], full_name(target, item), item["body"]
    if current is None:
        action, result = "created", _CREATE[kind](cr, name, body)
    elif is_subset(cloudrun.normalized(_message_type(kind), body), current):
        action, result = "unchanged", current
    else:
        action, result = "updated", _UPDATE[kind](cr, name, body, etag=current.get("etag"))
    get_run_logger().info("%s %s %s", action, kind, item["id"])
    return {"kind": kind, "id": item["id"], "name": name, "action": action,
            "generation": result.get("generation"), "uri": result.get("uri")}


@flow(name="create-jobs")
def create_jobs(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    gpu_profile: Optional[GpuProfile] = None,
    dry_run: bool = False,
    require_secret_refs: bool = False,
    prefix: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
    adopt: bool = False,
) -> dict:
    """Create or update the CPU job, GPU job and GPU service from the live revision.

    A resource under one of those names that gpuops did not create is never changed unless `adopt`.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region; it must offer the GPU type.
        service: the Cloud Run service whose image, env and service account are copied.
        gpu_profile: GPU shape; empty means one NVIDIA L4 with 8 CPU and 32 GiB.
        dry_run: print the exact request bodies (env values redacted) and change nothing.
        require_secret_refs: refuse when a plaintext env value looks like a secret.
        prefix: name prefix of the new resources (default: the service name).
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
        adopt: update (and label as gpuops') existing jobs or GPU service that gpuops did not create.
    """
    logger = get_run_logger()
    where_to, credentials = resolve_target(project, region, service, target)
    profile = gpu_profile or GpuProfile()
    # Every rule that needs no API call is judged first: a wrong plan never touches the cloud.
    params.gpu_profile(profile)
    params.prefix(prefix or where_to.service)
    check = gpu_rules.check(profile.spec(), where_to.region)
    refuse(check.violations, "GPU plan")
    for warning in check.warnings:
        logger.warning(warning)

    cr = connect(where_to, credentials)
    snapshot = state.load_snapshot(where_to.project, where_to.region, where_to.service)
    if snapshot is None:
        snapshot = describe_revision(where_to.project, where_to.region, where_to.service, target)
    plan = plan_resources(cr, where_to, snapshot, profile.model_dump(), prefix)

    secret_violations, findings = job_plan.secret_findings(snapshot["plaintext_secret_suspects"], require_secret_refs)
    refuse(secret_violations, "plaintext secrets")
    for role in ("gpu_job", "gpu_service"):
        refuse(gpu_rules.check(job_plan.gpu_spec_of(plan[role]["body"]), where_to.region).violations, role)

    result = {
        "service": where_to.service, "revision": snapshot["revision"], "api": where(cr),
        "dry_run": dry_run, "warnings": check.warnings, "findings": findings,
    }
    if dry_run:
        result["bodies"] = {role: {"id": i["id"], "kind": i["kind"], "body": job_plan.redact(i["body"])}
                            for role, i in plan.items()}
        create_markdown_artifact(key=f"create-jobs-plan-{where_to.service}",
                                 markdown=job_plan.dry_run_markdown(plan, check.warnings, result["api"]))
        return result

    current = read_current(cr, where_to, plan)
    if not adopt:
        refuse(job_plan.foreign(plan, current), "resources gpuops did not create")
    result["resources"] = [apply_resource(cr, where_to, item, current[role]) for role, item in plan.items()]
    create_table_artifact(key=f"create-jobs-{where_to.service}", table=result["resources"],
                          description=f"Resources for {where_to.service} ({result['api']})")
    return result
