"""Flow `describe-revision` (runbook phase 0-A): what the live service runs, and what must change."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import Target, connect, resolve_target, where
from gpuops import cloudrun, revision, state
from gpuops.errors import BadInput


@task(name="read-live-revision", cache_policy=NO_CACHE, persist_result=False)
def read_live_revision(cr: cloudrun.CloudRun, target: Target) -> tuple[dict, dict]:
    """The service and its latest ready revision, as the API returns them."""
    service = cloudrun.get_service(cr, target.service_name)
    if service is None:
        raise BadInput(
            f"service {target.service!r} not found in project {target.project!r}, region "
            f"{target.region!r}: check --project, --region and --service."
        )
    ready = service.get("latestReadyRevision")
    if not ready:
        raise BadInput(f"service {target.service!r} has no ready revision to migrate from.")
    live = cloudrun.get_revision(cr, ready)
    if live is None:
        raise BadInput(f"revision {ready} disappeared while it was being read; run describe again.")
    return service, live


@flow(name="describe-revision")
def describe_revision(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
) -> dict:
    """Describe the live revision of a Cloud Run service and keep a snapshot for later phases.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region, e.g. us-central1 (or take it from `target`).
        service: the Cloud Run service to migrate (or take it from `target`).
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    where_to, credentials = resolve_target(project, region, service, target)
    cr = connect(where_to, credentials)
    live_service, live_revision = read_live_revision(cr, where_to)
    summary = revision.summarize(live_service, live_revision)
    summary["captured_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary["api"] = where(cr)
    summary["snapshot_path"] = str(state.save_snapshot(where_to.project, where_to.region, summary))
    create_markdown_artifact(
        key=f"describe-{where_to.service}", markdown=revision.summary_markdown(summary, summary["api"]),
        description=f"Live revision of {where_to.service} ({summary['api']})",
    )
    create_table_artifact(
        key=f"env-{where_to.service}",
        table=[{"name": n, "kind": revision.env_kind(n, summary)} for n in summary["env_names"]],
        description="Environment variable names only; values are never read into reports.",
    )
    return summary
