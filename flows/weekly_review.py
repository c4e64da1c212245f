"""Flow `weekly-review` (Monday 10:00 Asia/Tokyo in prefect.yaml): the last week of every GPU and CPU
deployment — runs, failures, streaks, retries, dead letters, durations, processingTime, backlog, GPU
utilisation, GPU hours and cost — as a markdown artifact with a chart, and through a notification block."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import _PROJECT, notify
from gpuops import cost, params
from gpuops.errors import BadInput

ARTIFACT_KEY = "weekly-review"
MAX_DAYS = 90  # every run in the window is read: months are the monthly cost report's span


def check_request(days, now: Optional[datetime], project: Optional[str], gpu_pools: Optional[list[str]],
                  pool_prices: Optional[dict] = None) -> int:
    """The whole request, before anything is read."""
    days = params.count("days", days, low=1, high=MAX_DAYS, example="7")
    if now is not None and not isinstance(now, datetime):
        raise BadInput(f"now {now!r} is not a date and time: pass e.g. 2025-03-10T01:00:00+00:00 (or nothing: now)")
    if project is not None and not (isinstance(project, str) and _PROJECT.match(project)):
        raise params.bad("project", project, "is not a Google Cloud project ID",
                         "pass e.g. --project nca-toolkit-438301")
    if gpu_pools is not None and (not gpu_pools or not all(isinstance(p, str) and p for p in gpu_pools)):
        raise params.bad("gpu_pools", gpu_pools, "is not a list of work pool names",
                         "pass e.g. [\"gpuops-cloud-run-gpu\"], or leave it empty for gpuops' GPU pools")
    cost.check_pool_prices(pool_prices)
    return days


def collect(client, start: datetime, end: datetime, *, gpu_pools=None, pool_prices: Optional[dict] = None, store=None,
            project: Optional[str] = None, monitoring_endpoint: Optional[str] = None, credentials=None) -> dict:
    """Read everything and compute the review (the part the benchmark times): deployments, then the runs a
    page at a time into the accumulator, then backlog, dead letters, utilisation and prices."""
    from gpuops import review_sources
    from gpuops.review_report import GPU_POOLS, Review, deployment_rate

    review = Review(start, end, review_sources.read_deployments(client), gpu_pools or GPU_POOLS)
    review.add_all(review_sources.runs(client, start, end))
    pools = sorted({d.work_pool for d in review.deployments.values() if d.work_pool} | set(review.gpu_pools))
    dead = review_sources.dead_letters(store, client, start, end) if store is not None else None
    utilisation = (review_sources.gpu_utilisation(project, start, end, monitoring_endpoint, credentials)
                   if project else None)
    rates = {dep_id: deployment_rate(review.deployments[dep_id], pool_prices=pool_prices) for dep_id in review.tallies
             if review.is_gpu(review.deployments[dep_id])}
    return review.report(backlog=review_sources.backlog(client, pools, end), dead_letters=dead,
                         gpu_utilisation=utilisation, rates=rates)


def artifact_markdown(report: dict) -> str:
    """The artifact: the report's tables with its chart of runs and failures per day inline."""
    from gpuops.review_report import render_markdown
    from gpuops.svg_chart import daily_runs_chart

    window = report["window"]
    chart = daily_runs_chart([(d["day_start"][5:10], d["runs"], d["failures"]) for d in report["daily"]],
                             f"Runs and failures per day, {window['start'][:10]} to {window['end'][:10]} (UTC)")
    return render_markdown(report, chart)


def _store(status_bucket_block: Optional[str]):
    """The status bucket when one is configured (a block, or GPUOPS_STATUS_BUCKET); None otherwise."""
    import os

    from blocks.pipeline_blocks import status_store

    if not status_bucket_block and not os.environ.get("GPUOPS_STATUS_BUCKET"):
        return None
    return status_store(status_bucket_block)


@flow(name="weekly-review", persist_result=False)
def weekly_review(days: int = 7, now: Optional[datetime] = None, notification_block: Optional[str] = None,
                  project: Optional[str] = None, status_bucket_block: Optional[str] = None,
                  gpu_pools: Optional[list[str]] = None, pool_prices: Optional[dict[str, str]] = None) -> dict:
    """Review the last `days` of every deployment's flow runs.

    Args:
        days: how many days back from `now` (1-90).
        now: the end of the window (default: now); backlog is counted at this time.
        notification_block: a Prefect notification block (`slack-webhook/ops`, `custom-webhook/n8n`) sent the
            summary; empty: the artifact and the run log only.
        project: a Google Cloud project whose Cloud Run GPU utilisation Cloud Monitoring reports; empty:
            "not configured".
        status_bucket_block: a gpuops-status-bucket block for the dead letters; empty: GPUOPS_STATUS_BUCKET,
            and "not configured" when neither is set.
        gpu_pools: the work pools whose deployments are GPU ones (default gpuops-cloud-run-gpu,
            gpuops-kubernetes-gpu, gpuops-docker-gpu).
        pool_prices: work pool -> price key (`cloud_run/nvidia-l4`, `ec2/g4dn.xlarge/spot`) over
            gpuops/data/prices.json's `work_pools`, for pools that run elsewhere.
    """
    from prefect.client.orchestration import get_client

    from gpuops.review_report import summary_text

    days = check_request(days, now, project, gpu_pools, pool_prices)
    now = now or datetime.now(timezone.utc)
    end = (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)  # naive: UTC
    start = end - timedelta(days=days)
    with get_client(sync_client=True) as client:
        report = collect(client, start, end, gpu_pools=gpu_pools, pool_prices=pool_prices,
                         store=_store(status_bucket_block), project=project)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=artifact_markdown(report),
                             description=f"weekly review: {report['runs']} runs, {report['failures']} failed")
    summary = summary_text(report)
    if notification_block:
        notify(notification_block, f"gpuops weekly review: {report['runs']} runs, {report['failures']} failed",
               summary)
    else:
        get_run_logger().info("%s", summary)
    return {**report, "summary": summary, "artifact": ARTIFACT_KEY}
